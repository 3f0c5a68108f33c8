//! `connector-host demo`: the bundled fixture scenarios of every connector
//! (`fixtures/<connector>/<scenario>/scenario.json`), listed with their descriptions and
//! chosen by name from any directory.

use std::path::PathBuf;

/// One bundled scenario.
pub struct Scenario {
    pub connector: String,
    pub name: String,
    pub description: String,
    pub dir: PathBuf,
}

/// Every bundled scenario, by connector then name.
pub fn scenarios() -> Result<Vec<Scenario>, String> {
    let root = crate::fixtures_dir();
    let mut all = Vec::new();
    let entries = std::fs::read_dir(&root).map_err(|e| {
        format!(
            "cannot read the bundled fixtures at {}: {e}",
            root.display()
        )
    })?;
    for connector in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Ok(inner) = std::fs::read_dir(&connector) else {
            continue;
        };
        for dir in inner.filter_map(|e| e.ok()).map(|e| e.path()) {
            let Ok(text) = std::fs::read_to_string(dir.join("scenario.json")) else {
                continue;
            };
            let description = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["description"].as_str().map(str::to_string))
                .unwrap_or_default();
            all.push(Scenario {
                connector: file_name(&connector),
                name: file_name(&dir),
                description,
                dir,
            });
        }
    }
    all.sort_by(|a, b| (&a.connector, &a.name).cmp(&(&b.connector, &b.name)));
    Ok(all)
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// `demo --list`: one line per scenario, `<connector> <scenario>  <description>`.
pub fn listing(all: &[Scenario]) -> String {
    let mut out = String::new();
    for s in all {
        out.push_str(&format!(
            "{:<19} {:<29} {}\n",
            s.connector, s.name, s.description
        ));
    }
    out
}

/// The scenario called `name`: of `connector` when given, else of the only connector that
/// has it, else of defender-alerts (the demo's default connector).
pub fn choose<'a>(
    all: &'a [Scenario],
    name: &str,
    connector: Option<&str>,
) -> Result<&'a Scenario, String> {
    let matching: Vec<&Scenario> = all
        .iter()
        .filter(|s| s.name == name && connector.is_none_or(|c| s.connector == c))
        .collect();
    match matching.as_slice() {
        [] => Err(format!(
            "no bundled scenario {name:?}{}; `connector-host demo --list` shows them all",
            connector
                .map(|c| format!(" for connector {c}"))
                .unwrap_or_default()
        )),
        [one] => Ok(one),
        many => Ok(many
            .iter()
            .find(|s| s.connector == "defender-alerts")
            .unwrap_or(&many[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_of_all_three_connectors_are_found_and_chosen_by_name() {
        let all = scenarios().unwrap();
        for connector in ["defender-alerts", "defender-incidents", "entra"] {
            assert!(
                all.iter().any(|s| s.connector == connector),
                "{connector} has scenarios"
            );
        }
        assert!(all.iter().all(|s| !s.description.is_empty()));
        assert_eq!(
            choose(&all, "call-budget", None).unwrap().connector,
            "defender-incidents"
        );
        assert_eq!(
            choose(&all, "backfill", None).unwrap().connector,
            "defender-alerts"
        );
        assert_eq!(
            choose(&all, "backfill", Some("entra")).unwrap().connector,
            "entra"
        );
        assert!(choose(&all, "nope", None).is_err());
    }
}
