//! Which host a poll could not reach. The component sees a failed connection as an HTTP
//! error and reports a transient or fatal poll; the host, which made the connection, knows
//! it was the network (DNS, TCP, TLS, a proxy) and to which host, and says so in the log,
//! `status` and the metrics (code `network`) with the host to check.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bindings::secops::connector::http::{HttpError, Request, Response};
use crate::imports::Transport;

/// A transport that remembers the last connection failure until a request goes through.
pub struct Watched {
    inner: Arc<dyn Transport>,
    unreachable: Arc<Mutex<Option<Unreachable>>>,
}

/// A host the last request could not reach, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    pub host: String,
    pub cause: String,
}

impl Watched {
    /// Wraps `inner`; the second value reads (and clears) what it saw.
    pub fn wrap(inner: Arc<dyn Transport>) -> (Arc<dyn Transport>, Watch) {
        let unreachable = Arc::new(Mutex::new(None));
        let watched = Watched {
            inner,
            unreachable: unreachable.clone(),
        };
        (Arc::new(watched), Watch(unreachable))
    }
}

/// The reading side of a [`Watched`] transport.
#[derive(Clone)]
pub struct Watch(Arc<Mutex<Option<Unreachable>>>);

impl Watch {
    /// The host the last request failed to reach, if the last request failed so; cleared.
    pub fn take(&self) -> Option<Unreachable> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Transport for Watched {
    fn send(
        &self,
        request: &Request,
        timeout: Duration,
        body_cap: u64,
    ) -> Result<Response, HttpError> {
        let result = self.inner.send(request, timeout, body_cap);
        let mut seen = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Err(HttpError::Connection(cause)) => {
                let host = url::Url::parse(&request.url)
                    .ok()
                    .and_then(|u| {
                        u.host_str().map(|h| {
                            format!(
                                "{h}{}",
                                u.port().map(|p| format!(":{p}")).unwrap_or_default()
                            )
                        })
                    })
                    .unwrap_or_else(|| "the endpoint".into());
                *seen = Some(Unreachable {
                    host,
                    cause: cause.clone(),
                });
            }
            Ok(_) => *seen = None,
            Err(_) => {}
        }
        result
    }
}

/// The message of a poll that failed because `u`'s host could not be reached.
pub fn describe(u: &Unreachable, message: &str) -> String {
    format!(
        "network: cannot reach {}; check DNS, proxy (HTTPS_PROXY) and firewall for it ({message})",
        u.host
    )
}
