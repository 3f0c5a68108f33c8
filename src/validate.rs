//! `validate`: tells the user exactly what is wrong with the credentials, the consent,
//! the permissions or the tenant's access to each selected data type.

use crate::auth::{AuthError, describe_http_error};
use crate::client::graph_request;
use crate::connector::Query;
use crate::graph::{error_text, window_url};
use crate::health::TypeHealth;
use crate::platform::Platform;
use crate::runtime::Instance;
use crate::types::{HttpError, ValidationCode, ValidationError};

/// How far back the validation probe looks: its query has a poll's shape, and a short
/// window keeps its answer small.
const PROBE_WINDOW_SECS: i64 = 300;

fn fail(
    code: ValidationCode,
    message: impl Into<String>,
    remedy: impl Into<String>,
) -> ValidationError {
    ValidationError {
        code,
        message: message.into(),
        remedy: remedy.into(),
    }
}

impl Instance {
    pub fn validate(&mut self, p: &dyn Platform) -> Result<(), ValidationError> {
        let login_base = self.config.login_base.clone();
        let roles = self
            .token(p)
            .map_err(|e| match e {
                AuthError::Network(m) => fail(
                    ValidationCode::Network,
                    m,
                    format!(
                        "check that {} is reachable from the host (proxy, firewall, DNS)",
                        login_base
                    ),
                ),
                AuthError::Refused {
                    code,
                    message,
                    remedy,
                } => fail(code, message, remedy),
            })?
            .roles
            .clone();

        let wanted: Vec<(&str, &str)> = self
            .queries
            .iter()
            .map(|q| (q.data_type.permissions[0], q.data_type.name))
            .collect();
        let grant = |perms: &[(&str, &str)]| {
            let mut names: Vec<&str> = Vec::new();
            for (p, _) in perms {
                if !names.contains(p) {
                    names.push(p);
                }
            }
            format!(
                "in the Entra admin center, open the app registration > API permissions, add the Microsoft Graph \
                 application permission(s) {} and click \"Grant admin consent\"",
                names.join(", ")
            )
        };
        if roles.is_empty() {
            return Err(fail(
                ValidationCode::NoAdminConsent,
                "the app's token carries no application permissions: none has admin consent",
                grant(&wanted),
            ));
        }
        let missing: Vec<(&str, &str)> = self
            .queries
            .iter()
            .filter(|q| {
                !q.data_type
                    .permissions
                    .iter()
                    .any(|p| roles.iter().any(|r| r == p))
            })
            .map(|q| (q.data_type.permissions[0], q.data_type.name))
            .collect();
        if !missing.is_empty() {
            // One entry per permission, naming every selected type that needs it.
            let mut by_permission: Vec<(&str, Vec<&str>)> = Vec::new();
            for (permission, data_type) in &missing {
                match by_permission.iter_mut().find(|(p, _)| p == permission) {
                    Some((_, types)) => types.push(data_type),
                    None => by_permission.push((permission, vec![data_type])),
                }
            }
            let list: Vec<String> = by_permission
                .iter()
                .map(|(p, types)| format!("{p} (needed for {})", types.join(", ")))
                .collect();
            let has = if roles.is_empty() {
                "none".to_string()
            } else {
                roles.join(", ")
            };
            return Err(fail(
                ValidationCode::MissingPermission,
                format!("the app lacks {}; it has {has}", list.join(" and ")),
                grant(&missing),
            ));
        }

        for q in self.queries.clone() {
            let name = q.data_type.name;
            let url = self.probe_url(p, &q);
            let bearer = self
                .token(p)
                .map_err(|e| fail(ValidationCode::Network, e.describe(), "try again"))?
                .bearer();
            if let Err(wait) = self.wait_for_call(p, q.data_type.family, 5_000) {
                return Err(fail(
                    ValidationCode::ApiUnavailable,
                    format!(
                        "the API's call budget for this tenant is spent for the next {} s",
                        crate::budget::whole_secs(wait)
                    ),
                    "validate again after that; polls share the same budget",
                ));
            }
            let request = graph_request(&url, bearer, 30_000);
            let response = p.send(&request).map_err(|e| match e {
                HttpError::Timeout | HttpError::Connection(_) => fail(
                    ValidationCode::Network,
                    describe_http_error(&e, "Graph"),
                    format!(
                        "check that {} is reachable from the host",
                        self.config.graph_base
                    ),
                ),
                _ => fail(
                    ValidationCode::ApiUnavailable,
                    describe_http_error(&e, "Graph"),
                    "check graph_url and the host's allow-list",
                ),
            })?;
            let said =
                error_text(&response.body).unwrap_or_else(|| format!("HTTP {}", response.status));
            match response.status {
                200..=299 => {}
                403 => {
                    return Err(fail(
                        ValidationCode::ApiUnavailable,
                        format!(
                            "Graph refused {name} although the app has the permission ({said})"
                        ),
                        "the tenant may lack the licence this data needs (e.g. Microsoft Defender XDR, \
                         Entra ID P2), or the consent is still propagating: wait a few minutes and validate again",
                    ));
                }
                429 | 500..=599 => {
                    return Err(fail(
                        ValidationCode::ApiUnavailable,
                        format!("Graph could not serve {name} right now ({said})"),
                        "Graph is throttling or unavailable; validate again in a few minutes",
                    ));
                }
                _ => {
                    return Err(fail(
                        ValidationCode::ApiUnavailable,
                        format!("Graph did not accept the request for {name} ({said})"),
                        "check graph_url and the cloud: this API may not exist in that cloud",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The probe of a data type: the query a poll sends (page size, filter, `$count`,
    /// `$expand`, headers) over the last few minutes, so `validate` says `ok` only for a
    /// query shape Graph accepts.
    fn probe_url(&self, p: &dyn Platform, q: &Query) -> String {
        let now = p.now();
        let health = TypeHealth::load(p, q.data_type.name);
        window_url(
            &self.config.graph_base,
            q,
            now.minus_secs(PROBE_WINDOW_SECS),
            now,
            health.page_size(q.data_type.page_size),
            true,
        )
    }
}
