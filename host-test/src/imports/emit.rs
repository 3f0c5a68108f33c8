//! `secops:connector/emit`: events streamed during a poll, committed with its batch.

use crate::bindings::Event;
use crate::bindings::secops::connector::emit::Host;
use crate::imports::HostState;

impl Host for HostState {
    fn events(&mut self, events: Vec<Event>) {
        self.emitted.extend(events);
    }
}

impl crate::bindings::secops::connector::types::Host for HostState {}
