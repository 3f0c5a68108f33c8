//! What a component was built against, from its own component type: the WIT package
//! versions its imports and exports name (`secops:connector/<interface>@<version>`), for
//! `connector-host inspect` and `dist.sh`, with no external tool.

use crate::engine::LoadedComponent;

/// Every `secops:connector@<version>` the component's imports and exports name, sorted.
pub fn wit_versions(component: &LoadedComponent) -> Vec<String> {
    let ty = component.pre.instance_pre().component().component_type();
    let names = ty
        .imports(&component.engine)
        .map(|(name, _)| name.to_string())
        .chain(
            ty.exports(&component.engine)
                .map(|(name, _)| name.to_string()),
        );
    versions(names)
}

fn versions(names: impl Iterator<Item = String>) -> Vec<String> {
    names
        .filter_map(|name| {
            let rest = name.strip_prefix("secops:connector/")?;
            let (_, version) = rest.rsplit_once('@')?;
            Some(format!("secops:connector@{version}"))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_interface_names() {
        let names = [
            "secops:connector/http@0.2.0",
            "secops:connector/connector@0.2.0",
            "wasi:io/streams@0.2.6",
            "secops:connector/log@0.3.0-rc.1",
        ];
        assert_eq!(
            versions(names.iter().map(|n| n.to_string())),
            ["secops:connector@0.2.0", "secops:connector@0.3.0-rc.1"]
        );
    }
}
