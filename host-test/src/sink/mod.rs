//! Where event lines go. The outbox in the state file is the single source: a sink is
//! handed the undelivered lines in `seq` order and says how many of them its peer has
//! acknowledged; only those are recorded as delivered ([`crate::runner`]).
//!
//! - [`file`]: a JSON-lines file (`--out <file>`) or stdout (`--out -`, the default).
//! - [`webhook`]: batched, signed HTTP POSTs (`--sink https://…`).
//! - [`kafka`]: records on a Kafka topic (`--sink kafka://…`).
//!
//! Network sinks deliver at least once: a crash between the peer's acknowledgement and
//! the state's record repeats lines, each repeat recognisable (same `seq` and key, same
//! batch and idempotency key).

pub mod file;
pub mod kafka;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::secrets::Secrets;
use crate::state::StateDb;

pub use file::FileSink;

/// One event as delivered downstream (the line format of DESIGN.md).
#[derive(Serialize)]
pub struct EventLine<'a> {
    pub seq: u64,
    pub instance: &'a str,
    pub connector: &'a str,
    pub kind: &'a str,
    pub id: &'a str,
    pub version: &'a str,
    pub timestamp: &'a str,
    pub routing: &'a [String],
    /// What part of the record could not be read (e.g. an incident's alerts); only on
    /// events the connector marked incomplete, so complete events' lines are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<&'a str>,
    pub payload: &'a RawValue,
    /// The record normalized to OCSF, beside the raw one; absent when the component does
    /// not normalize (a 0.1 component, or `"normalize": false`), so such lines are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsf: Option<&'a RawValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open the output file {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write to {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A `--sink` (or instance file `sink`) the host cannot use as given. `sink` is the
    /// URL as [`shown`] masks it.
    #[error("sink {sink}: {message}")]
    Config { sink: String, message: String },
    /// The peer cannot take lines now (unreachable, 429, 5xx): they stay in the outbox and
    /// are sent again; `retry_after` is what the peer asked for, if anything.
    #[error("{sink} does not take events now: {cause}")]
    Unavailable {
        sink: String,
        cause: String,
        retry_after: Option<Duration>,
    },
    /// The peer refused the lines in a way waiting does not fix (credentials, a body it
    /// will not take): nothing is marked delivered, and the operator must act.
    #[error("{sink} refused the events: {cause}")]
    Rejected { sink: String, cause: String },
}

impl SinkError {
    /// Whether waiting and sending again may succeed (the outbox holds the lines meanwhile).
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }
}

pub enum Sink {
    File(FileSink),
    Webhook(webhook::WebhookSink),
    Kafka(kafka::KafkaSink),
}

/// A network sink as its URL (and the instance's secrets) describe it, checked but not
/// connected: what `serve --check` and `validate` report on, and what [`Sink::connect`]
/// connects. One parse for both, so a URL the check accepts is one `serve` can use.
pub enum SinkConfig {
    Webhook(webhook::WebhookConfig),
    /// The Kafka sink before its producer is made (which starts connecting).
    Kafka(kafka::KafkaSettings),
}

impl SinkConfig {
    /// A network sink's URL: `kafka://…`, `https://…` (`http://` to loopback only). Its
    /// secrets (`sink-hmac-secret`, `sink-bearer-token`, `sink-sasl-password`) come from
    /// the instance's secret sources. Nothing is sent or connected.
    pub fn parse(url: &str, secrets: &Secrets) -> Result<SinkConfig, SinkError> {
        // Whatever the cause, the URL in the error is masked: it is printed and logged.
        Self::parse_unmasked(url, secrets).map_err(|e| match e {
            SinkError::Config { message, .. } => SinkError::Config {
                sink: shown(url),
                message,
            },
            other => other,
        })
    }

    fn parse_unmasked(url: &str, secrets: &Secrets) -> Result<SinkConfig, SinkError> {
        let config = |message: String| SinkError::Config {
            sink: url.to_string(),
            message,
        };
        // A broker list (`a:9092,b:9092`) is no URL host: the Kafka sink reads it itself.
        if let Some(rest) = url.strip_prefix("kafka://") {
            return kafka::KafkaSettings::parse(rest, secrets).map(SinkConfig::Kafka);
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            config(format!(
                "not a URL ({e}); give kafka://<broker>:<port>?topic=… or https://<host>/<path>"
            ))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(config(
                "credentials do not belong in the URL (it is logged); put them in the \
                 secrets: sink-bearer-token, sink-hmac-secret or sink-sasl-password"
                    .into(),
            ));
        }
        match parsed.scheme() {
            "https" | "http" => {
                webhook::WebhookConfig::parse(&parsed, secrets).map(SinkConfig::Webhook)
            }
            other => Err(config(format!(
                "unknown scheme {other}: a sink is kafka://… or https://… (a file is --out)"
            ))),
        }
    }

    /// The sink, ready to send: the Kafka producer is made (and starts connecting).
    pub fn connect(self) -> Result<Sink, SinkError> {
        match self {
            SinkConfig::Webhook(config) => Ok(Sink::Webhook(webhook::WebhookSink::new(config))),
            SinkConfig::Kafka(sink) => sink.connect().map(Sink::Kafka),
        }
    }

    /// What the sink is, for logs and `serve --check` (no credentials).
    pub fn describe(&self) -> String {
        match self {
            SinkConfig::Webhook(w) => w.describe(),
            SinkConfig::Kafka(k) => k.describe(),
        }
    }
}

/// `url` as errors show it, a secret in it masked: the user info of its host (or of each
/// broker) and the value of any option whose name holds `password`, `secret` or
/// `token`. Such a URL is refused, and the refusal is printed and logged.
pub fn shown(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (path, options) = tail.split_at(tail.find(['?', '#']).unwrap_or(tail.len()));
    let authority = authority
        .split(',')
        .map(|host| match host.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => host.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut out = format!("{scheme}{authority}{path}");
    // The options (query and fragment): `key=value` pairs after `?`, `&` and `#`.
    let mut pair = String::new();
    for c in options.chars().chain(['&']) {
        if matches!(c, '?' | '&' | '#') {
            out.push_str(&masked(&pair));
            pair.clear();
            out.push(c);
        } else {
            pair.push(c);
        }
    }
    out.pop(); // the '&' chained on to end the last pair
    out
}

/// Whether an option or setting of that name holds a secret (its value is never shown).
fn names_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|w| key.contains(w))
}

/// One `key=value` option, its value masked if its name (decoded, as the sinks read it)
/// names a secret.
fn masked(pair: &str) -> String {
    let secret = url::form_urlencoded::parse(pair.as_bytes())
        .next()
        .is_some_and(|(key, _)| names_secret(&key));
    match pair.split_once('=') {
        Some((key, _)) if secret => format!("{key}=***"),
        _ => pair.to_string(),
    }
}

impl Sink {
    /// The file sink: `-` is stdout.
    pub fn open(path: &Path) -> Result<Sink, SinkError> {
        FileSink::open(path).map(Sink::File)
    }

    /// A network sink from its URL ([`SinkConfig::parse`]), connected.
    pub fn connect(url: &str, secrets: &Secrets) -> Result<Sink, SinkError> {
        SinkConfig::parse(url, secrets)?.connect()
    }

    /// What the sink is, for logs (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Sink::File(f) => match f.path() {
                Some(p) => p.display().to_string(),
                None => "stdout".into(),
            },
            Sink::Webhook(w) => w.describe(),
            Sink::Kafka(k) => k.describe(),
        }
    }

    /// The `seq` of the last line of `instance` the sink already holds, where it can read
    /// its own output back (a file); `None` otherwise.
    pub fn last_seq(&mut self, instance: &str) -> Result<Option<u64>, SinkError> {
        match self {
            Sink::File(f) => f.last_seq(instance),
            _ => Ok(None),
        }
    }

    /// The file written to; `None` for stdout and network sinks (which stay open).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Sink::File(f) => f.path(),
            _ => None,
        }
    }

    /// Sends the first lines of `lines` (undelivered, in `seq` order) and returns how many
    /// the peer acknowledged, from the start. `flush`: nothing follows soon, so a sink that
    /// collects lines into batches sends what it holds now; otherwise it may answer 0 and
    /// wait for more lines (up to its time limit). `stop` raised (SIGTERM, the instance
    /// removed): the sink gives up its retries, its request in flight or its wait for
    /// delivery reports at once, as `Unavailable`: nothing more is marked delivered.
    pub fn send(
        &mut self,
        instance: &str,
        lines: &[(u64, String)],
        flush: bool,
        state: &Mutex<StateDb>,
        stop: &AtomicBool,
    ) -> Result<usize, SinkError> {
        match self {
            Sink::File(f) => f.write(lines).map(|()| lines.len()),
            Sink::Webhook(w) => w.send(instance, lines, flush, state, stop),
            Sink::Kafka(k) => k.send(lines, stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_sink_url_is_shown_without_its_secrets() {
        assert_eq!(
            shown("kafka://u:pw@a:9092,b:9092?topic=t&sasl.password=pw&sasl.username=u"),
            "kafka://***@a:9092,b:9092?topic=t&sasl.password=***&sasl.username=u"
        );
        assert_eq!(
            shown("https://user:pw@siem.example/in?x=1#sasl%2Epassword=pw&format=ndjson"),
            "https://***@siem.example/in?x=1#sasl%2Epassword=***&format=ndjson"
        );
        assert_eq!(shown("ftp://x/y?a=b"), "ftp://x/y?a=b");
        assert_eq!(shown("not a url"), "not a url");
        let err = SinkConfig::parse(
            "kafka://127.0.0.1:9092?ssl.key.password=hunter2",
            &Secrets::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("sink-ssl-key-password"),
            "{err}"
        );
        let err = SinkConfig::parse("https://u:hunter2@h/in", &Secrets::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("credentials"),
            "{err}"
        );
    }

    #[test]
    fn an_event_line_names_what_is_incomplete_only_when_something_is() {
        let payload = RawValue::from_string("{\"id\":\"i1\"}".into()).unwrap();
        let line = |incomplete| {
            serde_json::to_string(&EventLine {
                seq: 1,
                instance: "t",
                connector: "defender-incidents",
                kind: "defender.incident",
                id: "i1",
                version: "v",
                timestamp: "2026-11-20T12:00:00Z",
                routing: &[],
                incomplete,
                payload: &payload,
                ocsf: None,
            })
            .unwrap()
        };
        assert!(!line(None).contains("incomplete"), "{}", line(None));
        let marked = line(Some("alerts not read: $expand=alerts keeps failing"));
        let doc: serde_json::Value = serde_json::from_str(&marked).unwrap();
        assert_eq!(
            doc["incomplete"],
            "alerts not read: $expand=alerts keeps failing"
        );
        assert_eq!(doc["payload"]["id"], "i1");
    }
}
