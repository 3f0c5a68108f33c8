//! One module per released version of the `secops:connector` WIT package (as Zed keeps
//! `since_v0_x_y`): [`v0_2`] is the latest, aliased [`latest`], and what the rest of the
//! host works with; [`v0_1`] has its own bindings and converts onto the latest types. The
//! engine detects a component's version from the names of its imports and exports, links
//! that version's imports, and the instance calls it through [`Connector`], which always
//! answers in the latest types.

pub mod v0_1;
pub mod v0_2;

pub use v0_2 as latest;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use crate::imports::HostState;

/// A WIT version this host can run. A component built for any patch release of one of
/// these (`0.1.9`) is the same contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitVersion {
    V0_1,
    V0_2,
}

impl WitVersion {
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1, WitVersion::V0_2];

    /// The full package name, e.g. `secops:connector@0.2.0`.
    pub fn package(self) -> &'static str {
        match self {
            WitVersion::V0_1 => v0_1::PACKAGE,
            WitVersion::V0_2 => v0_2::PACKAGE,
        }
    }

    /// The version whose major and minor are those of `version` (`0.1.3` → 0.1).
    fn of(version: &str) -> Option<WitVersion> {
        WitVersion::ALL
            .into_iter()
            .find(|v| major_minor(v.package()) == major_minor(version))
    }

    /// Adds this version's imports (and WASI) to `linker`.
    pub fn add_to_linker(self, linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_sync(linker)?;
        match self {
            WitVersion::V0_1 => v0_1::ConnectorWorld::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
            WitVersion::V0_2 => v0_2::ConnectorWorld::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
        }
    }

    /// Every supported package, for error messages: `secops:connector@0.1.0, …@0.2.0`.
    pub fn supported() -> String {
        WitVersion::ALL
            .iter()
            .map(|v| v.package())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `0.1` of `secops:connector@0.1.0` or of `0.1.0`.
fn major_minor(version: &str) -> String {
    let v = version.rsplit_once('@').map_or(version, |(_, v)| v);
    v.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// What the names of a component's imports and exports say about its WIT version.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Known(WitVersion),
    /// The `secops:connector` package version it names, e.g. `secops:connector@0.3.0`.
    Unknown(String),
    /// It names no `secops:connector` interface at all; the linker says what is missing.
    None,
}

/// The WIT version a component was built for, from the `secops:connector/…@x.y.z` names
/// of its imports and exports, which must all name one version the host knows.
pub fn detect(engine: &wasmtime::Engine, component: &Component) -> Detected {
    let ty = component.component_type();
    let names = ty
        .exports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.imports(engine).map(|(n, _)| n.to_string()));
    let mut found: Option<(String, Option<WitVersion>)> = None;
    for name in names {
        let Some(rest) = name.strip_prefix("secops:connector/") else {
            continue;
        };
        let version = rest.rsplit_once('@').map_or("", |(_, v)| v);
        let known = WitVersion::of(version);
        if let Some((first_version, first)) = &found {
            if known.is_none() || known != *first {
                let found = if version == first_version {
                    format!("secops:connector@{version}")
                } else {
                    // No toolchain mixes versions, but a hand-made component could.
                    format!("secops:connector@{first_version} mixed with @{version}")
                };
                return Detected::Unknown(found);
            }
        } else {
            found = Some((version.to_string(), known));
        }
    }
    match found {
        None => Detected::None,
        Some((_, Some(v))) => Detected::Known(v),
        Some((version, None)) => Detected::Unknown(format!("secops:connector@{version}")),
    }
}

/// A component ready to instantiate, with its version's bindings.
#[derive(Clone)]
pub enum ConnectorPre {
    V0_1(v0_1::ConnectorWorldPre<HostState>),
    V0_2(v0_2::ConnectorWorldPre<HostState>),
}

impl ConnectorPre {
    pub fn new(version: WitVersion, pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(match version {
            WitVersion::V0_1 => ConnectorPre::V0_1(v0_1::ConnectorWorldPre::new(pre)?),
            WitVersion::V0_2 => ConnectorPre::V0_2(v0_2::ConnectorWorldPre::new(pre)?),
        })
    }

    pub fn version(&self) -> WitVersion {
        match self {
            ConnectorPre::V0_1(_) => WitVersion::V0_1,
            ConnectorPre::V0_2(_) => WitVersion::V0_2,
        }
    }

    /// The component's `InstancePre`, whatever its version (its type names its imports).
    pub fn instance_pre(&self) -> &InstancePre<HostState> {
        match self {
            ConnectorPre::V0_1(pre) => pre.instance_pre(),
            ConnectorPre::V0_2(pre) => pre.instance_pre(),
        }
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Connector> {
        Ok(match self {
            ConnectorPre::V0_1(pre) => Connector::V0_1(pre.instantiate(store)?),
            ConnectorPre::V0_2(pre) => Connector::V0_2(pre.instantiate(store)?),
        })
    }
}

/// A live component of either version; every call answers in the latest types.
pub enum Connector {
    V0_1(v0_1::ConnectorWorld),
    V0_2(v0_2::ConnectorWorld),
}

type HostStore = Store<HostState>;

impl Connector {
    pub fn describe(&self, s: &mut HostStore) -> wasmtime::Result<latest::Metadata> {
        match self {
            Connector::V0_1(w) => w
                .secops_connector_connector()
                .call_describe(s)
                .map(v0_1::metadata),
            Connector::V0_2(w) => w.secops_connector_connector().call_describe(s),
        }
    }

    pub fn configure(
        &self,
        s: &mut HostStore,
        config: &str,
    ) -> wasmtime::Result<Result<(), latest::ConfigError>> {
        match self {
            Connector::V0_1(w) => Ok(w
                .secops_connector_connector()
                .call_configure(s, config)?
                .map_err(v0_1::config_error)),
            Connector::V0_2(w) => w.secops_connector_connector().call_configure(s, config),
        }
    }

    pub fn validate(
        &self,
        s: &mut HostStore,
    ) -> wasmtime::Result<Result<(), latest::ValidationError>> {
        match self {
            Connector::V0_1(w) => Ok(w
                .secops_connector_connector()
                .call_validate(s)?
                .map_err(v0_1::validation_error)),
            Connector::V0_2(w) => w.secops_connector_connector().call_validate(s),
        }
    }

    pub fn poll(
        &self,
        s: &mut HostStore,
        cursor: Option<&str>,
    ) -> wasmtime::Result<Result<latest::Batch, latest::PollError>> {
        match self {
            Connector::V0_1(w) => Ok(w
                .secops_connector_connector()
                .call_poll(s, cursor)?
                .map(v0_1::batch)
                .map_err(v0_1::poll_error)),
            Connector::V0_2(w) => w.secops_connector_connector().call_poll(s, cursor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_on_major_and_minor() {
        assert_eq!(WitVersion::of("0.1.0"), Some(WitVersion::V0_1));
        assert_eq!(WitVersion::of("0.1.9"), Some(WitVersion::V0_1));
        assert_eq!(WitVersion::of("0.2.0"), Some(WitVersion::V0_2));
        assert_eq!(WitVersion::of("0.3.0"), None);
        assert_eq!(WitVersion::of("1.1.0"), None);
        assert_eq!(WitVersion::of(""), None);
        assert_eq!(
            WitVersion::supported(),
            "secops:connector@0.1.0, secops:connector@0.2.0"
        );
    }
}
