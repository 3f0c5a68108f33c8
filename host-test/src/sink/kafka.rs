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
//! Every instance of the process whose sink has the same settings sends through one
//! producer (`client.id` `connector-host` unless given), so librdkafka's threads and
//! connections do not grow with the tenants. A producer that met a fatal error (an
//! idempotent producer's sequence lost) is replaced; other failures keep it.
//!
//! Options (the URL's query; anything else is refused): `topic` (default `secops-events`;
//! `{kind}` in it makes one topic per event kind, e.g. `secops.{kind}`), and the librdkafka
//! settings `security.protocol`, `sasl.mechanism`, `sasl.username`, `ssl.ca.location`,
//! `ssl.certificate.location`, `ssl.key.location`,
//! `ssl.endpoint.identification.algorithm`, `message.timeout.ms`, `linger.ms`,
//! `compression.type`, `client.id`. `security.protocol` defaults to `plaintext` when every
//! broker is a loopback address and to `ssl` otherwise. Passwords come from the secrets:
//! `sink-sasl-password` (`sasl.password`) and `sink-ssl-key-password` (`ssl.key.password`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

type Shared = ThreadedProducer<Reports>;

/// The producers of this process, one per distinct configuration (secrets included, kept
/// only as a digest): every instance that sends to the same cluster with the same settings
/// shares one. librdkafka runs threads and connections per broker per producer, so one
/// producer per instance would cost a `serve` of 100,000 tenants that many times over.
/// A producer lives while a sink holds it.
static PRODUCERS: LazyLock<Mutex<HashMap<[u8; 32], Weak<Shared>>>> =
    LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Kafka sink's settings as its URL and secrets give them, checked, before any
/// producer is made (`serve --check` stops here; [`KafkaSettings::connect`] goes on).
pub struct KafkaSettings {
    /// `kafka://<brokers>?topic=…` without secrets, for logs.
    shown: String,
    topic: String,
    config: ClientConfig,
    /// The digest of `config`: its key in [`PRODUCERS`].
    key: [u8; 32],
    /// How long to wait for one send's delivery reports.
    report_wait: Duration,
}

pub struct KafkaSink {
    settings: KafkaSettings,
    producer: Arc<Shared>,
}

/// The delivery reports of one send, by the line's index: each record carries its send's
/// `Pending` as its opaque, so sends of many instances share a producer and still each
/// learn the fate of exactly its own lines.
struct Pending {
    reports: Mutex<Reported>,
    done: Condvar,
}

struct Reported {
    results: Vec<Option<Result<(), KafkaError>>>,
    /// Records handed to the producer whose report has not come.
    outstanding: usize,
}

impl Pending {
    fn new(lines: usize) -> Arc<Pending> {
        Arc::new(Pending {
            reports: Mutex::new(Reported {
                results: vec![None; lines],
                outstanding: 0,
            }),
            done: Condvar::new(),
        })
    }

    fn report(&self, index: usize, result: Result<(), KafkaError>) {
        let mut r = lock(&self.reports);
        if let Some(slot @ None) = r.results.get_mut(index) {
            *slot = Some(result);
            r.outstanding = r.outstanding.saturating_sub(1);
            if r.outstanding == 0 {
                self.done.notify_all();
            }
        }
    }
}

/// The producer's context: routes delivery reports to their send, and keeps the last
/// error librdkafka reported outside a delivery (e.g. a refused SASL login) with its time.
#[derive(Default)]
struct Reports {
    client_error: Mutex<Option<(Instant, KafkaError, String)>>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("kafka client: {error}: {reason}");
        *lock(&self.client_error) = Some((Instant::now(), error, reason.to_string()));
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<(Arc<Pending>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (pending, index) = *opaque;
        pending.report(index, result.as_ref().map(drop).map_err(|(e, _)| e.clone()));
    }
}

impl KafkaSettings {
    /// `rest`: the sink's URL after `kafka://`, `<brokers>[?<options>]`. Checks it;
    /// nothing connects until [`KafkaSettings::connect`].
    pub fn parse(rest: &str, secrets: &Secrets) -> Result<KafkaSettings, SinkError> {
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
            .set("client.id", "connector-host")
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
        // Each setting as librdkafka reads it, without connecting: a value it refuses
        // (`compression.type=bogus`) is named by `serve --check`, not at the start.
        config
            .create_native_config()
            .map_err(|e| config_error(refused(&e)))?;
        let timeout_ms: u64 = config
            .get("message.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000);
        let key = {
            let mut digest = Sha256::new();
            for (k, v) in config.config_map() {
                digest.update(format!("{k}\0{v}\0"));
            }
            digest.finalize().into()
        };
        Ok(KafkaSettings {
            shown,
            topic,
            config,
            key,
            report_wait: Duration::from_millis(timeout_ms) + Duration::from_secs(5),
        })
    }

    pub fn describe(&self) -> String {
        format!("kafka {}", self.shown)
    }

    /// The sink, with the process's producer for these settings (made now if there is
    /// none): a setting librdkafka refuses is a config error now, not a delivery failure
    /// later.
    pub fn connect(self) -> Result<KafkaSink, SinkError> {
        let producer = shared(&self)?;
        Ok(KafkaSink {
            settings: self,
            producer,
        })
    }
}

impl KafkaSink {
    pub fn describe(&self) -> String {
        self.settings.describe()
    }

    /// Produces up to [`LINES_PER_SEND`] lines and waits for their delivery reports;
    /// returns how many lines from the start the brokers acknowledged.
    /// `stop` raised: the wait ends at once, the lines not yet acknowledged count as not
    /// delivered (they are sent again later, and repeats are recognisable).
    pub fn send(&mut self, lines: &[(u64, String)], stop: &AtomicBool) -> Result<usize, SinkError> {
        let s = &self.settings;
        if self.producer.client().fatal_error().is_some() {
            // The producer failed fatally (in this send or another instance's): the
            // process's replacement takes over.
            self.producer = shared(s)?;
        }
        let lines = &lines[..lines.len().min(LINES_PER_SEND)];
        let started = Instant::now();
        let deadline = started + s.report_wait;
        let pending = Pending::new(lines.len());
        for (i, (seq, line)) in lines.iter().enumerate() {
            let record = Record::of(*seq, line);
            let topic = s.topic.replace("{kind}", &record.kind);
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
            let mut base = BaseRecord::with_opaque_to(&topic, Box::new((pending.clone(), i)))
                .key(record.key.as_str())
                .payload(line.as_str())
                .headers(headers);
            // Counted before the send: its report may come before `send` returns.
            lock(&pending.reports).outstanding += 1;
            let refused = loop {
                match self.producer.send(base) {
                    Ok(()) => break None,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        // The producer's thread drains the queue meanwhile.
                        base = back;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err((e, _)) => break Some(e),
                }
            };
            if let Some(e) = refused {
                // Refused before it was sent (e.g. the topic's ACL, known from metadata):
                // its report is this error, and the lines after it are not sent, so that
                // what is acknowledged stays a prefix. Those before it are in flight.
                tracing::debug!(sink = s.shown, "kafka producer refused a record: {e}");
                pending.report(i, Err(e));
                break;
            }
        }
        let results = {
            let mut r = lock(&pending.reports);
            // In slices, so that a stop (SIGTERM) need not wait out `message.timeout.ms`.
            while r.outstanding > 0 && !stop.load(Ordering::Relaxed) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                r = pending
                    .done
                    .wait_timeout(r, left.min(Duration::from_millis(100)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            r.results.clone()
        };
        let ok = results
            .iter()
            .take_while(|r| matches!(r, Some(Ok(()))))
            .count();
        if ok == lines.len() {
            return Ok(ok);
        }
        // Lines still in flight may yet arrive: the runner sends the lines after `ok` again
        // and consumers drop the repeats by (`instance`, `seq`).
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            // The next send (of any instance) makes a new one ([`shared`]).
            tracing::warn!(
                sink = s.shown,
                "kafka producer failed ({code:?}: {reason}); a new one takes over"
            );
        }
        if ok > 0 {
            return Ok(ok);
        }
        let client_error = lock(&self.producer.context().client_error)
            .as_ref()
            .filter(|(at, _, _)| *at >= started)
            .map(|(_, e, reason)| (e.clone(), reason.clone()));
        Err(classify(self.describe(), results[0].clone(), client_error))
    }
}

/// What librdkafka refused in the settings, without a password's value (its error
/// quotes the value it refused).
fn refused(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, why, key, value) => {
            let value = if super::names_secret(key) {
                "***"
            } else {
                value
            };
            format!("librdkafka refuses {key}={value}: {why}")
        }
        e => format!("librdkafka refuses the settings: {e}"),
    }
}

/// The process's producer for `settings`, made if there is none or the one there failed
/// fatally (an idempotent producer that lost its sequence takes no more records).
fn shared(settings: &KafkaSettings) -> Result<Arc<Shared>, SinkError> {
    let mut producers = lock(&PRODUCERS);
    if let Some(p) = producers.get(&settings.key).and_then(Weak::upgrade)
        && p.client().fatal_error().is_none()
    {
        return Ok(p);
    }
    let producer: Shared = settings
        .config
        .create_with_context(Reports::default())
        .map_err(|e| SinkError::Config {
            sink: settings.shown.clone(),
            message: refused(&e),
        })?;
    let producer = Arc::new(producer);
    producers.retain(|_, w| w.strong_count() > 0);
    producers.insert(settings.key, Arc::downgrade(&producer));
    Ok(producer)
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
            KafkaSettings::parse(u.strip_prefix("kafka://").unwrap(), &secrets)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err("kafka://127.0.0.1:9092?sasl.password=x").contains("sink-sasl-password"));
        assert!(err("kafka://127.0.0.1:9092?acks=1").contains("unknown option acks"));
        assert!(err("kafka://127.0.0.1:9092?topic=a%20b").contains("a topic name"));
        assert!(err("kafka://user:pw@127.0.0.1:9092").contains("give the brokers"));
        assert!(err("kafka://127.0.0.1").contains("give the brokers"));
        let bogus = err("kafka://127.0.0.1:9092?compression.type=bogus");
        assert!(
            bogus.contains("librdkafka refuses compression.type=bogus"),
            "{bogus}"
        );
    }
}
