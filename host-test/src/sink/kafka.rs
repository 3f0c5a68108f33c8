//! The Kafka sink: each event line becomes one record, through librdkafka's idempotent
//! producer (`enable.idempotence=true`, `acks=all`).
//!
//! `--sink 'kafka://broker1:9093,broker2:9093?topic=secops.{kind}&sasl.mechanism=SCRAM-SHA-512&sasl.username=connector'`
//!
//! - value: the event line, unchanged (the same bytes as in a `--out` file);
//! - key: `<instance>/<kind>/<id>`, the record's identity. Kafka orders records per
//!   partition and the default partitioner places a key on one partition, so every
//!   version of one incident or alert reaches consumers in the order it was emitted, and a
//!   compacted topic keeps each record's newest version. (A key of the instance alone
//!   would keep all of an instance's lines in order but put a tenant on one partition and
//!   make compaction keep one line per tenant; order across records is the `seq` header.)
//! - headers: `kind`, `instance`, `seq` (decimal).
//!
//! A line counts as delivered only after its delivery report says the brokers acknowledged
//! it (all in-sync replicas). A crash before the state records that sends it again with the
//! same key, value and `seq`: consumers drop a repeat by (`instance`, `seq`). This is at
//! least once, not exactly once.
//!
//! Options (the URL's query; anything else is refused): `topic` (default `secops-events`;
//! `{kind}` in it makes one topic per event kind, e.g. `secops.{kind}`), and the librdkafka
//! settings `security.protocol`, `sasl.mechanism`, `sasl.username`, `ssl.ca.location`,
//! `ssl.certificate.location`, `ssl.key.location`,
//! `ssl.endpoint.identification.algorithm`, `message.timeout.ms`, `linger.ms`,
//! `compression.type`, `client.id`. `security.protocol` defaults to `plaintext` when every
//! broker is a loopback address and to `ssl` otherwise. Passwords come from the secrets:
//! `sink-sasl-password` (`sasl.password`) and `sink-ssl-key-password` (`ssl.key.password`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Deserialize;

use super::SinkError;
use crate::secrets::Secrets;

pub const SASL_PASSWORD: &str = "sink-sasl-password";
pub const SSL_KEY_PASSWORD: &str = "sink-ssl-key-password";

/// The topic when the URL names none.
pub const DEFAULT_TOPIC: &str = "secops-events";

/// librdkafka settings an operator may give in the URL.
const PASSED_THROUGH: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "message.timeout.ms",
    "linger.ms",
    "compression.type",
    "client.id",
];

/// Lines handed to the producer before waiting for their delivery reports.
const LINES_PER_SEND: usize = 10_000;

pub struct KafkaSink {
    /// `kafka://<brokers>?topic=…` without secrets, for logs.
    shown: String,
    topic: String,
    config: ClientConfig,
    /// Made on first use and again after a failed send (a fatal idempotence error leaves
    /// a producer unusable).
    producer: Option<BaseProducer<Reports>>,
    /// How long to wait for one send's delivery reports.
    report_wait: Duration,
}

/// The delivery reports of the current send, by index, and the last error librdkafka
/// reported outside a delivery (e.g. a refused SASL login).
#[derive(Default)]
pub struct Reports {
    results: Mutex<Vec<Option<Result<(), KafkaError>>>>,
    client_error: Mutex<Option<(KafkaError, String)>>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("kafka client: {error}: {reason}");
        *self.client_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((error, reason.to_string()));
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(result.as_ref().map(drop).map_err(|(e, _)| e.clone()));
        }
    }
}

impl KafkaSink {
    /// `rest`: the sink's URL after `kafka://`, `<brokers>[?<options>]`. Checks it and
    /// makes the sink without its producer: nothing connects until [`Self::connect`].
    pub fn parse(rest: &str, instance: &str, secrets: &Secrets) -> Result<Self, SinkError> {
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = brokers.trim_end_matches('/').to_string();
        let shown = if query.is_empty() {
            format!("kafka://{brokers}")
        } else {
            format!("kafka://{brokers}?{query}")
        };
        let config_error = |message: String| SinkError::Config {
            sink: shown.clone(),
            message,
        };
        let valid = |b: &str| {
            b.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains(['@', '/', '#']) && port.parse::<u16>().is_ok()
            })
        };
        if brokers.is_empty() || !brokers.split(',').all(valid) {
            return Err(config_error(
                "give the brokers as kafka://<host>:<port>[,<host>:<port>…] (credentials \
                 belong in the secrets, not the URL)"
                    .into(),
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("client.id", format!("connector-host-{instance}"))
            .set("message.timeout.ms", "30000");
        let mut topic = DEFAULT_TOPIC.to_string();
        let mut protocol = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => topic = value.into_owned(),
                "sasl.password" | "ssl.key.password" => {
                    return Err(config_error(format!(
                        "{key} does not belong in the URL (it is logged); put it in the secrets \
                         as {SASL_PASSWORD} or {SSL_KEY_PASSWORD}"
                    )));
                }
                k if PASSED_THROUGH.contains(&k) => {
                    if k == "security.protocol" {
                        protocol = Some(value.to_ascii_lowercase());
                    }
                    config.set(k, &*value);
                }
                other => {
                    return Err(config_error(format!(
                        "unknown option {other}; the options are topic, {}",
                        PASSED_THROUGH.join(", ")
                    )));
                }
            }
        }
        if topic.is_empty()
            || topic
                .replace("{kind}", "x")
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(config_error(format!(
                "topic {topic:?}: a topic name has letters, digits, '.', '_', '-' (and {{kind}})"
            )));
        }
        if protocol.is_none() {
            let local = brokers.split(',').all(|b| {
                let host = b.rsplit_once(':').map_or(b, |(h, _)| h);
                matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
            });
            config.set("security.protocol", if local { "plaintext" } else { "ssl" });
        }
        if let Some(p) = secrets.get(SASL_PASSWORD) {
            config.set("sasl.password", p);
        }
        if let Some(p) = secrets.get(SSL_KEY_PASSWORD) {
            config.set("ssl.key.password", p);
        }
        let timeout_ms: u64 = config
            .get("message.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        Ok(KafkaSink {
            shown,
            topic,
            config,
            producer: None,
            report_wait: Duration::from_millis(timeout_ms) + Duration::from_secs(5),
        })
    }

    /// The sink [`Self::parse`] made, with its producer: a setting librdkafka refuses is
    /// a config error now, not a delivery failure later.
    pub fn connect(mut self) -> Result<Self, SinkError> {
        self.producer()?;
        Ok(self)
    }

    pub fn describe(&self) -> String {
        format!("kafka {}", self.shown)
    }

    fn producer(&mut self) -> Result<&BaseProducer<Reports>, SinkError> {
        if self.producer.is_none() {
            let producer = self
                .config
                .create_with_context(Reports::default())
                .map_err(|e| SinkError::Config {
                    sink: self.shown.clone(),
                    message: format!("librdkafka refuses the settings: {e}"),
                })?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("made above"))
    }

    /// Produces up to [`LINES_PER_SEND`] lines and waits for their delivery reports;
    /// returns how many lines from the start the brokers acknowledged.
    pub fn send(&mut self, lines: &[(u64, String)]) -> Result<usize, SinkError> {
        let lines = &lines[..lines.len().min(LINES_PER_SEND)];
        let records = lines
            .iter()
            .map(|(seq, line)| Record::of(*seq, line))
            .collect::<Vec<_>>();
        let sink = self.describe();
        let report_wait = self.report_wait;
        let topic_template = self.topic.clone();
        let producer = self.producer()?;
        *producer
            .context()
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = vec![None; lines.len()];
        let deadline = Instant::now() + report_wait;
        for (i, ((_, line), record)) in lines.iter().zip(&records).enumerate() {
            let topic = topic_template.replace("{kind}", &record.kind);
            let seq = record.seq.to_string();
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: "kind",
                    value: Some(record.kind.as_str()),
                })
                .insert(Header {
                    key: "instance",
                    value: Some(record.instance.as_str()),
                })
                .insert(Header {
                    key: "seq",
                    value: Some(seq.as_str()),
                });
            let mut base = BaseRecord::with_opaque_to(&topic, i)
                .key(record.key.as_str())
                .payload(line.as_str())
                .headers(headers);
            loop {
                match producer.send(base) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        base = back;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        // Refused before it was sent (e.g. the topic's ACL, known from
                        // metadata): its report is this error. The lines before it are in
                        // flight: wait for them below.
                        tracing::debug!(sink, "kafka producer refused a record: {e}");
                        if let Some(slot) = producer
                            .context()
                            .results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_mut(i)
                        {
                            *slot = Some(Err(e));
                        }
                        break;
                    }
                }
            }
        }
        let acknowledged = loop {
            producer.poll(Duration::from_millis(20));
            let results = producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let done = results.iter().all(Option::is_some);
            if done || Instant::now() >= deadline {
                break results;
            }
        };
        let ok = acknowledged
            .iter()
            .take_while(|r| matches!(r, Some(Ok(()))))
            .count();
        if ok == lines.len() {
            return Ok(ok);
        }
        let failure = acknowledged[ok].clone();
        let client_error = producer
            .context()
            .client_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Whatever is still in flight is reported to a producer nobody reads: the next
        // send starts a fresh one, and the lines after `ok` go again in order.
        self.producer = None;
        if ok > 0 {
            return Ok(ok);
        }
        Err(classify(sink, failure, client_error))
    }
}

/// What a failed delivery means: credentials or authorization refused (the operator must
/// act) or anything else (wait and send again).
fn classify(
    sink: String,
    failure: Option<Result<(), KafkaError>>,
    client_error: Option<(KafkaError, String)>,
) -> SinkError {
    let refused = |code: Option<RDKafkaErrorCode>| {
        matches!(
            code,
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::MessageSizeTooLarge
            )
        )
    };
    let delivery = match failure {
        Some(Err(e)) => Some(e),
        _ => None,
    };
    if let Some(e) = delivery
        .as_ref()
        .filter(|e| refused(e.rdkafka_error_code()))
    {
        return SinkError::Rejected {
            sink,
            cause: format!(
                "{e}; check the sink's credentials ({SASL_PASSWORD}, sasl.username) and the \
                 topic's ACLs"
            ),
        };
    }
    if let Some((e, reason)) = client_error
        .as_ref()
        .filter(|(e, _)| refused(e.rdkafka_error_code()))
    {
        return SinkError::Rejected {
            sink,
            cause: format!(
                "{e}: {reason}; check the sink's credentials ({SASL_PASSWORD}, sasl.username)"
            ),
        };
    }
    let cause = match (delivery, client_error) {
        (Some(e), _) => e.to_string(),
        (None, Some((e, reason))) => {
            format!("no delivery report in time; last error {e}: {reason}")
        }
        (None, None) => "no delivery report in time".into(),
    };
    SinkError::Unavailable {
        sink,
        cause,
        retry_after: None,
    }
}

/// What a record's key and headers are made of, read from its line.
struct Record {
    seq: u64,
    instance: String,
    kind: String,
    key: String,
}

impl Record {
    fn of(seq: u64, line: &str) -> Record {
        #[derive(Deserialize, Default)]
        struct Head {
            #[serde(default)]
            instance: String,
            #[serde(default)]
            kind: String,
            #[serde(default)]
            id: String,
        }
        // The host wrote every outbox line from an `EventLine`; a line it cannot read
        // back still goes out, keyed by its seq, rather than stop delivery.
        let head: Head = serde_json::from_str(line).unwrap_or_default();
        let key = if head.id.is_empty() {
            format!("{}/seq/{seq}", head.instance)
        } else {
            format!("{}/{}/{}", head.instance, head.kind, head.id)
        };
        Record {
            seq,
            instance: head.instance,
            kind: head.kind,
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_records_identity_and_the_headers_name_kind_and_instance() {
        let r = Record::of(
            7,
            r#"{"seq":7,"instance":"contoso","kind":"defender.alert","id":"da1","version":"v2"}"#,
        );
        assert_eq!(r.key, "contoso/defender.alert/da1");
        assert_eq!(
            (r.kind.as_str(), r.instance.as_str()),
            ("defender.alert", "contoso")
        );
    }

    #[test]
    fn passwords_in_the_url_and_unknown_options_are_refused() {
        let secrets = Secrets::default();
        let err = |u: &str| {
            KafkaSink::parse(u.strip_prefix("kafka://").unwrap(), "t", &secrets)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err("kafka://127.0.0.1:9092?sasl.password=x").contains("sink-sasl-password"));
        assert!(err("kafka://127.0.0.1:9092?acks=1").contains("unknown option acks"));
        assert!(err("kafka://127.0.0.1:9092?topic=a%20b").contains("a topic name"));
        assert!(err("kafka://user:pw@127.0.0.1:9092").contains("give the brokers"));
        assert!(err("kafka://127.0.0.1").contains("give the brokers"));
    }
}
