//! What a component file was built against, read from the file itself: the WIT package
//! versions it names (`secops:connector/<interface>@<version>`), for `connector-host
//! inspect` and `dist.sh`, with no external tool.

const PACKAGE: &[u8] = b"secops:connector/";

/// Every `secops:connector@<version>` the component's imports and exports name, sorted.
pub fn wit_versions(bytes: &[u8]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut rest = bytes;
    while let Some(at) = find(rest, PACKAGE) {
        let after = &rest[at + PACKAGE.len()..];
        // `<interface>@<version>`: the interface is a WIT identifier, the version semver.
        let name_len = after
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-')
            .count();
        if after.get(name_len) == Some(&b'@') {
            let version: String = after[name_len + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
                .map(|&b| b as char)
                .collect();
            // An empty dot-separated part ends it: what follows is another string.
            let version = version.split("..").next().unwrap_or_default();
            let version = version.trim_end_matches(['.', '-', '+']);
            if version.split('.').count() >= 3 {
                found.insert(format!("secops:connector@{version}"));
            }
        }
        rest = after;
    }
    found.into_iter().collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_interface_names() {
        let bytes = b"\0asm..secops:connector/http@0.2.0\x05secops:connector/connector@0.2.0..\
                      secops:connector/log@0.2.0-rc.1 secops:connector/broken";
        assert_eq!(
            wit_versions(bytes),
            ["secops:connector@0.2.0", "secops:connector@0.2.0-rc.1"]
        );
    }
}
