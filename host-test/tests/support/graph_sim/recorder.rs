//! A second loopback listener that records what reaches it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the recorder saw it: target and headers.
pub type Recorded = (String, Vec<(String, String)>);

/// A second loopback listener that answers 200 to anything and records what it got:
/// the target of a foreign next link, to prove that nothing (and no token) reaches it.
pub struct Recorder {
    pub base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    pub fn start() -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind loopback");
        let base = format!(
            "http://{}",
            server.server_addr().to_ip().expect("ip listener")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(r)) = server.recv_timeout(Duration::from_millis(50)) {
                        let headers = r
                            .headers()
                            .iter()
                            .map(|h| (h.field.to_string(), h.value.to_string()))
                            .collect();
                        requests
                            .lock()
                            .unwrap()
                            .push((r.url().to_string(), headers));
                        let _ = r.respond(tiny_http::Response::from_string("{\"value\":[]}"));
                    }
                }
            })
        };
        Recorder {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// What reached this listener: (target, headers).
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
