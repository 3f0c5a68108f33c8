//! Rust bindings of the `secops:connector` WIT package, host side.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "connector-world",
});

pub use exports::secops::connector::connector::{
    Batch, ConfigError, Metadata, PollError, ValidationCode, ValidationError,
};
pub use secops::connector::types::Event;

/// The WIT package this host implements; components built against another major/minor
/// are refused.
pub const WIT_PACKAGE: &str = "secops:connector@0.2.0";

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
