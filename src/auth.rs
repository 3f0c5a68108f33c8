//! OAuth2 client credentials against the Microsoft identity platform, and what its
//! errors mean for the user.

use base64::Engine as _;
use serde::Deserialize;

use crate::config::{Config, is_guid};
use crate::graph::enc;
use crate::platform::Platform;
use crate::time::Timestamp;
use crate::types::{HttpError, Request, ValidationCode};

/// The secrets-import name of the client secret.
pub const CLIENT_SECRET: &str = "client-secret";
/// A token is renewed this long before it expires, so no request races its expiry.
const EXPIRY_MARGIN_SECS: i64 = 300;
const TIMEOUT_MS: u32 = 30_000;

/// An access token. Kept in the component's memory and the host's memory-only token cache:
/// never in KV, logs or events.
#[derive(Clone)]
pub struct Token {
    value: String,
    expires_at: Timestamp,
    /// The application permissions granted (the JWT's `roles`); empty when none are consented.
    pub roles: Vec<String>,
}

impl Token {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value)
    }

    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.expires_at.minus_secs(EXPIRY_MARGIN_SECS)
    }

    /// A token the host's token cache kept: its roles are read from it again.
    pub fn from_cache(value: String, expires_at: Timestamp) -> Token {
        let roles = roles_of(&value);
        Token {
            value,
            expires_at,
            roles,
        }
    }

    /// Hands the token to the host's token cache, for the instances of later polls.
    pub fn store(&self, p: &dyn Platform) {
        p.token_store(&self.value, self.expires_at);
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .field("roles", &self.roles)
            .finish()
    }
}

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// The identity platform could not be reached or did not answer in time.
    Network(String),
    /// The identity platform refused the credentials: a cause the user must fix.
    Refused {
        code: ValidationCode,
        message: String,
        remedy: String,
    },
}

impl AuthError {
    pub fn describe(&self) -> String {
        match self {
            AuthError::Network(m) => m.clone(),
            AuthError::Refused {
                message, remedy, ..
            } => format!("{message} ({remedy})"),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// Requests a token for `{graph}/.default` with the client secret from the secrets import.
pub fn fetch_token(p: &dyn Platform, config: &Config) -> Result<Token, AuthError> {
    let Some(secret) = p.secret(CLIENT_SECRET).filter(|s| !s.is_empty()) else {
        return Err(AuthError::Refused {
            code: ValidationCode::InvalidConfig,
            message: "no client secret is configured for this instance".into(),
            remedy: "give the secret's Value under the name `client-secret` (--secrets file or \
                     CONNECTOR_SECRET_CLIENT_SECRET)"
                .into(),
        });
    };
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
        enc(&config.client_id),
        enc(&secret),
        enc(&format!("{}/.default", config.graph_base)),
    );
    let request = Request {
        method: "POST".into(),
        url: format!(
            "{}/{}/oauth2/v2.0/token",
            config.login_base,
            enc(&config.tenant_id)
        ),
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: body.into_bytes(),
        timeout_ms: TIMEOUT_MS,
    };
    let now = p.now();
    let response = p
        .send(&request)
        .map_err(|e| AuthError::Network(describe_http_error(&e, "the login endpoint")))?;
    if response.status == 200 {
        let t: TokenResponse = serde_json::from_slice(&response.body).map_err(|e| {
            AuthError::Network(format!(
                "the login endpoint answered 200 without a usable token: {e}"
            ))
        })?;
        let roles = roles_of(&t.access_token);
        return Ok(Token {
            value: t.access_token,
            expires_at: now.plus_secs(t.expires_in),
            roles,
        });
    }
    let body: TokenErrorBody = serde_json::from_slice(&response.body).unwrap_or_default();
    if response.status >= 500
        || response.status == 429
        || (body.error.is_empty() && body.error_codes.is_empty())
    {
        return Err(AuthError::Network(format!(
            "the login endpoint answered HTTP {} without an OAuth error",
            response.status
        )));
    }
    Err(refusal(&body, is_guid(&secret), config))
}

/// The URL at which an admin of the configured tenant consents to the app, in the
/// configured cloud: what creates the app's service principal there.
pub fn admin_consent_url(config: &Config) -> String {
    format!(
        "{}/{}/adminconsent?client_id={}",
        config.login_base,
        enc(&config.tenant_id),
        enc(&config.client_id)
    )
}

/// Maps an AADSTS error to the cause a user can act on. The codes are checked before the
/// OAuth `error`: several causes share `invalid_client` (a wrong secret, no service
/// principal), and only the code tells them apart.
fn refusal(body: &TokenErrorBody, secret_is_guid: bool, config: &Config) -> AuthError {
    // The description's first line names the AADSTS code and cause; the rest is trace ids.
    let said = body
        .error_description
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    let has = |code: u64| body.error_codes.contains(&code);
    let (code, message, remedy): (ValidationCode, &str, String) = if has(90002)
        || has(900023)
        || has(90072)
    {
        (
            ValidationCode::TenantNotFound,
            "the tenant was not found",
            "check tenant_id: use the Directory (tenant) ID from the app registration's Overview page, \
             and the cloud the tenant lives in".into(),
        )
    } else if has(700016) {
        (
            ValidationCode::ClientNotFound,
            "no application with this client ID exists in the tenant",
            // An app registered in another tenant and never consented here answers the
            // same (GRAPH-REALITY.md), so the remedy covers both.
            format!(
                "check client_id: use the Application (client) ID of an app registered in this tenant; \
                 an app registered in another tenant must first be consented here by an admin: {}",
                admin_consent_url(config)
            ),
        )
    } else if has(7000112) {
        (
            ValidationCode::AppDisabled,
            "the app is disabled in this tenant",
            "in the Entra admin center, open Enterprise applications > this app > Properties and set \
             \"Enabled for users to sign-in?\" to Yes (ask the tenant's admins first why it was disabled)"
                .to_string(),
        )
    } else if has(7000229) {
        (
            ValidationCode::NoServicePrincipal,
            "the app has no service principal in this tenant: no admin of the tenant has consented to it",
            format!(
                "an admin of this tenant (Global or Privileged Role Administrator) must consent to the \
                 app: open {} and accept",
                admin_consent_url(config)
            ),
        )
    } else if has(53003) {
        (
            ValidationCode::ConditionalAccess,
            "a Conditional Access policy blocks the app's sign-in",
            "ask the tenant's Conditional Access administrator to exclude this app (a workload \
             identity) from the policy or allow the host's network location; the service principal \
             sign-in logs name the policy"
                .to_string(),
        )
    } else if has(7000222) {
        (
            ValidationCode::SecretExpired,
            "the client secret has expired",
            "create a new client secret under Certificates & secrets and configure its Value"
                .into(),
        )
    } else if (has(7000215) || body.error == "invalid_client") && secret_is_guid {
        (
            ValidationCode::SecretIdNotValue,
            "the configured secret is the secret's ID, not its value",
            "copy the secret's Value column (shown only once, when it is created), not its Secret ID; \
             create a new secret if the value is lost".into(),
        )
    } else if has(7000215) || body.error == "invalid_client" {
        (
            ValidationCode::InvalidSecret,
            "the client secret is wrong",
            "copy the Value of a current client secret of this app registration".into(),
        )
    } else {
        (
            ValidationCode::ApiUnavailable,
            "the login endpoint refused to issue a token",
            "read the AADSTS message and check the app registration".into(),
        )
    };
    let message = if said.is_empty() {
        message.to_string()
    } else {
        format!("{message}: {said}")
    };
    AuthError::Refused {
        code,
        message,
        remedy,
    }
}

/// The `roles` claim of a JWT access token; empty when the token has none (no admin
/// consent) or cannot be read. The signature is not checked: Graph checks it, and this
/// only explains to the user what Graph will do.
pub fn roles_of(jwt: &str) -> Vec<String> {
    #[derive(Deserialize)]
    struct Claims {
        #[serde(default)]
        roles: Vec<String>,
    }
    let Some(payload) = jwt.split('.').nth(1) else {
        return Vec::new();
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Claims>(&bytes).ok())
        .map(|c| c.roles)
        .unwrap_or_default()
}

pub fn describe_http_error(e: &HttpError, what: &str) -> String {
    match e {
        HttpError::Timeout => format!("{what} did not answer in time"),
        HttpError::Connection(m) => format!("could not connect to {what}: {m}"),
        HttpError::Denied(m) => format!("the host refused the request to {what}: {m}"),
        HttpError::TooLarge(n) => {
            format!("{what} sent a response larger than the host's cap of {n} bytes")
        }
        HttpError::InvalidRequest(m) => format!("invalid request to {what}: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakePlatform, config, jwt, token_error, token_ok};

    #[test]
    fn posts_client_credentials_and_reads_roles() {
        let p = FakePlatform::new();
        p.respond_json(200, token_ok(&["SecurityAlert.Read.All"]));
        let t = fetch_token(&p, &config()).unwrap();
        assert_eq!(t.roles, ["SecurityAlert.Read.All"]);
        assert!(t.is_fresh(p.now()));
        assert!(!t.is_fresh(p.now().plus_secs(3599 - 299)));
        let sent = p.requests();
        assert_eq!(sent[0].method, "POST");
        assert_eq!(
            sent[0].url,
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
        );
        let body = String::from_utf8(sent[0].body.clone()).unwrap();
        assert!(body.contains("grant_type=client_credentials"));
        assert!(body.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"));
        assert!(
            !format!("{t:?}").contains("eyJ"),
            "Debug must not print the token"
        );
    }

    #[test]
    fn each_aadsts_code_maps_to_its_cause() {
        let cases = [
            (90002, "s3cr3t~value", ValidationCode::TenantNotFound),
            (900023, "s3cr3t~value", ValidationCode::TenantNotFound),
            (700016, "s3cr3t~value", ValidationCode::ClientNotFound),
            (7000215, "s3cr3t~value", ValidationCode::InvalidSecret),
            (
                7000215,
                "0b8c4b1e-1d2f-4c7a-9a55-3f2e1d0c9b8a",
                ValidationCode::SecretIdNotValue,
            ),
            (7000222, "s3cr3t~value", ValidationCode::SecretExpired),
            (7000112, "s3cr3t~value", ValidationCode::AppDisabled),
            // `invalid_client` like a wrong secret, even with a GUID-shaped secret: the
            // code decides.
            (7000229, "s3cr3t~value", ValidationCode::NoServicePrincipal),
            (
                7000229,
                "0b8c4b1e-1d2f-4c7a-9a55-3f2e1d0c9b8a",
                ValidationCode::NoServicePrincipal,
            ),
            (53003, "s3cr3t~value", ValidationCode::ConditionalAccess),
            (50000, "s3cr3t~value", ValidationCode::ApiUnavailable),
        ];
        for (aadsts, secret, want) in cases {
            let p = FakePlatform::new().with_secret(secret);
            p.respond_json(400, token_error(aadsts));
            match fetch_token(&p, &config()) {
                Err(AuthError::Refused {
                    code,
                    message,
                    remedy,
                }) => {
                    assert_eq!(code, want, "AADSTS{aadsts}");
                    assert!(message.contains(&format!("AADSTS{aadsts}")), "{message}");
                    assert!(!message.contains(secret) && !remedy.contains(secret));
                }
                other => panic!("AADSTS{aadsts}: {other:?}"),
            }
        }
    }

    #[test]
    fn consent_is_asked_for_at_the_configured_clouds_login_host() {
        let usgov = crate::config::parse(&format!(
            r#"{{"tenant_id":"{}","client_id":"{}","cloud":"usgov"}}"#,
            crate::testing::TENANT,
            crate::testing::CLIENT
        ))
        .unwrap()
        .0;
        for (config, host) in [
            (config(), "https://login.microsoftonline.com"),
            (usgov, "https://login.microsoftonline.us"),
        ] {
            let want = format!(
                "{host}/{}/adminconsent?client_id={}",
                crate::testing::TENANT,
                crate::testing::CLIENT
            );
            for aadsts in [7000229, 700016] {
                let p = FakePlatform::new();
                p.respond_json(400, token_error(aadsts));
                match fetch_token(&p, &config) {
                    Err(AuthError::Refused { remedy, .. }) => {
                        assert!(remedy.contains(&want), "AADSTS{aadsts}: {remedy}")
                    }
                    other => panic!("AADSTS{aadsts}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn missing_secret_and_outages_are_told_apart() {
        let p = FakePlatform::new().without_secret();
        assert!(matches!(
            fetch_token(&p, &config()),
            Err(AuthError::Refused {
                code: ValidationCode::InvalidConfig,
                ..
            })
        ));
        let p = FakePlatform::new();
        p.respond_json(503, serde_json::json!({}));
        assert!(matches!(
            fetch_token(&p, &config()),
            Err(AuthError::Network(_))
        ));
        let p = FakePlatform::new();
        p.respond_err(HttpError::Timeout);
        assert!(matches!(
            fetch_token(&p, &config()),
            Err(AuthError::Network(_))
        ));
    }

    #[test]
    fn roles_claim_is_read_leniently() {
        assert_eq!(roles_of(&jwt(&["A", "B"])), ["A", "B"]);
        assert!(roles_of(&jwt(&[])).is_empty());
        assert!(roles_of("not-a-jwt").is_empty());
        assert!(roles_of("a.!!!.c").is_empty());
    }
}
