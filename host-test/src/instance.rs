//! One live component instance: its store (state, limits) and the four calls into it.
//! A trap (deadline, memory cap, a panic in the component) leaves the instance unusable;
//! the caller makes a fresh one, and nothing of the failed call was committed.

use std::time::Instant;

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{Batch, ConfigError, Event, Metadata, PollError, ValidationError};
use crate::engine::{Limits, LoadedComponent, TICK};
use crate::imports::{HostState, Wiring};
use crate::state::KvWrites;
use crate::wit::Connector;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {instance}: cannot instantiate {component}: {cause:#}")]
    Instantiate {
        instance: String,
        component: String,
        cause: wasmtime::Error,
    },
    #[error(
        "instance {instance}: `{call}` ran past its deadline of {secs} s of execution and was stopped \
         (raise --deadline-secs if the component legitimately needs longer)"
    )]
    Deadline {
        instance: String,
        call: &'static str,
        secs: u64,
    },
    #[error(
        "instance {instance}: `{call}` exceeded the memory limit of {mib} MiB and was stopped \
         (raise --memory-mb if the pages are legitimately that large)"
    )]
    Memory {
        instance: String,
        call: &'static str,
        mib: usize,
    },
    #[error("instance {instance}: `{call}` trapped: {message}")]
    Trap {
        instance: String,
        call: &'static str,
        message: String,
    },
}

/// What a poll produced: the component's answer plus what it staged through imports.
pub struct PollResult {
    pub outcome: Result<Batch, PollError>,
    /// Events sent through `emit` during the poll (before the batch's own).
    pub emitted: Vec<Event>,
    pub kv: KvWrites,
    /// HTTP requests made during the poll.
    pub requests: u64,
    /// Of those, responses that were 429.
    pub throttled: u64,
}

pub struct Instance {
    store: Store<HostState>,
    /// The component, through the bindings of its WIT version.
    world: Connector,
    limits: Limits,
}

impl Instance {
    pub fn new(
        component: &LoadedComponent,
        wiring: Wiring,
        limits: &Limits,
    ) -> Result<Self, InstanceError> {
        let instance = wiring.instance.clone();
        let mut store = Store::new(&component.engine, HostState::new(wiring));
        store.limiter(|s| &mut s.limiter);
        let deadline = limits.deadline;
        let ticks = ticks(deadline);
        store.set_epoch_deadline(ticks);
        // Called each time the epoch deadline passes: host calls (HTTP) do not count
        // against the component's execution time, so extend by what is left of it.
        store.epoch_deadline_callback(move |ctx| {
            let s = ctx.data();
            let ran = s.call_started.elapsed().saturating_sub(s.host_time);
            if ran >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(ticks_at_least_one(deadline - ran)))
            }
        });
        let world =
            component
                .pre
                .instantiate(&mut store)
                .map_err(|cause| InstanceError::Instantiate {
                    instance: instance.clone(),
                    component: component.path.display().to_string(),
                    cause,
                })?;
        Ok(Instance {
            store,
            world,
            limits: limits.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.store.data().instance
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&Connector, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, InstanceError> {
        {
            let s = self.store.data_mut();
            s.call_started = Instant::now();
            s.host_time = Default::default();
            s.emitted.clear();
            s.kv.staged.clear();
        }
        self.store.set_epoch_deadline(ticks(self.limits.deadline));
        f(&self.world, &mut self.store).map_err(|e| {
            let instance = self.name().to_string();
            if self.store.data().limiter.hit {
                InstanceError::Memory {
                    instance,
                    call,
                    mib: self.limits.memory_bytes >> 20,
                }
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                InstanceError::Deadline {
                    instance,
                    call,
                    secs: self.limits.deadline.as_secs(),
                }
            } else {
                // One line for logs and `status`: the trap itself (e.g. "wasm `unreachable`
                // instruction executed", what a panic in the component becomes); the wasm
                // backtrace goes to the debug log.
                let redactor = &self.store.data().redactor;
                tracing::debug!(instance = %instance, "{}", redactor.redact(&format!("{e:?}")));
                let message = match e.downcast_ref::<Trap>() {
                    Some(trap) => trap.to_string(),
                    None => e.to_string(),
                };
                let message = redactor.redact(&message);
                InstanceError::Trap {
                    instance,
                    call,
                    message,
                }
            }
        })
    }

    pub fn describe(&mut self) -> Result<Metadata, InstanceError> {
        self.call("describe", |w, s| w.describe(s))
    }

    pub fn configure(&mut self, config: &str) -> Result<Result<(), ConfigError>, InstanceError> {
        self.call("configure", |w, s| w.configure(s, config))
    }

    pub fn validate(&mut self) -> Result<Result<(), ValidationError>, InstanceError> {
        self.call("validate", |w, s| w.validate(s))
    }

    pub fn poll(&mut self, cursor: Option<&str>) -> Result<PollResult, InstanceError> {
        let (requests, throttled) = {
            let http = &self.store.data().http;
            (http.requests, http.throttled)
        };
        let outcome = self.call("poll", |w, s| w.poll(s, cursor))?;
        let s = self.store.data_mut();
        Ok(PollResult {
            outcome,
            emitted: std::mem::take(&mut s.emitted),
            kv: std::mem::take(&mut s.kv.staged),
            requests: s.http.requests - requests,
            throttled: s.http.throttled - throttled,
        })
    }
}

fn ticks(d: std::time::Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()) as u64
}

fn ticks_at_least_one(d: std::time::Duration) -> u64 {
    ticks(d).max(1)
}
