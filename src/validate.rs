//! `validate`: tells the user exactly what is wrong with the credentials, the consent,
//! the permissions or the tenant's access to each selected data type.

use crate::auth::{AuthError, describe_http_error};
use crate::client::graph_request;
use crate::connector::Query;
use crate::graph::{error_text, window_url};
use crate::health::TypeHealth;
use crate::platform::Platform;
use crate::runtime::Instance;
use crate::types::{HttpError, Level, ValidationCode, ValidationError};

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

fn grant_remedy(permissions: &[&str]) -> String {
    format!(
        "in the Entra admin center, open the app registration > API permissions, add the Microsoft Graph \
         application permission(s) {} and click \"Grant admin consent\"",
        permissions.join(", ")
    )
}

/// Graph's error code and message, from [`error_text`]'s `code: message` (codes never
/// hold `": "`). Reusing its parse keeps the component small.
fn graph_error(body: &[u8]) -> Option<(String, String)> {
    let text = error_text(body)?;
    let at = find(&text, ": ")?;
    Some((text[..at].to_string(), text[at + 2..].to_string()))
}

/// Where `needle` starts in `haystack`. A plain scan: `str::find` with a string pattern
/// brings its two-way searcher into the component (KiBs) for a few short texts.
fn find(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// The roles Graph lists in "Missing application roles. API required roles: A,B,
/// application roles: ." (before the token's own, which end the sentence), as it wrote
/// them; `None` when the message has no such list.
fn required_roles(message: &str) -> Option<&str> {
    const REQUIRED: &str = "API required roles:";
    let start = find(message, REQUIRED)? + REQUIRED.len();
    let rest = &message[start..];
    let listed = &rest[..find(rest, "application roles:").unwrap_or(rest.len())];
    let listed = listed.trim_matches(|c: char| c == ',' || c == '.' || c.is_whitespace());
    (!listed.is_empty()).then_some(listed)
}

/// What a 403 on the probe of `q` means. The token carries a role that grants `q` (checked
/// before any probe), so a 403 is Graph's word on a role, a licence or a provisioning
/// that the token cannot show. (Kept lean: each line here is code in every component.)
fn forbidden(q: &Query, queries: &[Query], body: &[u8], said: &str) -> ValidationError {
    let name = q.data_type.name;
    let (code, message) = graph_error(body).unwrap_or_default();
    if code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant" {
        let mut needs = String::new();
        for t in queries.iter().map(|q| q.data_type) {
            if let Some(licence) = t.licence {
                needs += &format!("{} needs {licence}; ", t.name);
            }
        }
        if needs.is_empty() {
            needs = format!("{name} needs a Microsoft Entra ID premium licence; ");
        }
        return fail(
            ValidationCode::NotLicensed,
            format!("Graph refused {name}: the tenant lacks the licence it needs ({said})"),
            format!(
                "{needs}license the tenant accordingly, or remove the types it cannot have from the config"
            ),
        );
    }
    let missing_roles =
        code == "Forbidden" && find(&message, "Missing application roles").is_some();
    if missing_roles || code == "Authentication_MSGraphPermissionMissing" {
        // Graph's own list when it gives one; else the type's least privileged role. The
        // remedy asks for the least privileged role, which grants the type.
        let least = q.data_type.permissions[0];
        let roles = required_roles(&message).unwrap_or(least);
        return fail(
            ValidationCode::MissingPermission,
            format!(
                "Graph refused {name}: the app lacks an application permission it requires: {roles} ({said})"
            ),
            format!(
                "{}; if it is already granted, the consent may still be propagating: wait a few minutes \
                 and validate again",
                grant_remedy(&[least])
            ),
        );
    }
    if find(q.data_type.path, "/security/").is_some() {
        return fail(
            ValidationCode::ApiUnavailable,
            format!(
                "Graph refused {name} although the app's token carries the permission ({said})"
            ),
            "Defender is not provisioned or not licensed for this tenant: check that it has a \
             Microsoft Defender XDR licence and that the Microsoft Defender portal has been opened \
             once (which provisions it); if consent was just granted, wait a few minutes and validate again",
        );
    }
    fail(
        ValidationCode::ApiUnavailable,
        format!("Graph refused {name} although the app has the permission ({said})"),
        "the tenant may lack a licence this data needs, or the consent is still propagating: wait a \
         few minutes and validate again",
    )
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
            grant_remedy(&names)
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
            let mut health = TypeHealth::load(p, name);
            let mut expand = true;
            let mut throttled_once = false;
            let response = loop {
                let url = self.probe_url(p, &q, health.page_size(q.data_type.page_size), expand);
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
                let before = health.clone();
                match response.status {
                    // Learned as a poll learns it, so the first poll asks for what Graph allows.
                    400 if let Some(limit) =
                        health.learn_top(&response.body, q.data_type.page_size) =>
                    {
                        p.log(
                            Level::Warn,
                            &format!(
                                "{name}: Graph allows at most {limit} records a page; polls ask for {limit}"
                            ),
                        );
                        health.save_if_changed(p, name, &before);
                    }
                    // A poll falls back to the query without `$expand` when Graph keeps failing
                    // it (a large tenant's `$expand=alerts`): the setup is sound if that works.
                    500..=599 if expand && q.expand.is_some() => {
                        p.log(
                            Level::Warn,
                            &format!(
                                "{name}: Graph failed the query with $expand={} (HTTP {}); if that \
                             persists, polls read without it and mark each event `incomplete`",
                                q.expand.unwrap_or_default(),
                                response.status
                            ),
                        );
                        expand = false;
                    }
                    // One 429 is the API's budget, not a broken setup (two probes of the
                    // Identity Protection lists a second apart can meet it when the
                    // network delays one): wait as told, or a second and a half, once.
                    429 if !throttled_once => {
                        throttled_once = true;
                        let secs = crate::retry::retry_after(&response).unwrap_or(1);
                        p.sleep_millis(u64::from(secs.min(5)) * 1000 + 500);
                    }
                    _ => break response,
                }
            };
            let said =
                error_text(&response.body).unwrap_or_else(|| format!("HTTP {}", response.status));
            match response.status {
                200..=299 => {}
                403 => return Err(forbidden(&q, &self.queries, &response.body, &said)),
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
    fn probe_url(&self, p: &dyn Platform, q: &Query, top: u32, expand: bool) -> String {
        let now = p.now();
        window_url(
            &self.config.graph_base,
            q,
            now.minus_secs(PROBE_WINDOW_SECS),
            now,
            top,
            expand,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::connector::DataType;
    use crate::testing::{CLIENT, FakePlatform, TENANT, token_error, token_ok};

    const ALERTS: DataType = DataType::new(
        "alerts",
        "test.alert",
        "/v1.0/security/alerts_v2",
        &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"],
        "createdDateTime",
        2,
    );
    const RISKY_USERS: DataType = DataType::new(
        "risky_users",
        "test.risky_user",
        "/v1.0/identityProtection/riskyUsers",
        &["IdentityRiskyUser.Read.All"],
        "riskLastUpdatedDateTime",
        2,
    )
    .licensed("Microsoft Entra ID P2");
    const SIGN_INS: DataType = DataType::new(
        "sign_ins",
        "test.sign_in",
        "/v1.0/auditLogs/signIns",
        &["AuditLog.Read.All"],
        "createdDateTime",
        2,
    )
    .licensed("Microsoft Entra ID P1 or P2");
    const AUDITS: DataType = DataType::new(
        "audits",
        "test.audit",
        "/v1.0/auditLogs/directoryAudits",
        &["AuditLog.Read.All"],
        "activityDateTime",
        2,
    );

    crate::testing::test_connector!(
        Test,
        "test",
        &[ALERTS, RISKY_USERS, SIGN_INS, AUDITS],
        default & []
    );

    const ALL_ROLES: &[&str] = &[
        "SecurityAlert.Read.All",
        "IdentityRiskyUser.Read.All",
        "AuditLog.Read.All",
    ];

    /// `validate` of an instance reading `types`, with a token carrying every role and
    /// the first probe answered `status` with `body`.
    fn probe(types: &[&str], status: u16, body: Value) -> ValidationError {
        let p = FakePlatform::new();
        let doc = json!({"tenant_id": TENANT, "client_id": CLIENT, "types": types}).to_string();
        let mut i = Instance::configure::<Test>(&p, &doc).unwrap();
        p.respond_json(200, token_ok(ALL_ROLES));
        p.respond_json(status, body);
        let e = i.validate(&p).unwrap_err();
        assert_eq!(p.unused_responses(), 0);
        e
    }

    fn graph(code: &str, message: &str) -> Value {
        json!({"error": {"code": code, "message": message, "innerError": {"request-id": "0000"}}})
    }

    #[test]
    fn no_premium_licence_is_not_licensed_naming_what_each_selected_type_needs() {
        let e = probe(
            &["risky_users", "sign_ins", "audits"],
            403,
            graph(
                "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                "Neither tenant is B2C or tenant doesn't have premium license",
            ),
        );
        assert_eq!(e.code, ValidationCode::NotLicensed);
        assert!(
            e.message.contains("risky_users") && e.message.contains("premium license"),
            "{}",
            e.message
        );
        assert!(
            e.remedy.contains("risky_users needs Microsoft Entra ID P2")
                && e.remedy
                    .contains("sign_ins needs Microsoft Entra ID P1 or P2"),
            "{}",
            e.remedy
        );
        assert!(!e.remedy.contains("audits"), "audits need no licence");
    }

    #[test]
    fn missing_application_roles_is_missing_permission_naming_the_roles() {
        let e = probe(
            &["alerts"],
            403,
            graph(
                "Forbidden",
                "Missing application roles. API required roles: SecurityAlert.Read.All,SecurityAlert.ReadWrite.All, application roles: .",
            ),
        );
        assert_eq!(e.code, ValidationCode::MissingPermission);
        assert!(
            e.message
                .contains("requires: SecurityAlert.Read.All,SecurityAlert.ReadWrite.All ("),
            "{}",
            e.message
        );
        assert!(
            e.remedy.contains("SecurityAlert.Read.All")
                && !e.remedy.contains("ReadWrite")
                && e.remedy.contains("Grant admin consent"),
            "the least privileged role is the one asked for: {}",
            e.remedy
        );
    }

    #[test]
    fn graph_permission_missing_is_missing_permission_naming_the_role() {
        let e = probe(
            &["audits"],
            403,
            graph(
                "Authentication_MSGraphPermissionMissing",
                "Calling principal does not have required MSGraph permissions AuditLog.Read.All",
            ),
        );
        assert_eq!(e.code, ValidationCode::MissingPermission);
        assert!(e.message.contains("AuditLog.Read.All"), "{}", e.message);
        assert!(e.remedy.contains("AuditLog.Read.All"), "{}", e.remedy);
    }

    #[test]
    fn a_403_on_a_defender_list_with_the_role_is_defender_not_provisioned() {
        for body in [graph("Forbidden", "Access denied"), json!({})] {
            let e = probe(&["alerts"], 403, body);
            assert_eq!(e.code, ValidationCode::ApiUnavailable);
            assert!(
                e.remedy
                    .starts_with("Defender is not provisioned or not licensed for this tenant"),
                "{}",
                e.remedy
            );
        }
        // Elsewhere, a 403 that names no cause stays a general refusal.
        let e = probe(&["audits"], 403, graph("Forbidden", "Access denied"));
        assert_eq!(e.code, ValidationCode::ApiUnavailable);
        assert!(!e.remedy.contains("Defender"), "{}", e.remedy);
    }

    #[test]
    fn each_token_refusal_reaches_validate_with_its_code() {
        for (aadsts, code) in [
            (7000112, ValidationCode::AppDisabled),
            (7000229, ValidationCode::NoServicePrincipal),
            (53003, ValidationCode::ConditionalAccess),
            (700016, ValidationCode::ClientNotFound),
        ] {
            let p = FakePlatform::new();
            let doc = json!({"tenant_id": TENANT, "client_id": CLIENT, "types": ["alerts"]});
            let mut i = Instance::configure::<Test>(&p, &doc.to_string()).unwrap();
            p.respond_json(401, token_error(aadsts));
            let e = i.validate(&p).unwrap_err();
            assert_eq!(e.code, code, "AADSTS{aadsts}: {}", e.message);
            assert!(!e.remedy.is_empty());
        }
    }

    #[test]
    fn required_roles_are_read_from_graphs_sentence() {
        assert_eq!(
            required_roles(
                "Missing application roles. API required roles: A.Read.All,B.Read.All, application roles: ."
            ),
            Some("A.Read.All,B.Read.All")
        );
        assert_eq!(
            required_roles("Missing application roles. API required roles: A.Read.All."),
            Some("A.Read.All")
        );
        assert_eq!(
            required_roles("Missing application roles. API required roles: , application roles: ."),
            None
        );
        assert_eq!(required_roles("Access denied"), None);
    }
}
