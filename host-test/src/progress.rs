//! `run`'s progress line while a backfill or backlog is caught up: on a terminal only, so
//! logs sent to a file or a pipe stay plain lines.
//!
//! Log lines and the progress line share stderr: the log writer ([`LogWriter`]) hides the
//! progress line while it writes, so neither garbles the other.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress line being shown, if any (the log writer must know it).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Counts a catch-up and shows it while it lasts.
pub struct Progress {
    events: u64,
    polls: u64,
}

impl Progress {
    /// A progress display when stderr is a terminal; `None` otherwise.
    pub fn on_terminal() -> Option<Self> {
        std::io::stderr().is_terminal().then_some(Progress {
            events: 0,
            polls: 0,
        })
    }

    /// After each committed poll: `more` means the component has a backlog to page through.
    pub fn polled(&mut self, events: usize, more: bool, newest_event: Option<&str>) {
        let mut shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner());
        if !more {
            let finished = shown.take();
            // Logging takes the lock too.
            drop(shown);
            if let Some(bar) = finished {
                bar.finish_and_clear();
                tracing::info!(
                    events = self.events + events as u64,
                    polls = self.polls + 1,
                    "caught up"
                );
            }
            self.events = 0;
            self.polls = 0;
            return;
        }
        self.events += events as u64;
        self.polls += 1;
        let bar = shown.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(format!(
            "catching up: {} events in {} polls{}",
            self.events,
            self.polls,
            newest_event
                .map(|t| format!(", newest event {t}"))
                .unwrap_or_default()
        ));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = SHOWN.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// stderr for log lines, with the progress line hidden while one is written.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match shown {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
