//! The shared guest library of the Microsoft Graph security connectors.
//!
//! A connector crate implements [`Connector`] (its data types and config keys) and calls
//! [`register_connector!`]; this library does the rest, once for every connector:
//! OAuth2 client credentials ([`auth`]), Graph paging ([`graph`]), retry and backoff
//! ([`retry`]), time windows and the cursor ([`cursor`]), dedup ([`dedup`]), and the
//! causes `validate` reports. Its logic is target-independent and unit-tested natively
//! against a fake of the host imports ([`platform::Platform`]).

pub mod auth;
pub mod budget;
mod client;
pub mod cloud;
pub mod config;
mod connector;
pub mod cursor;
pub mod dedup;
pub mod graph;
mod health;
pub mod ocsf;
pub mod platform;
pub mod retry;
#[doc(hidden)]
pub mod runtime;
pub mod time;
mod validate;
mod window;
#[doc(hidden)]
pub mod wit;

#[cfg(test)]
mod reality_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use config::Options;
pub use connector::{Connector, DataType, Family, Query, UNLIMITED};
pub use serde_json::json;

/// The WIT types, under Rust names.
pub mod types {
    pub use crate::wit::exports::secops::connector::connector::{
        Batch, ConfigError, Degradation, DegradedType, Metadata, PollError, Retry, ValidationCode,
        ValidationError,
    };
    pub use crate::wit::secops::connector::http::{HttpError, Request, Response};
    pub use crate::wit::secops::connector::kv::KvError;
    pub use crate::wit::secops::connector::log::Level;
    pub use crate::wit::secops::connector::types::Event;
}

/// Exports `$connector` (a type implementing [`Connector`]) as the component's
/// `connector` interface.
#[macro_export]
macro_rules! register_connector {
    ($connector:ty) => {
        struct __Component;

        impl $crate::wit::exports::secops::connector::connector::Guest for __Component {
            fn describe() -> $crate::types::Metadata {
                $crate::runtime::describe::<$connector>()
            }
            fn configure(config: String) -> Result<(), $crate::types::ConfigError> {
                $crate::runtime::export_configure::<$connector>(&config)
            }
            fn validate() -> Result<(), $crate::types::ValidationError> {
                $crate::runtime::export_validate()
            }
            fn poll(cursor: Option<String>) -> Result<$crate::types::Batch, $crate::types::PollError> {
                $crate::runtime::export_poll(cursor)
            }
        }

        $crate::wit::export_component!(__Component with_types_in $crate::wit);
    };
}
