//! A fleet: several `serve` processes share one instances directory, one PostgreSQL state
//! store (a throwaway server the tests start) and one shared `--out` directory, against
//! the Graph simulator. Each instance runs on one host at a time (leases with fencing
//! tokens); hosts split the instances fairly; `kill -9` of a host, repeated at random
//! moments, loses and repeats nothing; a host stopped past its lease commits nothing
//! after it continues; a PostgreSQL restart is survived; SIGTERM hands leases over at once.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::graph_sim::{Behaviour, GraphSim, SECRET};
use support::postgres::PgServer;
use support::{assert_exactly_once, host, text, write_json};

/// A loopback TCP proxy in front of the simulator (which answers one request at a time)
/// that can hold every response back for a while: then each host's polls are in flight
/// at once, and a host stopped now wakes up to finish polls whose leases it lost.
struct SlowProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
}

impl SlowProxy {
    fn start(upstream: std::net::SocketAddr) -> SlowProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let delay = delay.clone();
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match server.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let wait = delay.load(Ordering::Relaxed);
                        if wait > 0 {
                            std::thread::sleep(Duration::from_millis(wait));
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowProxy { port, delay_ms }
    }

    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Instances in each fleet test.
const INSTANCES: usize = 30;

struct Fleet {
    work: tempfile::TempDir,
    url: String,
    ttl_secs: u64,
    hosts: Vec<Option<Child>>,
    started: usize,
}

impl Fleet {
    /// 30 instances of one simulator's tenant in a directory, and a fresh database.
    fn new(sim: &GraphSim, server: &PgServer, database: &str, ttl_secs: u64) -> Fleet {
        Fleet::with_config(sim.config(1), server, database, ttl_secs)
    }

    /// The same, with the instances' connector config given.
    fn with_config(
        config: serde_json::Value,
        server: &PgServer,
        database: &str,
        ttl_secs: u64,
    ) -> Fleet {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("instances");
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        write_json(
            &dir.join("secrets/good.json"),
            &json!({"client-secret": SECRET}),
        );
        for i in 0..INSTANCES {
            write_json(
                &dir.join(format!("t{i:02}.json")),
                &json!({
                    "component": support::alerts_wasm(),
                    "config": config,
                    "secrets": "secrets/good.json",
                    "interval_secs": 1,
                }),
            );
        }
        Fleet {
            url: server.database(database),
            work,
            ttl_secs,
            hosts: Vec::new(),
            started: 0,
        }
    }

    fn out(&self) -> PathBuf {
        self.work.path().join("out")
    }

    fn log(&self, n: usize) -> PathBuf {
        self.work.path().join(format!("serve-{n}.log"))
    }

    /// Starts one more `serve` of the fleet; returns its index.
    fn start_host(&mut self) -> usize {
        let n = self.started;
        self.started += 1;
        let child = host(&[
            "serve",
            "--instances",
            &self.work.path().join("instances").display().to_string(),
            "--state",
            &self.url,
            "--out",
            &self.out().display().to_string(),
            "--lease-ttl",
            &self.ttl_secs.to_string(),
            // Enough for every instance to be in flight at once (the held-back responses).
            "--workers",
            "40",
            "--rescan-secs",
            "1",
            "--log-level",
            "debug",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(self.log(n)).unwrap())
        .spawn()
        .expect("start serve");
        self.hosts.push(Some(child));
        n
    }

    fn pid(&self, n: usize) -> u32 {
        self.hosts[n].as_ref().expect("running").id()
    }

    fn signal(&self, n: usize, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(n).to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal}");
    }

    /// `kill -9`, and waits for the process to be gone.
    fn kill(&mut self, n: usize) {
        self.signal(n, "KILL");
        let mut child = self.hosts[n].take().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and waits for a clean exit.
    fn terminate(&mut self, n: usize) {
        self.signal(n, "TERM");
        let mut child = self.hosts[n].take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "serve {n} exited with {status}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve {n} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leases as `status --json` shows them: instance -> pid of its owner.
    fn owners(&self) -> BTreeMap<String, u32> {
        let out = support::run_host(&["status", "--state", &self.url, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.iter()
            .filter_map(|r| {
                let pid = r["owner"]["pid"].as_u64()?;
                Some((r["instance"].as_str()?.to_string(), pid as u32))
            })
            .collect()
    }

    /// How many instances each running host holds, by host index.
    fn shares(&self) -> BTreeMap<usize, usize> {
        let owners = self.owners();
        let mut shares = BTreeMap::new();
        for (n, child) in self.hosts.iter().enumerate() {
            if let Some(c) = child {
                shares.insert(n, owners.values().filter(|p| **p == c.id()).count());
            }
        }
        shares
    }

    fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > timeout {
                let mut logs = String::new();
                for n in 0..self.started {
                    let log = std::fs::read_to_string(self.log(n)).unwrap_or_default();
                    // What the hosts said at info and above: the debug lines are polls.
                    let tail: Vec<&str> = log
                        .lines()
                        .rev()
                        .filter(|l| !l.contains(" DEBUG "))
                        .take(40)
                        .collect();
                    logs.push_str(&format!("--- serve {n} (last lines)\n"));
                    for line in tail.into_iter().rev() {
                        logs.push_str(line);
                        logs.push('\n');
                    }
                }
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether every instance's file holds every current version the simulator serves.
    fn caught_up(&self, sim: &GraphSim) -> bool {
        let latest = sim.latest();
        (0..INSTANCES).all(|i| {
            let file = self.out().join(format!("t{i:02}.jsonl"));
            let got: std::collections::BTreeSet<(String, String)> = std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|l| {
                    (
                        l["id"].as_str().unwrap_or_default().to_string(),
                        l["version"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            latest.is_subset(&got)
        })
    }

    /// Every instance's file: each version once, `seq` contiguous from 1.
    fn assert_exactly_once(&self, sim: &GraphSim) {
        for i in 0..INSTANCES {
            assert_exactly_once(&self.out().join(format!("t{i:02}.jsonl")), sim);
        }
    }

    fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self.hosts.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test keeps its logs, output and instances for a look.
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.work, tempfile::tempdir().unwrap()).keep();
            eprintln!("the fleet's files are kept in {}", kept.display());
        }
    }
}

#[test]
fn three_hosts_share_thirty_instances_and_twenty_kills_lose_and_repeat_nothing() {
    let server = PgServer::start();
    let sim = GraphSim::start(Behaviour::default());
    sim.add_alerts("start", 20, Duration::from_secs(3600));
    let mut fleet = Fleet::new(&sim, &server, "kills", 2);
    for _ in 0..3 {
        fleet.start_host();
    }
    fleet.wait_until(
        "the first backfills and a fair split",
        Duration::from_secs(60),
        || {
            let shares = fleet.shares();
            fleet.caught_up(&sim)
                && shares.values().sum::<usize>() == INSTANCES
                && shares.values().all(|s| *s <= INSTANCES.div_ceil(3))
        },
    );

    let mut random = support::Rng::seeded("FLEET_SEED", "kill schedule");
    for round in 0..20 {
        sim.add_alerts(&format!("r{round:02}"), 2, Duration::from_secs(5));
        // Some moment of some host's polls, deliveries or renewals.
        std::thread::sleep(Duration::from_millis(200 + random.below(800)));
        let running: Vec<usize> = (0..fleet.started)
            .filter(|n| fleet.hosts[*n].is_some())
            .collect();
        let victim = running[random.below(running.len() as u64) as usize];
        fleet.kill(victim);
        fleet.start_host();
    }
    fleet.wait_until(
        "every instance caught up after the kills",
        Duration::from_secs(60),
        || fleet.caught_up(&sim),
    );
    fleet.assert_exactly_once(&sim);
}

#[test]
fn a_stopped_host_is_fenced_a_database_restart_is_survived_and_sigterm_hands_over() {
    // Its own server: restarting it must not disturb the other test.
    let server = PgServer::start();
    // One page holds every alert: next links would bypass the proxy (and the connector
    // follows none to another address).
    let sim = GraphSim::start(Behaviour {
        page_max: 200,
        ..Behaviour::default()
    });
    sim.add_alerts("start", 20, Duration::from_secs(3600));
    let proxy = SlowProxy::start(sim.base.trim_start_matches("http://").parse().unwrap());
    let mut config = sim.config(1);
    let via = format!("http://127.0.0.1:{}", proxy.port);
    config["graph_url"] = json!(via);
    config["login_url"] = json!(via);
    let mut fleet = Fleet::with_config(config, &server, "failover", 2);
    let (a, b) = (fleet.start_host(), fleet.start_host());
    fleet.wait_until("a split of 15 and 15", Duration::from_secs(60), || {
        fleet.caught_up(&sim) && fleet.shares() == BTreeMap::from([(a, 15), (b, 15)])
    });

    // Responses are held back 4 s, new alerts arrive, and A is stopped (SIGSTOP) with
    // its polls in flight, past its 2 s leases: B takes A's instances over and delivers
    // the new alerts...
    proxy.set_delay(Duration::from_secs(4));
    sim.add_alerts("while-stopped", 3, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    fleet.signal(a, "STOP");
    fleet.wait_until("B holding all 30", Duration::from_secs(30), || {
        fleet.shares().get(&b) == Some(&INSTANCES)
    });
    proxy.set_delay(Duration::ZERO);
    fleet.wait_until(
        "B delivering the new alerts",
        Duration::from_secs(30),
        || fleet.caught_up(&sim),
    );
    // ...and A, continued, finishes those polls, holding the same alerts, and may commit
    // and write none of them: its leases are gone.
    fleet.signal(a, "CONT");
    // (The connector's own overlap check, reading B's KV, would drop those alerts too:
    // the commits that carry them must be refused by the lease check, which says so.)
    fleet.wait_until(
        "A's in-flight commits refused",
        Duration::from_secs(10),
        || fleet.log_text(a).contains("no longer holds the lease"),
    );
    fleet.assert_exactly_once(&sim);
    sim.add_alerts("after-stop", 3, Duration::from_secs(5));
    fleet.wait_until("caught up after the stop", Duration::from_secs(30), || {
        fleet.caught_up(&sim)
    });
    fleet.assert_exactly_once(&sim);

    // PostgreSQL goes away for a moment: the hosts reconnect and lose nothing.
    server.restart(Duration::from_millis(1500));
    sim.add_alerts("after-restart", 3, Duration::from_secs(5));
    fleet.wait_until(
        "caught up after the database restart",
        Duration::from_secs(60),
        || fleet.caught_up(&sim),
    );
    fleet.assert_exactly_once(&sim);
    fleet.wait_until("both hosts serving again", Duration::from_secs(30), || {
        let shares = fleet.shares();
        shares.values().sum::<usize>() == INSTANCES && shares.values().all(|s| *s > 0)
    });

    // SIGTERM: A's instances are B's well within one lease TTL (they are released, not
    // left to expire). A long TTL here makes the difference plain.
    let c = {
        fleet.terminate(a);
        fleet.terminate(b);
        let mut fleet_ttl = fleet;
        fleet_ttl.ttl_secs = 30;
        let c = fleet_ttl.start_host();
        let d = fleet_ttl.start_host();
        fleet_ttl.wait_until(
            "a split of the restarted hosts",
            Duration::from_secs(60),
            || {
                let shares = fleet_ttl.shares();
                shares.get(&c) == Some(&15) && shares.get(&d) == Some(&15)
            },
        );
        let c_pid = fleet_ttl.pid(c);
        let stopped = Instant::now();
        fleet_ttl.terminate(c);
        // Released, not left to run out (nor to be found dead: this is one machine).
        let kept: Vec<String> = fleet_ttl
            .owners()
            .into_iter()
            .filter(|(_, pid)| *pid == c_pid)
            .map(|(instance, _)| instance)
            .collect();
        assert!(kept.is_empty(), "leases kept after SIGTERM: {kept:?}");
        fleet_ttl.wait_until("D holding all 30", Duration::from_secs(25), || {
            fleet_ttl.shares().get(&d) == Some(&INSTANCES)
        });
        let handover = stopped.elapsed();
        assert!(
            handover < Duration::from_secs(25),
            "the handover took {handover:?} with a 30 s lease"
        );
        sim.add_alerts("after-term", 3, Duration::from_secs(5));
        fleet_ttl.wait_until(
            "caught up after the handover",
            Duration::from_secs(30),
            || fleet_ttl.caught_up(&sim),
        );
        fleet_ttl.assert_exactly_once(&sim);
        let log = fleet_ttl.log_text(c);
        assert!(!log.contains(SECRET), "the client secret appears in a log");
        fleet_ttl
    };
    drop(c);
}

#[test]
fn status_names_the_owner_and_never_the_password() {
    let server = PgServer::start();
    let url = server.database("status");
    // A password in the URL (the server trusts any): it must not show anywhere.
    let with_password = url.replace("postgres@", "postgres:hunter2-pw@");
    let out = support::run_host(&["status", "--state", &with_password]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = support::run_host(&[
        "forget",
        "--state",
        &with_password,
        "--instance",
        "nope",
        "--yes",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("postgres:***@") && !stderr.contains("hunter2-pw"),
        "{stderr}"
    );
}
