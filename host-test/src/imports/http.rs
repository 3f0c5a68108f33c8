//! `secops:connector/http`: every request a component makes. The host checks it against the
//! instance's allow-list (its login and Graph origins), refuses plain `http://` except to
//! loopback, caps the timeout and the response size, never follows redirects, and learns
//! access tokens from token responses so that they are masked in every log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use url::{Host as UrlHost, Url};

use crate::bindings::secops::connector::http::{Host, HttpError, Request, Response};
use crate::imports::HostState;

/// Sends a checked request: the real network ([`NetworkTransport`]) or recorded fixtures.
pub trait Transport: Send + Sync {
    fn send(
        &self,
        request: &Request,
        timeout: Duration,
        body_cap: u64,
    ) -> Result<Response, HttpError>;
}

pub struct HttpContext {
    pub transport: Arc<dyn Transport>,
    pub allow: AllowList,
    pub timeout_cap: Duration,
    pub body_cap: u64,
    /// Requests sent during the instance's life (for reports).
    pub requests: u64,
    /// Responses that were 429 Too Many Requests (for health and metrics).
    pub throttled: u64,
}

/// The origins (scheme, host, port) an instance may reach.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    origins: Vec<String>,
    /// The login origin: responses from it may carry tokens to mask.
    login: Option<String>,
}

impl AllowList {
    /// The login and Graph origins the config selects (cloud, `login_url`, `graph_url`),
    /// resolved by the same code the components use. A config that does not parse allows
    /// nothing; `configure` reports why.
    pub fn from_config(document: &str) -> AllowList {
        match secops_connector::config::parse(document) {
            Ok((config, _)) => {
                let login = origin_of(&config.login_base);
                let graph = origin_of(&config.graph_base);
                AllowList {
                    origins: [login.clone(), graph].into_iter().flatten().collect(),
                    login,
                }
            }
            Err(_) => AllowList::default(),
        }
    }

    pub fn allows(&self, url: &Url) -> bool {
        self.origins
            .iter()
            .any(|o| *o == url.origin().ascii_serialization())
    }

    fn is_login(&self, url: &Url) -> bool {
        self.login.as_deref() == Some(url.origin().ascii_serialization().as_str())
    }
}

fn origin_of(base: &str) -> Option<String> {
    Url::parse(base)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(UrlHost::Ipv4(ip)) => ip.is_loopback(),
        Some(UrlHost::Ipv6(ip)) => ip.is_loopback(),
        Some(UrlHost::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Checks a request against the instance's policy; `Ok` is the parsed URL.
pub fn check(request: &Request, allow: &AllowList) -> Result<Url, HttpError> {
    let url =
        Url::parse(&request.url).map_err(|e| HttpError::InvalidRequest(format!("bad URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(HttpError::Denied(format!(
                "plain http:// to {} (only loopback hosts may use http)",
                url.host_str().unwrap_or("")
            )));
        }
        other => {
            return Err(HttpError::InvalidRequest(format!(
                "unsupported scheme {other}"
            )));
        }
    }
    if !allow.allows(&url) {
        return Err(HttpError::Denied(format!(
            "{} is not one of this instance's hosts (its login and Graph hosts)",
            url.origin().ascii_serialization()
        )));
    }
    if !matches!(request.method.as_str(), "GET" | "POST") {
        return Err(HttpError::InvalidRequest(format!(
            "method {} is not allowed",
            request.method
        )));
    }
    Ok(url)
}

impl Host for HostState {
    fn send(&mut self, request: Request) -> Result<Response, HttpError> {
        let started = Instant::now();
        let result = self.send_checked(&request);
        self.host_time += started.elapsed();
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return result;
        }
        let what = format!("{} {}", request.method, self.redactor.redact(&request.url));
        match &result {
            Ok(r) => tracing::debug!(instance = %self.instance, status = r.status,
                bytes = r.body.len(), ms = started.elapsed().as_millis() as u64, "{what}"),
            Err(e) => tracing::debug!(instance = %self.instance, error = ?e, "{what}"),
        }
        result
    }
}

impl HostState {
    fn send_checked(&mut self, request: &Request) -> Result<Response, HttpError> {
        let url = check(request, &self.http.allow)?;
        let timeout = Duration::from_millis(request.timeout_ms.into()).min(self.http.timeout_cap);
        self.http.requests += 1;
        let response = self
            .http
            .transport
            .send(request, timeout, self.http.body_cap)?;
        if self.http.allow.is_login(&url) {
            self.redactor.add_token_response(&response.body);
        }
        if response.status == 429 {
            self.http.throttled += 1;
        }
        Ok(response)
    }
}

/// The network, through ureq with rustls.
pub struct NetworkTransport {
    agent: ureq::Agent,
}

impl Default for NetworkTransport {
    fn default() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("connector-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        NetworkTransport { agent }
    }
}

impl Transport for NetworkTransport {
    fn send(
        &self,
        request: &Request,
        timeout: Duration,
        body_cap: u64,
    ) -> Result<Response, HttpError> {
        let mut builder = ureq::http::Request::builder()
            .method(request.method.as_str())
            .uri(request.url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let http_request = builder
            .body(request.body.clone())
            .map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
        let http_request = self
            .agent
            .configure_request(http_request)
            .timeout_global(Some(timeout))
            .build();
        let mut response = self.agent.run(http_request).map_err(map_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(body_cap)
            .read_to_vec()
            .map_err(map_error)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn map_error(e: ureq::Error) -> HttpError {
    match e {
        ureq::Error::Timeout(_) => HttpError::Timeout,
        ureq::Error::BodyExceedsLimit(cap) => HttpError::TooLarge(cap),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => HttpError::Timeout,
        ureq::Error::BadUri(m) => HttpError::InvalidRequest(m),
        ureq::Error::Http(h) => HttpError::InvalidRequest(h.to_string()),
        other => HttpError::Connection(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(url: &str) -> Request {
        Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![],
            body: vec![],
            timeout_ms: 1000,
        }
    }

    #[test]
    fn only_the_configured_hosts_are_reachable_and_http_only_on_loopback() {
        let allow = AllowList::from_config(
            r#"{"tenant_id":"contoso.onmicrosoft.com","client_id":"2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e"}"#,
        );
        assert!(check(&get("https://graph.microsoft.com/v1.0/x"), &allow).is_ok());
        assert!(
            check(
                &get("https://login.microsoftonline.com/t/oauth2/v2.0/token"),
                &allow
            )
            .is_ok()
        );
        assert!(matches!(
            check(&get("https://evil.example/v1.0/x"), &allow),
            Err(HttpError::Denied(_))
        ));
        assert!(matches!(
            check(&get("http://graph.microsoft.com/v1.0/x"), &allow),
            Err(HttpError::Denied(_))
        ));
        let local = AllowList::from_config(
            r#"{"tenant_id":"contoso.onmicrosoft.com","client_id":"2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e",
                "graph_url":"http://127.0.0.1:9000","login_url":"http://127.0.0.1:9000"}"#,
        );
        assert!(check(&get("http://127.0.0.1:9000/v1.0/x"), &local).is_ok());
        assert!(matches!(
            check(&get("http://127.0.0.1:9001/v1.0/x"), &local),
            Err(HttpError::Denied(_))
        ));
    }
}
