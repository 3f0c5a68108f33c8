//! The webhook sink: event lines in batched HTTP POSTs to one endpoint.
//!
//! `--sink https://siem.example/ingest#format=ndjson&max_events=500` — the options ride in
//! the URL's fragment, which HTTP never sends, so the endpoint's own URL (query included)
//! is untouched:
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `format` | `json` | `json`: a JSON array of event objects; `ndjson`: one per line |
//! | `max_events` | 500 | events in one POST at most |
//! | `max_bytes` | 1048576 | body size at most (one larger event goes alone) |
//! | `max_wait_ms` | 1000 | how long lines from a backfill's pages are held to fill a batch |
//! | `retry_secs` | 10 | time spent retrying one batch before the runner waits and polls on |
//! | `timeout_secs` | 30 | one request's time limit |
//!
//! Each batch is recorded in the state file before it is sent (its first and last `seq`)
//! and is sent again as the same batch until acknowledged, so a re-send after a crash has
//! the same body and the same `Idempotency-Key: <instance>:<first>-<last>`. With the
//! secret `sink-hmac-secret` the body is signed, `X-Signature-256: sha256=<hex HMAC-SHA256>`;
//! with `sink-bearer-token` the request carries `Authorization: Bearer …`.
//!
//! 2xx acknowledges the batch; 408, 425, 429 and 5xx (honouring `Retry-After`) and
//! connection failures are retried; 401 and 403 (credentials) and any other status (a body
//! the endpoint will not take) stop delivery with the status named and nothing marked
//! delivered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SinkError;
use crate::clock::{Clock, SystemClock};
use crate::secrets::Secrets;
use crate::state::StateDb;

/// The secret that signs bodies.
pub const HMAC_SECRET: &str = "sink-hmac-secret";
/// The secret sent as a bearer token.
pub const BEARER_TOKEN: &str = "sink-bearer-token";

/// How soon a raised stop flag ends a request in flight.
const STOP_CHECK: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonArray,
    Ndjson,
}

/// What a webhook sink's URL and secrets say, checked; nothing is sent. `serve --check`
/// and `validate` stop here; [`WebhookSink::new`] sends with it.
pub struct WebhookConfig {
    /// The endpoint, without the fragment.
    url: String,
    format: Format,
    max_events: usize,
    max_bytes: usize,
    max_wait: Duration,
    retry: Duration,
    timeout: Duration,
    hmac_secret: Option<String>,
    bearer: Option<String>,
}

pub struct WebhookSink {
    config: WebhookConfig,
    agent: ureq::Agent,
    /// Since when lines wait for a fuller batch (not flushed).
    waiting_since: Option<Instant>,
}

impl WebhookConfig {
    pub fn parse(url: &url::Url, secrets: &Secrets) -> Result<Self, SinkError> {
        let shown = {
            let mut u = url.clone();
            u.set_fragment(None);
            u.to_string()
        };
        let config = |message: String| SinkError::Config {
            sink: shown.clone(),
            message,
        };
        if url.scheme() == "http" && !crate::imports::http::is_loopback(url) {
            return Err(config(
                "plain http:// only to a loopback address (127.0.0.1, ::1, localhost); use \
                 https:// for another host"
                    .into(),
            ));
        }
        let mut sink = WebhookConfig {
            url: shown.clone(),
            format: Format::JsonArray,
            max_events: 500,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(1000),
            retry: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            hmac_secret: secrets.get(HMAC_SECRET).map(str::to_string),
            bearer: secrets.get(BEARER_TOKEN).map(str::to_string),
        };
        for (key, value) in url::form_urlencoded::parse(url.fragment().unwrap_or("").as_bytes()) {
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| config(format!("{key}={value}: give a number from 1 to {max}")))
            };
            match &*key {
                "format" => {
                    sink.format = match &*value {
                        "json" => Format::JsonArray,
                        "ndjson" => Format::Ndjson,
                        _ => return Err(config(format!("format={value}: give json or ndjson"))),
                    }
                }
                "max_events" => sink.max_events = number(100_000)? as usize,
                "max_bytes" => sink.max_bytes = number(1 << 30)? as usize,
                "max_wait_ms" => sink.max_wait = Duration::from_millis(number(3_600_000)?),
                "retry_secs" => sink.retry = Duration::from_secs(number(3600)?),
                "timeout_secs" => sink.timeout = Duration::from_secs(number(3600)?),
                _ => {
                    return Err(config(format!(
                        "unknown option {key}; the options are format, max_events, max_bytes, \
                         max_wait_ms, retry_secs, timeout_secs"
                    )));
                }
            }
        }
        Ok(sink)
    }

    pub fn describe(&self) -> String {
        format!("webhook {}", self.url)
    }
}

impl WebhookSink {
    pub fn new(config: WebhookConfig) -> Self {
        WebhookSink {
            config,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .user_agent(concat!("connector-host/", env!("CARGO_PKG_VERSION")))
                .build()
                .into(),
            waiting_since: None,
        }
    }

    pub fn describe(&self) -> String {
        self.config.describe()
    }

    /// Sends the next batch of `lines` (the one recorded before a crash, if it is still
    /// the next) and returns how many lines the endpoint acknowledged: the whole batch or
    /// none (0 also when a small batch waits to fill up). `stop` raised (SIGTERM, the
    /// instance removed) ends the retries and a request in flight within [`STOP_CHECK`].
    pub fn send(
        &mut self,
        instance: &str,
        lines: &[(u64, String)],
        flush: bool,
        state: &Mutex<StateDb>,
        stop: &AtomicBool,
    ) -> Result<usize, SinkError> {
        let Some(&(first, _)) = lines.first() else {
            return Ok(0);
        };
        let db = || state.lock().unwrap_or_else(|p| p.into_inner());
        let described = self.describe();
        let state_error = |e: crate::state::StateError| SinkError::Unavailable {
            sink: described.clone(),
            cause: format!("cannot record the batch in the state file: {e}"),
            retry_after: None,
        };
        let recorded = db().sink_batch(instance).map_err(state_error)?;
        let n = match recorded.and_then(|(f, l)| resumed_len(lines, f, l)) {
            Some(n) => n,
            None => {
                let n = self.cut(lines);
                let full = n < lines.len() || n == self.config.max_events;
                if !flush && !full {
                    let since = *self.waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.config.max_wait {
                        return Ok(0);
                    }
                }
                db().set_sink_batch(instance, first, lines[n - 1].0)
                    .map_err(state_error)?;
                n
            }
        };
        let batch = &lines[..n];
        let body = body(self.config.format, batch);
        let key = idempotency_key(instance, first, batch[n - 1].0);
        self.post_until_acknowledged(&body, &key, stop)?;
        self.waiting_since = None;
        Ok(n)
    }

    /// How many of `lines` the next new batch takes: at least one, then as many as the
    /// event and byte limits allow.
    fn cut(&self, lines: &[(u64, String)]) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        for (_, line) in lines.iter().take(self.config.max_events) {
            bytes += line.len() + 1;
            if n > 0 && bytes > self.config.max_bytes {
                break;
            }
            n += 1;
        }
        n
    }

    /// POSTs one batch, retrying what waiting may fix for up to `retry`. A raised `stop`
    /// ends it, in a wait or a request, as `Unavailable`: nothing is marked delivered, and
    /// the batch goes again under the same idempotency key when the instance runs next.
    fn post_until_acknowledged(
        &self,
        body: &[u8],
        key: &str,
        stop: &AtomicBool,
    ) -> Result<(), SinkError> {
        let give_up = Instant::now() + self.config.retry;
        let mut backoff = Duration::from_millis(250);
        let stopped = |cause: &str, retry_after| SinkError::Unavailable {
            sink: self.describe(),
            cause: format!("{cause}; stopping, so not sent again now"),
            retry_after,
        };
        loop {
            let (cause, retry_after) = match self.post_unless_stopped(body, key, stop) {
                None => return Err(stopped("the batch was in flight", None)),
                Some(Ok(Outcome::Acknowledged)) => return Ok(()),
                Some(Ok(Outcome::Refused(cause))) => {
                    return Err(SinkError::Rejected {
                        sink: self.describe(),
                        cause,
                    });
                }
                Some(Ok(Outcome::Later { cause, retry_after })) => (cause, retry_after),
                Some(Err(cause)) => (cause, None),
            };
            let wait = retry_after.unwrap_or(backoff);
            if Instant::now() + wait > give_up {
                return Err(SinkError::Unavailable {
                    sink: self.describe(),
                    cause,
                    retry_after,
                });
            }
            tracing::debug!(sink = %self.config.url, wait_ms = wait.as_millis() as u64,
                "batch not acknowledged, sent again after a wait: {cause}");
            SystemClock.sleep(wait, stop);
            if stop.load(Ordering::Relaxed) {
                return Err(stopped(&cause, retry_after));
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// [`answer`] to one POST of the batch, on a thread of its own so that a raised
    /// `stop` need not wait for a request that hangs (up to `timeout_secs`): `None` then.
    /// The request left behind ends by its own timeout, whatever the endpoint makes of it.
    fn post_unless_stopped(
        &self,
        body: &[u8],
        key: &str,
        stop: &AtomicBool,
    ) -> Option<Result<Outcome, String>> {
        let request = match self.request(body, key) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let agent = self.agent.clone();
        let (tx, rx) = sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("webhook-post".into())
            .spawn(move || {
                let _ = tx.send(answer(&agent, request));
            });
        if let Err(e) = spawned {
            // No thread to spare: the request runs here, and a stop waits for it.
            tracing::debug!(sink = %self.config.url, "cannot start a thread for the request: {e}");
            return Some(self.request(body, key).and_then(|r| answer(&self.agent, r)));
        }
        loop {
            match rx.recv_timeout(STOP_CHECK) {
                Ok(answer) => return Some(answer),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return None,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Some(Err("the request ended without an answer".into()));
                }
            }
        }
    }

    /// The batch's POST: its headers (signature, bearer token) and time limit.
    fn request(&self, body: &[u8], key: &str) -> Result<ureq::http::Request<Vec<u8>>, String> {
        let content_type = match self.config.format {
            Format::JsonArray => "application/json",
            Format::Ndjson => "application/x-ndjson",
        };
        let mut request = ureq::http::Request::builder()
            .method("POST")
            .uri(self.config.url.as_str())
            .header("Content-Type", content_type)
            .header("Idempotency-Key", key);
        if let Some(secret) = &self.config.hmac_secret {
            request = request.header("X-Signature-256", signature(secret, body));
        }
        if let Some(token) = &self.config.bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let request = request.body(body.to_vec()).map_err(|e| e.to_string())?;
        Ok(self
            .agent
            .configure_request(request)
            .timeout_global(Some(self.config.timeout))
            .build())
    }
}

/// Sends `request` and says what the endpoint's answer means.
fn answer(agent: &ureq::Agent, request: ureq::http::Request<Vec<u8>>) -> Result<Outcome, String> {
    // ureq's errors name the URL and the cause, never headers: no secret in them.
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    // A little of the endpoint's answer helps the operator; it is the endpoint's
    // text, not ours, so no secret of ours is in it.
    let said = response
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let said: String = said.trim().chars().take(200).collect();
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    Ok(match status {
        200..=299 => Outcome::Acknowledged,
        401 | 403 => Outcome::Refused(format!(
            "HTTP {status}{said}; check the secret {BEARER_TOKEN} or {HMAC_SECRET} \
                 against what the endpoint expects"
        )),
        408 | 425 | 429 | 500..=599 => Outcome::Later {
            cause: format!("HTTP {status}{said}"),
            retry_after,
        },
        _ => Outcome::Refused(format!(
            "HTTP {status}{said}; the endpoint does not take this batch, so delivery \
                 stops here until the endpoint or the --sink option is fixed"
        )),
    })
}

/// A `Retry-After` value as RFC 9110 allows it, seconds or an HTTP date, as the wait from
/// `now`, at most an hour. A date already past, or a value that is neither, says nothing
/// about when: the sender's own backoff applies (rather than sending again at once).
fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    Some(wait.min(Duration::from_secs(3600)))
}

enum Outcome {
    Acknowledged,
    Refused(String),
    Later {
        cause: String,
        retry_after: Option<Duration>,
    },
}

/// The length of the recorded batch `first..=last` if it is still the next one: it starts
/// the undelivered lines and they hold all of it. (A batch that no longer fits, as after an
/// instance was forgotten and made again, is cut anew.)
fn resumed_len(lines: &[(u64, String)], first: u64, last: u64) -> Option<usize> {
    let n = usize::try_from(last.checked_sub(first)? + 1).ok()?;
    (lines.first()?.0 == first && lines.get(n - 1)?.0 == last).then_some(n)
}

/// Identifies a batch for the receiver: the same lines always get the same key.
pub fn idempotency_key(instance: &str, first: u64, last: u64) -> String {
    format!("{instance}:{first}-{last}")
}

pub fn body(format: Format, lines: &[(u64, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum::<usize>() + 2);
    match format {
        Format::JsonArray => {
            out.push(b'[');
            for (i, (_, line)) in lines.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(line.as_bytes());
            }
            out.push(b']');
        }
        Format::Ndjson => {
            for (_, line) in lines {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
    out
}

/// `sha256=<hex>` of the body's HMAC-SHA256 under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
        seqs.map(|s| (s, format!("{{\"seq\":{s}}}"))).collect()
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let date = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let before = date - Duration::from_secs(90);
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(retry_after(" 120 ", before), secs(120));
        assert_eq!(retry_after("0", before), secs(0));
        assert_eq!(retry_after("86400", before), secs(3600), "at most an hour");
        // The three date forms RFC 9110 has recipients accept.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", before),
            secs(90)
        );
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:49:37 GMT", before),
            secs(90)
        );
        assert_eq!(retry_after("Sun Nov  6 08:49:37 1994", before), secs(90));
        assert_eq!(
            retry_after("Mon, 07 Nov 1994 08:49:37 GMT", before),
            secs(3600),
            "a day later: at most an hour"
        );
        let after = date + Duration::from_secs(5);
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", after),
            None,
            "past"
        );
        assert_eq!(retry_after("soon", before), None);
        assert_eq!(retry_after("-5", before), None);
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_are_a_json_array_or_one_event_per_line() {
        let l = lines(1..=2);
        assert_eq!(body(Format::JsonArray, &l), b"[{\"seq\":1},{\"seq\":2}]");
        assert_eq!(body(Format::Ndjson, &l), b"{\"seq\":1}\n{\"seq\":2}\n");
    }

    #[test]
    fn a_recorded_batch_is_resumed_only_while_it_is_next_and_whole() {
        let l = lines(5..=9);
        assert_eq!(resumed_len(&l, 5, 7), Some(3));
        assert_eq!(resumed_len(&l, 5, 9), Some(5));
        assert_eq!(
            resumed_len(&l, 5, 12),
            None,
            "not all committed lines there"
        );
        assert_eq!(
            resumed_len(&l, 3, 7),
            None,
            "starts before the undelivered lines"
        );
        assert_eq!(resumed_len(&l, 7, 5), None);
    }

    #[test]
    fn options_come_from_the_fragment_and_plain_http_only_to_loopback() {
        let secrets = Secrets::default();
        let url = url::Url::parse("http://127.0.0.1:9/in?x=1#format=ndjson&max_events=3").unwrap();
        let config = WebhookConfig::parse(&url, &secrets).unwrap();
        assert_eq!(config.format, Format::Ndjson);
        assert_eq!(config.max_events, 3);
        assert_eq!(config.url, "http://127.0.0.1:9/in?x=1");
        assert_eq!(WebhookSink::new(config).cut(&lines(1..=5)), 3);
        let far = url::Url::parse("http://siem.example/in").unwrap();
        let err = WebhookConfig::parse(&far, &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("only to a loopback address"), "{err}");
        let bad = url::Url::parse("https://siem.example/in#max_event=3").unwrap();
        let err = WebhookConfig::parse(&bad, &secrets)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown option max_event"), "{err}");
    }
}
