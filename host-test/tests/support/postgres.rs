//! A throwaway PostgreSQL server for tests: Debian's `initdb` and `pg_ctl` on a data
//! directory in a temp dir, listening on a free loopback port and a unix socket in that
//! temp dir, stopped when the handle drops.
//!
//! `initdb` refuses to run as root, so as root the server runs as the `postgres` user
//! (`runuser -u postgres --`), in a temp dir that user may write. A test run killed before
//! the drop would leave the server running: a watchdog shell started with it stops the
//! server once the test process is gone (it polls the parent's pid every second).
//!
//! Used by the unit tests (`#[path]`-included) and the integration tests alike.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgServer {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

/// Where Debian installs the server binaries (`/usr/lib/postgresql/<major>/bin`), newest
/// major first; else whatever `pg_ctl` on the PATH belongs to.
fn bin_dir() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    if let Some((_, bin)) = majors.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    /// Starts a server; panics with the cause (a missing package names the fix).
    pub fn start() -> PgServer {
        let bin = bin_dir().expect(
            "PostgreSQL's initdb/pg_ctl not found: install Debian's postgresql package \
             (.ci/run does: apt-get install postgresql)",
        );
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "connector-host-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let server = PgServer {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--locale=C",
                "--encoding=UTF8",
            ],
        );
        // Test settings: no fsync (a throwaway server), few connections' worth of memory.
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             max_connections = 100\nshared_buffers = 16MB\n",
            server.port,
            server.dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        server.pg_ctl_start();
        server.watchdog();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let data = self.data();
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// A shell that stops the server once this test process is gone (killed, say).
    fn watchdog(&self) {
        let stop = format!(
            "{} -D {} -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null && [ -d {dir} ]; do sleep 1; done; \
             [ -f {dir}/data/postmaster.pid ] && {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display(),
        );
        // In the background of a shell that exits at once (so the watchdog is no child of
        // the test process to reap), in its own session (a Ctrl-C to the test's process
        // group does not stop it first). The script holds no single quote.
        assert!(!script.contains('\''));
        let status = Command::new("sh")
            .args([
                "-c",
                &format!("setsid sh -c '{script}' </dev/null >/dev/null 2>&1 &"),
            ])
            .stdin(Stdio::null())
            .status()
            .expect("cannot start the PostgreSQL watchdog");
        assert!(status.success(), "the PostgreSQL watchdog did not start");
    }

    /// The URL of a new, empty database on this server (one per test keeps tests apart).
    pub fn database(&self, name: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ],
        );
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast: connections are cut) and starts it again on the same port.
    pub fn restart(&self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.pg_ctl_start();
    }

    fn stop(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port free now (the server binds it a moment later).
fn free_port() -> u16 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if port > 1024 || Instant::now() > deadline {
            return port;
        }
    }
}
