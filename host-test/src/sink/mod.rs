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
    /// A `--sink` (or instance file `sink`) the host cannot use as given.
    #[error("--sink {sink}: {message}")]
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

impl Sink {
    /// The file sink: `-` is stdout.
    pub fn open(path: &Path) -> Result<Sink, SinkError> {
        FileSink::open(path).map(Sink::File)
    }

    /// A network sink from its URL: `kafka://…`, `https://…` (`http://` to loopback
    /// only). Its secrets (`sink-hmac-secret`, `sink-bearer-token`, `sink-sasl-password`)
    /// come from the instance's secret sources.
    pub fn connect(url: &str, secrets: &Secrets) -> Result<Sink, SinkError> {
        let config = |message: String| SinkError::Config {
            sink: url.to_string(),
            message,
        };
        // A broker list (`a:9092,b:9092`) is no URL host: the Kafka sink reads it itself.
        if let Some(rest) = url.strip_prefix("kafka://") {
            return kafka::KafkaSink::connect(rest, secrets).map(Sink::Kafka);
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
            "https" | "http" => webhook::WebhookSink::new(&parsed, secrets).map(Sink::Webhook),
            other => Err(config(format!(
                "unknown scheme {other}: a sink is kafka://… or https://… (a file is --out)"
            ))),
        }
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
    /// wait for more lines (up to its time limit).
    pub fn send(
        &mut self,
        instance: &str,
        lines: &[(u64, String)],
        flush: bool,
        state: &Mutex<StateDb>,
    ) -> Result<usize, SinkError> {
        match self {
            Sink::File(f) => f.write(lines).map(|()| lines.len()),
            Sink::Webhook(w) => w.send(instance, lines, flush, state),
            Sink::Kafka(k) => k.send(lines),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
