//! `secops:connector/secrets`: the instance's configured secrets, by name.

use crate::bindings::secops::connector::secrets::Host;
use crate::imports::HostState;

impl Host for HostState {
    fn get(&mut self, name: String) -> Option<String> {
        let value = self.secrets.get(&name).map(str::to_string);
        if value.is_none() {
            tracing::debug!(instance = %self.instance, secret = %name, "secret not configured");
        }
        value
    }
}
