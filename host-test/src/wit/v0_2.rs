//! `secops:connector@0.2.0`, the latest WIT version (`wit/`): the types the rest of the
//! host works with. The import implementations in [`crate::imports`] are written against
//! these bindings; older versions convert onto them.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "connector-world",
});

pub use exports::secops::connector::connector::{
    Batch, ConfigError, Degradation, DegradedType, Metadata, PollError, Retry, ValidationCode,
    ValidationError,
};
pub use secops::connector::types::Event;

/// The WIT package these bindings implement.
pub const PACKAGE: &str = "secops:connector@0.2.0";

impl ValidationCode {
    /// The code as the CLI prints it (the WIT enum case name).
    pub fn as_str(&self) -> &'static str {
        match self {
            ValidationCode::InvalidConfig => "invalid-config",
            ValidationCode::TenantNotFound => "tenant-not-found",
            ValidationCode::ClientNotFound => "client-not-found",
            ValidationCode::InvalidSecret => "invalid-secret",
            ValidationCode::SecretIdNotValue => "secret-id-not-value",
            ValidationCode::SecretExpired => "secret-expired",
            ValidationCode::NoAdminConsent => "no-admin-consent",
            ValidationCode::MissingPermission => "missing-permission",
            ValidationCode::ApiUnavailable => "api-unavailable",
            ValidationCode::Network => "network",
            ValidationCode::AppDisabled => "app-disabled",
            ValidationCode::NoServicePrincipal => "no-service-principal",
            ValidationCode::ConditionalAccess => "conditional-access",
            ValidationCode::NotLicensed => "not-licensed",
        }
    }
}

impl Degradation {
    /// The code as `status` and the metrics label show it (the WIT enum case name).
    pub fn as_str(&self) -> &'static str {
        match self {
            Degradation::Throttled => "throttled",
            Degradation::Transient => "transient",
            Degradation::Failing => "failing",
            Degradation::Fallback => "fallback",
        }
    }
}
