//! The `secops:connector` types the host works with: those of the latest WIT version
//! ([`crate::wit::latest`]). Components of older versions are converted onto them
//! ([`crate::wit`]).

pub use crate::wit::latest::*;

pub use crate::wit::WitVersion;
