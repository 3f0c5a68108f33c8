//! The fault matrix: for each fault the Graph simulator can inject, the real component runs
//! through the host (`run --once`, again after a failed run, as a scheduler would) until it
//! has caught up, more records arrive, and it catches up again. Then `--out` must hold the
//! current version of every record exactly once and nothing the simulator never served.

mod support;

use std::path::Path;
use std::time::Duration;

use support::graph_sim::{Behaviour, Fault, GraphSim, Recorder};
use support::{Tenant, assert_exactly_once, assert_no_secrets, read_lines, text};

/// `run --once` at trace level (secret hygiene is checked on everything the host says).
fn run_once(tenant: &Tenant, extra: &[&str]) -> std::process::Output {
    let mut flags = vec!["--log-level", "trace"];
    flags.extend_from_slice(extra);
    tenant.run_once("defender-alerts", &flags)
}

/// Runs until a run succeeds, at most `tries` times; every run's output is checked for
/// the secret and the tokens.
fn catch_up(tenant: &Tenant, sim: &GraphSim, extra: &[&str], tries: usize) {
    let mut failures = vec![];
    for _ in 0..tries {
        let out = run_once(tenant, extra);
        assert_no_secrets("stderr", &out.stderr, sim);
        assert_no_secrets("stdout", &out.stdout, sim);
        if out.status.success() {
            return;
        }
        failures.push(text(&out.stderr));
    }
    panic!("never caught up: {failures:#?}");
}

fn matrix(fault: Fault, every: usize, extra: &[&str]) -> (GraphSim, Tenant) {
    let sim = GraphSim::start(Behaviour {
        page_max: 5,
        fault: Some((every, fault)),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 23, Duration::from_secs(20 * 3600));
    let tenant = Tenant::new(&sim);
    catch_up(&tenant, &sim, extra, 5);
    sim.update_alerts(&sim.ids()[..3]);
    sim.add_alerts("b", 6, Duration::from_secs(60));
    catch_up(&tenant, &sim, extra, 5);
    assert_exactly_once(Path::new(&tenant.path("out.jsonl")), &sim);
    assert!(sim.with_counters(|c| c.faults) > 0, "the fault happened");
    let out = std::fs::read(tenant.path("out.jsonl")).unwrap();
    assert_no_secrets("--out", &out, &sim);
    (sim, tenant)
}

#[test]
fn service_unavailable_with_retry_after() {
    matrix(
        Fault::Status {
            status: 503,
            retry_after: true,
        },
        3,
        &[],
    );
}

#[test]
fn gateway_timeout_without_retry_after_backs_off() {
    matrix(
        Fault::Status {
            status: 504,
            retry_after: false,
        },
        4,
        &[],
    );
}

#[test]
fn too_many_requests_without_retry_after_backs_off() {
    matrix(
        Fault::Status {
            status: 429,
            retry_after: false,
        },
        4,
        &[],
    );
}

#[test]
fn a_response_that_stalls_mid_body_is_retried_after_the_http_timeout() {
    matrix(Fault::StallMidBody, 4, &["--http-timeout-secs", "2"]);
}

#[test]
fn a_response_slower_than_the_http_timeout_is_retried() {
    matrix(
        Fault::Slow(Duration::from_secs(3)),
        4,
        &["--http-timeout-secs", "1"],
    );
}

#[test]
fn a_malformed_page_is_retried() {
    matrix(Fault::Malformed, 3, &[]);
}

#[test]
fn a_record_without_id_is_skipped_with_a_warning() {
    let (_sim, tenant) = matrix(Fault::MissingId, 2, &[]);
    let lines = read_lines(Path::new(&tenant.path("out.jsonl")));
    assert!(lines.iter().all(|l| !l["id"].as_str().unwrap().is_empty()));
}

#[test]
fn a_body_over_the_cap_fails_the_poll_clearly_and_a_higher_cap_catches_up() {
    let sim = GraphSim::start(Behaviour {
        fault: Some((1, Fault::Huge(2 << 20))),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 5, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let out = run_once(&tenant, &["--max-body-mb", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("larger than the host's cap of 1048576 bytes"),
        "{err}"
    );
    assert!(read_lines(Path::new(&tenant.path("out.jsonl"))).is_empty());
}

#[test]
fn late_records_inside_the_overlap_are_not_lost() {
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("a", 10, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    catch_up(&tenant, &sim, &[], 1);
    // Graph shows these only now, though their time is 5 minutes ago (inside the
    // 10-minute overlap of the next window).
    sim.add_late_alerts("late", 4, Duration::from_secs(300));
    catch_up(&tenant, &sim, &[], 1);
    assert_exactly_once(Path::new(&tenant.path("out.jsonl")), &sim);
}

#[test]
fn a_next_link_to_another_listener_is_never_followed_and_no_token_leaves() {
    let foreign = Recorder::start();
    let sim = GraphSim::start(Behaviour {
        page_max: 3,
        next_link_base: Some(foreign.base.clone()),
        ..Behaviour::default()
    });
    sim.add_alerts("a", 8, Duration::from_secs(3600));
    let tenant = Tenant::new(&sim);
    let out = run_once(&tenant, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("outside the configured Graph host"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        foreign.requests().is_empty(),
        "reached: {:?}",
        foreign.requests()
    );
    // The poll that met the link failed whole: nothing committed, the cursor kept.
    assert!(read_lines(Path::new(&tenant.path("out.jsonl"))).is_empty());
}
