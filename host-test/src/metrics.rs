//! Instance health as Prometheus (OpenMetrics) text, served on a loopback address by
//! `connector-host serve --metrics 127.0.0.1:PORT` (another address only with
//! `--metrics-public`), beside `/healthz` (the process answers) and `/readyz` (the
//! instances directory was loaded and the state file is writable).
//!
//! The figures are the health records of the state file, the same ones `connector-host
//! status` prints, read at each scrape: what a scrape shows survives restarts and agrees
//! with `status`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::{HealthRow, StateDb};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    instance: String,
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    instance: String,
    connector: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedLabels {
    instance: String,
    connector: String,
    data_type: String,
    code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "--metrics {0}: metrics are served on a loopback address only (127.0.0.1 or ::1); \
         put a reverse proxy in front to expose them, or add --metrics-public to serve them \
         on this address to anyone who can reach it (instance names and error codes, no \
         secrets)"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr} for metrics: {cause}")]
    Listen { addr: SocketAddr, cause: String },
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The exposition of `rows` at `now`.
pub fn render(rows: &[HealthRow], now: SystemTime) -> String {
    render_with(rows, &Default::default(), now)
}

/// [`render`] with each instance's count of committed but undelivered events.
pub fn render_with(
    rows: &[HealthRow],
    undelivered: &std::collections::BTreeMap<String, u64>,
    now: SystemTime,
) -> String {
    render_all(rows, undelivered, &Default::default(), now)
}

/// [`render_with`] and each instance's count of failed deliveries to its sink.
pub fn render_all(
    rows: &[HealthRow],
    undelivered: &std::collections::BTreeMap<String, u64>,
    sink_errors: &std::collections::BTreeMap<String, u64>,
    now: SystemTime,
) -> String {
    let mut registry = Registry::default();
    let mut gauge = |name: &str, help: &str| {
        let family = Family::<Labels, FloatGauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let up = gauge(
        "connector_up",
        "1 when the instance's last poll succeeded, 0 when it is failing",
    );
    let last_success = gauge(
        "connector_last_success_timestamp_seconds",
        "Unix time of the last successful poll",
    );
    let lag = gauge(
        "connector_lag_seconds",
        "Now minus the time of the newest event the instance has emitted",
    );
    let failures = gauge(
        "connector_consecutive_failures",
        "Failed polls since the last successful one",
    );
    let waiting = gauge(
        "connector_undelivered_events",
        "Events committed to the state file but not yet written to the output",
    );
    let sink_lag = gauge(
        "connector_sink_lag_events",
        "Events committed but not yet acknowledged by the sink (file, webhook or Kafka)",
    );
    let mut counter = |name: &str, help: &str| {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        registry.register(name, help, family.clone());
        family
    };
    let events = counter("connector_events", "Events emitted");
    let sink_errors_total = counter(
        "connector_sink_errors",
        "Deliveries to the sink that failed (the events stay in the state file)",
    );
    let calls = counter(
        "connector_graph_calls",
        "HTTP calls to Graph and the login host",
    );
    let throttled = counter(
        "connector_throttled_responses",
        "Graph responses that were 429 Too Many Requests",
    );
    let waited = counter(
        "connector_api_wait_seconds",
        "Time spent waiting on the API: Retry-After, backoff, a spent call budget",
    );
    let last_error = Family::<ErrorLabels, FloatGauge>::default();
    registry.register(
        "connector_last_error",
        "1 for a failing instance, labelled with the code of its last error",
        last_error.clone(),
    );
    let degraded = Family::<DegradedLabels, FloatGauge>::default();
    registry.register(
        "connector_degraded",
        "1 per data type the last committed poll reported as not reading normally, \
         labelled with how (throttled, transient, failing, fallback)",
        degraded.clone(),
    );

    let unix = |t: &str| {
        humantime::parse_rfc3339_weak(t)
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    for r in rows {
        let l = Labels {
            instance: r.instance.clone(),
            connector: r.connector.clone(),
        };
        up.get_or_create(&l)
            .set(if r.failures == 0 { 1.0 } else { 0.0 });
        failures.get_or_create(&l).set(r.failures as f64);
        let behind = undelivered.get(&r.instance).copied().unwrap_or(0) as f64;
        waiting.get_or_create(&l).set(behind);
        sink_lag.get_or_create(&l).set(behind);
        sink_errors_total
            .get_or_create(&l)
            .inc_by(sink_errors.get(&r.instance).copied().unwrap_or(0) as f64);
        if let Some(t) = r.last_success.as_deref().and_then(unix) {
            last_success.get_or_create(&l).set(t);
        }
        if let Some(newest) = r.newest_event.as_deref().and_then(unix) {
            let now = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            lag.get_or_create(&l).set((now - newest).max(0.0));
        }
        events.get_or_create(&l).inc_by(r.events as f64);
        calls.get_or_create(&l).inc_by(r.requests as f64);
        throttled.get_or_create(&l).inc_by(r.throttled as f64);
        waited.get_or_create(&l).inc_by(r.waited_secs as f64);
        if r.failures > 0 {
            let code = r.last_error_code.clone().unwrap_or_else(|| "error".into());
            last_error
                .get_or_create(&ErrorLabels {
                    instance: r.instance.clone(),
                    connector: r.connector.clone(),
                    code,
                })
                .set(1.0);
        }
        for d in &r.degraded {
            degraded
                .get_or_create(&DegradedLabels {
                    instance: r.instance.clone(),
                    connector: r.connector.clone(),
                    data_type: d.data_type.clone(),
                    code: d.code.clone(),
                })
                .set(1.0);
        }
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("formatting into a String does not fail");
    text
}

/// The figures of every instance not removed (a removed instance leaves the metrics,
/// `connector_up` included, while `status` still shows it until it is forgotten).
fn scrape(db: &mut StateDb) -> Result<String, crate::state::StateError> {
    let removed = crate::lifecycle::removed(db)?;
    let rows: Vec<HealthRow> = db
        .health()?
        .into_iter()
        .filter(|r| !removed.contains_key(&r.instance))
        .collect();
    let undelivered = crate::lifecycle::undelivered_counts(db)?;
    let sink_errors = db.sink_errors()?;
    Ok(render_all(
        &rows,
        &undelivered,
        &sink_errors,
        SystemTime::now(),
    ))
}

/// `/readyz`: the instances were loaded (`loaded`) and the state file can be written.
fn readiness(db: &mut StateDb, loaded: bool) -> Result<(), String> {
    if !loaded {
        return Err("the instances directory has not been loaded yet".into());
    }
    if let Some(pg) = db.postgres() {
        // A store that answers: the health records (a read) come back.
        return pg.health().map(drop).map_err(|e| e.to_string());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(db.path())
        .map(drop)
        .map_err(|e| {
            format!(
                "the state file {} is not writable: {e}",
                db.path().display()
            )
        })
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `addr` until `stop` is raised. A
/// non-loopback address needs `public`.
pub fn spawn(
    addr: SocketAddr,
    public: bool,
    state: Arc<Mutex<StateDb>>,
    loaded: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, MetricsError> {
    if !addr.ip().is_loopback() && !public {
        return Err(MetricsError::NotLoopback(addr));
    }
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics served to anyone who can reach {addr} (--metrics-public)");
    }
    let server = tiny_http::Server::http(addr).map_err(|cause| MetricsError::Listen {
        addr,
        cause: cause.to_string(),
    })?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let db = || state.lock().unwrap_or_else(|p| p.into_inner());
                let response = match request.url() {
                    "/metrics" => match scrape(&mut db()) {
                        Ok(text) => {
                            tiny_http::Response::from_string(text).with_header(content_type(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ))
                        }
                        Err(e) => {
                            tiny_http::Response::from_string(format!("{e}\n")).with_status_code(500)
                        }
                    },
                    "/healthz" => tiny_http::Response::from_string("ok\n"),
                    "/readyz" => match readiness(&mut db(), loaded.load(Ordering::Relaxed)) {
                        Ok(()) => tiny_http::Response::from_string("ready\n"),
                        Err(why) => tiny_http::Response::from_string(format!("not ready: {why}\n"))
                            .with_status_code(503),
                    },
                    _ => tiny_http::Response::from_string("see /metrics, /healthz, /readyz\n")
                        .with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!("metrics response not sent: {e}");
                }
            }
        })
        .map_err(|e| MetricsError::Listen {
            addr,
            cause: e.to_string(),
        })?;
    Ok(thread)
}

fn content_type(value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes("Content-Type", value).expect("a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, failures: u64, code: Option<&str>) -> HealthRow {
        HealthRow {
            instance: instance.into(),
            connector: "defender-alerts".into(),
            last_poll: Some("2026-11-20T12:00:00Z".into()),
            last_success: Some("2026-11-20T12:00:00Z".into()),
            newest_event: Some("2026-11-20T11:59:00.000Z".into()),
            events: 42,
            requests: 7,
            throttled: 2,
            waited_secs: 30,
            failures,
            last_error: code.map(|_| "secret-free message".into()),
            last_error_code: code.map(Into::into),
            degraded: Vec::new(),
        }
    }

    #[test]
    fn health_becomes_labelled_series() {
        let now = humantime::parse_rfc3339("2026-11-20T12:01:00Z").unwrap();
        let text = render(
            &[
                row("ok-tenant", 0, None),
                row("bad-tenant", 3, Some("auth")),
            ],
            now,
        );
        for line in [
            r#"connector_up{instance="ok-tenant",connector="defender-alerts"} 1.0"#,
            r#"connector_up{instance="bad-tenant",connector="defender-alerts"} 0.0"#,
            r#"connector_events_total{instance="ok-tenant",connector="defender-alerts"} 42.0"#,
            r#"connector_lag_seconds{instance="ok-tenant",connector="defender-alerts"} 120.0"#,
            r#"connector_consecutive_failures{instance="bad-tenant",connector="defender-alerts"} 3.0"#,
            r#"connector_last_error{instance="bad-tenant",connector="defender-alerts",code="auth"} 1.0"#,
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"connector_last_error{instance="ok-tenant""#));
        let waiting = render_with(
            &[row("stuck", 1, Some("delivery"))],
            &[("stuck".to_string(), 17)].into(),
            now,
        );
        assert!(
            waiting.contains(
                r#"connector_undelivered_events{instance="stuck",connector="defender-alerts"} 17.0"#
            ),
            "{waiting}"
        );
        assert!(!text.contains("secret-free message"), "messages stay out");
    }

    #[test]
    fn each_degraded_type_is_a_series_and_its_message_stays_out() {
        let now = humantime::parse_rfc3339("2026-11-20T12:01:00Z").unwrap();
        let mut entra = row("entra-tenant", 0, None);
        entra.connector = "entra".into();
        entra.degraded = vec![crate::state::Degraded {
            data_type: "risk_detections".into(),
            code: "throttled".into(),
            message: "429 without a wait hint".into(),
        }];
        let text = render(&[entra, row("ok-tenant", 0, None)], now);
        let line = r#"connector_degraded{instance="entra-tenant",connector="entra",data_type="risk_detections",code="throttled"} 1.0"#;
        assert!(text.contains(line), "{line} missing from\n{text}");
        assert!(!text.contains(r#"connector_degraded{instance="ok-tenant""#));
        assert!(!text.contains("wait hint"), "messages stay out");
    }
}
