//! `connector-host status`: every instance of a state file with its state (running,
//! stopped, refused, removed), health, undelivered events, next poll and owner. The table
//! fits 120 columns (a failing instance's error goes on a second line, shortened); `--json`
//! has every field in full. The file is opened read-only: `status` never changes it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cli::Failure;
use crate::holder::{Holder, live_holders};
use crate::state::{Degraded, HealthRow, StateDb};

/// The widest line `status` prints.
pub const WIDTH: usize = 120;

#[derive(Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    /// `running` (a live process holds it), `refused` (its file or config was refused),
    /// `removed` (its `serve` file is gone) or `stopped`.
    pub state: &'static str,
    pub connector: String,
    pub last_poll: Option<String>,
    pub last_success: Option<String>,
    pub newest_event: Option<String>,
    pub events: u64,
    pub requests: u64,
    pub throttled: u64,
    pub waited_secs: u64,
    pub failures: u64,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    /// Events committed but not yet written to the output.
    pub undelivered: u64,
    pub next_poll: Option<String>,
    pub owner: Option<Holder>,
    pub removed: Option<String>,
    /// Data types not reading normally, as the last committed poll reported them.
    pub degraded: Vec<Degraded>,
}

/// Every instance of the state file, by name.
pub fn read(db: &mut StateDb) -> Result<Vec<InstanceStatus>, crate::state::StateError> {
    // An empty file, or one a first writer is creating this moment: no instances yet.
    if let StateDb::Sqlite(file) = db {
        let created = crate::holder::has_table(file, "instances").map_err(|cause| {
            crate::state::StateError::Sql {
                path: file.path().to_path_buf(),
                cause,
            }
        })?;
        if !created {
            return Ok(Vec::new());
        }
    }
    let mut holders = live_holders(db)?;
    let removed = crate::lifecycle::removed(db)?;
    let undelivered = crate::lifecycle::undelivered_counts(db)?;
    Ok(db
        .health()?
        .into_iter()
        .map(|r| from_row(r, &mut holders, &removed, &undelivered))
        .collect())
}

fn from_row(
    r: HealthRow,
    holders: &mut BTreeMap<String, Holder>,
    removed: &BTreeMap<String, String>,
    undelivered: &BTreeMap<String, u64>,
) -> InstanceStatus {
    let owner = holders.remove(&r.instance);
    let removed = removed.get(&r.instance).cloned();
    let refused = r.failures > 0
        && matches!(
            r.last_error_code.as_deref(),
            Some("config" | "instance-file")
        );
    let state = if removed.is_some() {
        "removed"
    } else if owner.is_some() {
        "running"
    } else if refused {
        "refused"
    } else {
        "stopped"
    };
    let failing = r.failures > 0;
    InstanceStatus {
        state,
        undelivered: undelivered.get(&r.instance).copied().unwrap_or(0),
        next_poll: owner.as_ref().and_then(|h| h.next_poll.clone()),
        owner,
        removed,
        instance: r.instance,
        connector: r.connector,
        last_poll: r.last_poll,
        last_success: r.last_success,
        newest_event: r.newest_event,
        events: r.events,
        requests: r.requests,
        throttled: r.throttled,
        waited_secs: r.waited_secs,
        failures: r.failures,
        last_error_code: r.last_error_code.filter(|_| failing),
        last_error: r.last_error.filter(|_| failing),
        degraded: r.degraded,
    }
}

/// Prints the table (or `--json`). A closed pipe (`status | head -1`) ends it quietly.
pub(crate) fn print(path: &Path, json: bool) -> Result<(), Failure> {
    if !crate::state::is_postgres_url(path) && !path.exists() {
        return Err(Failure::usage(format!(
            "no state file at {}",
            path.display()
        )));
    }
    let rows = StateDb::open_for_reading(path)
        .and_then(|mut db| read(&mut db))
        .map_err(Failure::usage)?;
    let text = if json {
        serde_json::to_string_pretty(&rows).expect("status serializes") + "\n"
    } else {
        table(&rows, SystemTime::now())
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure(1, format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// The table at `now`: one line per instance, and a second, indented one with the error
/// of a failing instance.
pub fn table(rows: &[InstanceStatus], now: SystemTime) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<18} {:>9} {:>8} {:>9} {:>7} {:>5} {:>9} OWNER\n",
        "INSTANCE",
        "STATE",
        "CONNECTOR",
        "LAST OK",
        "LAG",
        "EVENTS",
        "UNDELIV",
        "FAILS",
        "NEXT POLL"
    );
    let ago = |t: &Option<String>| {
        parse(t)
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| format!("{} ago", compact(d)))
            .unwrap_or_else(|| "never".into())
    };
    let lag = |t: &Option<String>| {
        parse(t)
            .and_then(|t| now.duration_since(t).ok())
            .map(compact)
            .unwrap_or_else(|| "-".into())
    };
    for r in rows {
        let next = match parse(&r.next_poll) {
            Some(t) => match t.duration_since(now) {
                Ok(d) => format!("in {}", compact(d)),
                Err(_) => "now".into(),
            },
            None => "-".into(),
        };
        let owner = r
            .owner
            .as_ref()
            .map(|h| format!("{}@{}", h.pid, h.host))
            .unwrap_or_else(|| "-".into());
        let line = format!(
            "{:<20} {:<8} {:<18} {:>9} {:>8} {:>9} {:>7} {:>5} {:>9} {}",
            r.instance,
            r.state,
            r.connector,
            ago(&r.last_success),
            lag(&r.newest_event),
            r.events,
            r.undelivered,
            r.failures,
            next,
            owner
        );
        out.push_str(&fit(&line));
        out.push('\n');
        if r.failures > 0 {
            let error = match (&r.last_error_code, &r.last_error) {
                (Some(code), Some(m)) => format!("[{code}] {m}"),
                (_, m) => m.clone().unwrap_or_default(),
            };
            // One line whatever the error holds; `--json` has it in full.
            let error = error.split_whitespace().collect::<Vec<_>>().join(" ");
            out.push_str(&fit(&format!("    {error}")));
            out.push('\n');
        }
        if !r.degraded.is_empty() {
            out.push_str(&fit(&format!(
                "    degraded: {}",
                degraded_summary(&r.degraded)
            )));
            out.push('\n');
        }
    }
    out
}

/// `risk_detections throttled (429 …), incidents fallback (…)`, on one line.
fn degraded_summary(degraded: &[Degraded]) -> String {
    degraded
        .iter()
        .map(|d| {
            let message = d.message.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{} {} ({message})", d.data_type, d.code)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse(t: &Option<String>) -> Option<SystemTime> {
    t.as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

/// `line` cut to [`WIDTH`] characters, ending in `…` where it was cut.
fn fit(line: &str) -> String {
    let line = line.trim_end();
    if line.chars().count() <= WIDTH {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// A duration in its two largest units: `42s`, `5m12s`, `3h4m`, `2d5h`.
fn compact(d: Duration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match () {
        _ if d_ > 0 => format!("{d_}d{h}h"),
        _ if h > 0 => format!("{h}h{m}m"),
        _ if m > 0 => format!("{m}m{sec}s"),
        _ => format!("{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, error: Option<&str>) -> InstanceStatus {
        InstanceStatus {
            instance: instance.into(),
            state: "running",
            connector: "defender-incidents".into(),
            last_poll: None,
            last_success: Some("2026-12-01T03:59:00Z".into()),
            newest_event: Some("2026-12-01T03:00:00Z".into()),
            events: 1_234_567,
            requests: 10,
            throttled: 0,
            waited_secs: 0,
            failures: error.map_or(0, |_| 12),
            last_error_code: error.map(|_| "auth".into()),
            last_error: error.map(Into::into),
            undelivered: 3,
            degraded: Vec::new(),
            next_poll: Some("2026-12-01T04:05:00Z".into()),
            owner: None,
            removed: None,
        }
    }

    #[test]
    fn the_table_fits_120_columns_with_long_names_and_errors() {
        let now = humantime::parse_rfc3339("2026-12-01T04:00:00Z").unwrap();
        let long = "x".repeat(400);
        let text = table(
            &[
                row("a-tenant-with-a-rather-long-instance-name", Some(&long)),
                row("ok", None),
            ],
            now,
        );
        for line in text.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{} wide: {line}",
                line.chars().count()
            );
        }
        assert!(text.contains("    [auth] xxx"), "{text}");
        assert!(
            text.contains("1m0s ago") && text.contains("in 5m0s"),
            "{text}"
        );
    }

    #[test]
    fn durations_are_compact() {
        for (secs, text) in [
            (42, "42s"),
            (312, "5m12s"),
            (11_040, "3h4m"),
            (190_800, "2d5h"),
        ] {
            assert_eq!(compact(Duration::from_secs(secs)), text);
        }
    }
}
