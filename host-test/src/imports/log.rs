//! `secops:connector/log`: the component's log lines, into the host's tracing log (stderr),
//! tagged with the instance and with known secrets and tokens masked.

use crate::bindings::secops::connector::log::{Host, Level};
use crate::imports::HostState;

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let message = self.redactor.redact(&message);
        let instance = self.instance.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "component", instance, "{message}"),
            Level::Debug => tracing::debug!(target: "component", instance, "{message}"),
            Level::Info => tracing::info!(target: "component", instance, "{message}"),
            Level::Warn => tracing::warn!(target: "component", instance, "{message}"),
            Level::Error => tracing::error!(target: "component", instance, "{message}"),
        }
    }
}
