//! The config document every connector shares (tenant, client, cloud, backfill, routing),
//! plus typed access to the keys a connector adds.

use serde_json::{Map, Value, json};

use crate::cloud::{Cloud, parse_base_url};
use crate::types::ConfigError;

pub const MAX_BACKFILL_DAYS: u64 = 14;
pub const DEFAULT_BACKFILL_DAYS: u64 = 7;
pub const ROUTES: &[&str] = &["workflows", "auto-triage"];
/// `late_arrival_minutes` at most: a day of overlap is already a day of records re-read
/// every poll.
pub const MAX_LATE_ARRIVAL_MINUTES: u64 = 1440;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub tenant_id: String,
    pub client_id: String,
    pub cloud: Cloud,
    pub login_base: String,
    pub graph_base: String,
    pub backfill_days: u32,
    pub routing: Vec<String>,
    /// How late Graph may show a record, when the user widened it beyond each data
    /// type's default (`late_arrival_minutes`).
    pub late_arrival_secs: Option<i64>,
    /// Events carry their OCSF form (`normalize`, on unless set to false).
    pub normalize: bool,
}

pub(crate) fn error(
    key: &str,
    message: impl Into<String>,
    remedy: impl Into<String>,
) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
        remedy: remedy.into(),
    }
}

/// Parses the shared keys and hands back the rest for the connector to read.
pub fn parse(document: &str) -> Result<(Config, Options), ConfigError> {
    let value: Value = serde_json::from_str(document).map_err(|e| {
        error(
            "",
            format!("the config is not valid JSON: {e}"),
            "fix the JSON syntax of the config file",
        )
    })?;
    let Value::Object(map) = value else {
        return Err(error(
            "",
            "the config must be a JSON object",
            "write the config as {\"tenant_id\": ..., ...}",
        ));
    };
    let mut o = Options(map);

    let tenant_id = o.required_string("tenant_id")?;
    if !is_guid(&tenant_id) && !is_domain(&tenant_id) {
        return Err(error(
            "tenant_id",
            format!("`{tenant_id}` is neither a GUID nor a domain name"),
            "use the Directory (tenant) ID from the app registration's Overview page, or a verified domain",
        ));
    }
    let client_id = o.required_string("client_id")?;
    if !is_guid(&client_id) {
        return Err(error(
            "client_id",
            format!("`{client_id}` is not a GUID"),
            "use the Application (client) ID from the app registration's Overview page",
        ));
    }
    let cloud_name = o.string("cloud")?.unwrap_or_else(|| "global".into());
    let cloud = Cloud::from_name(&cloud_name).ok_or_else(|| {
        error(
            "cloud",
            format!("unknown cloud `{cloud_name}`"),
            format!("use one of {}", Cloud::NAMES.join(", ")),
        )
    })?;
    let base = |o: &mut Options, key: &str, default: &str| -> Result<String, ConfigError> {
        match o.string(key)? {
            None => Ok(default.to_string()),
            Some(url) => parse_base_url(&url).map_err(|m| {
                error(
                    key,
                    m,
                    "give a base URL such as https://graph.microsoft.com (https, no path)",
                )
            }),
        }
    };
    let login_base = base(&mut o, "login_url", cloud.login_base())?;
    let graph_base = base(&mut o, "graph_url", cloud.graph_base())?;

    let backfill_days = match o.take("backfill_days") {
        None => DEFAULT_BACKFILL_DAYS,
        Some(v) => v.as_u64().filter(|d| *d <= MAX_BACKFILL_DAYS).ok_or_else(|| {
            error(
                "backfill_days",
                format!("backfill_days must be a whole number from 0 to {MAX_BACKFILL_DAYS}, not {v}"),
                "Graph keeps these records for a limited time; choose 0 to 14 days",
            )
        })?,
    } as u32;

    let late_arrival_secs = match o.take("late_arrival_minutes") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|m| *m <= MAX_LATE_ARRIVAL_MINUTES)
                .ok_or_else(|| {
                    error(
                        "late_arrival_minutes",
                        format!(
                            "late_arrival_minutes must be a whole number from 0 to \
                             {MAX_LATE_ARRIVAL_MINUTES}, not {v}"
                        ),
                        "give how many minutes late your tenant's records can appear in Graph",
                    )
                })? as i64
                * 60,
        ),
    };

    let routing = match o.string_list("routing")? {
        None => ROUTES.iter().map(|r| r.to_string()).collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(error(
                    "routing",
                    "routing is empty",
                    "list `workflows`, `auto-triage` or both",
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for r in list {
                if !ROUTES.contains(&r.as_str()) {
                    return Err(error(
                        "routing",
                        format!("unknown route `{r}`"),
                        "use `workflows`, `auto-triage` or both",
                    ));
                }
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            out
        }
    };

    let normalize = o.bool("normalize")?.unwrap_or(true);

    Ok((
        Config {
            tenant_id,
            client_id,
            cloud,
            login_base,
            graph_base,
            backfill_days,
            routing,
            late_arrival_secs,
            normalize,
        },
        o,
    ))
}

/// The connector-specific keys left after the shared ones were read. A connector takes
/// what it knows; [`Options::finish`] refuses whatever is left, so a typo is an error.
#[derive(Debug)]
pub struct Options(Map<String, Value>);

impl Options {
    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(v) => Err(error(
                key,
                format!("{key} must be a string, not {v}"),
                format!("write {key} as a JSON string"),
            )),
        }
    }

    fn required_string(&mut self, key: &str) -> Result<String, ConfigError> {
        match self.string(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(error(
                key,
                format!("{key} is missing"),
                format!("add \"{key}\" to the config"),
            )),
        }
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(error(
                key,
                format!("{key} must be true or false, not {v}"),
                format!("write {key} as a JSON boolean"),
            )),
        }
    }

    pub fn string_list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let wrong = |v: &Value| {
            error(
                key,
                format!("{key} must be a list of strings, not {v}"),
                format!("write {key} as [\"...\", ...]"),
            )
        };
        match self.take(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| wrong(i)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(wrong(&v)),
        }
    }

    /// A list whose items must each be one of `allowed` (an enum in the schema).
    pub fn choices(
        &mut self,
        key: &str,
        allowed: &[&str],
        what: &str,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(items) = self.string_list(key)? else {
            return Ok(None);
        };
        if let Some(bad) = items.iter().find(|i| !allowed.contains(&i.as_str())) {
            return Err(error(
                key,
                format!("`{bad}` is not {what}"),
                format!("use any of {}", allowed.join(", ")),
            ));
        }
        Ok(Some(items))
    }

    /// Refuses keys nobody read.
    pub fn finish(self, connector: &str) -> Result<(), ConfigError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(error(
                key,
                format!("unknown config key `{key}` for connector {connector}"),
                "remove it or fix its spelling (`connector-host describe` lists the keys)",
            )),
        }
    }
}

pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_domain(s: &str) -> bool {
    s.contains('.')
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// JSON Schema of the shared keys; a connector adds its own `properties`.
pub fn schema(connector_properties: Value, required_extra: &[&str], clouds: &[Cloud]) -> Value {
    let cloud_names: Vec<&str> = clouds.iter().map(|c| c.name()).collect();
    let mut properties = json!({
        "tenant_id": {"type": "string", "description": "Directory (tenant) ID: a GUID or a verified domain"},
        "client_id": {"type": "string", "description": "Application (client) ID, a GUID", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"},
        "cloud": {"enum": cloud_names, "default": "global", "description": "Sets the login and Graph hosts"},
        "graph_url": {"type": "string", "format": "uri", "description": "Overrides the Graph base URL, e.g. https://graph.microsoft.com"},
        "login_url": {"type": "string", "format": "uri", "description": "Overrides the login authority base URL, e.g. https://login.microsoftonline.com"},
        "backfill_days": {"type": "integer", "minimum": 0, "maximum": MAX_BACKFILL_DAYS, "default": DEFAULT_BACKFILL_DAYS, "description": "Lookback on the first poll; fixed once the instance has state"},
        "late_arrival_minutes": {"type": "integer", "minimum": 0, "maximum": MAX_LATE_ARRIVAL_MINUTES, "description": "How late Graph may show a record: each window reaches back this far, so records that appear late are still delivered. Only widens each data type's default (directory audits and sign-ins 20, the others 15)"},
        "routing": {"type": "array", "items": {"enum": ROUTES}, "minItems": 1, "uniqueItems": true, "default": ROUTES, "description": "Where events go"},
        "normalize": {"type": "boolean", "default": true, "description": format!("Each event also carries its OCSF {} form (`ocsf`) beside the raw record; false leaves it out", crate::ocsf::OCSF_VERSION)}
    });
    if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), connector_properties) {
        p.extend(extra);
    }
    let mut required = vec!["tenant_id", "client_id"];
    required.extend_from_slice(required_extra);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    const CLIENT: &str = "66666666-7777-8888-9999-000000000000";

    fn doc(extra: &str) -> String {
        format!(r#"{{"tenant_id":"{TENANT}","client_id":"{CLIENT}"{extra}}}"#)
    }

    #[test]
    fn defaults_follow_the_cloud() {
        let (c, o) = parse(&doc(r#","cloud":"usgov-dod""#)).unwrap();
        assert_eq!(c.login_base, "https://login.microsoftonline.us");
        assert_eq!(c.graph_base, "https://dod-graph.microsoft.us");
        assert_eq!(c.backfill_days, 7);
        assert_eq!(c.routing, ["workflows", "auto-triage"]);
        o.finish("x").unwrap();
    }

    #[test]
    fn overrides_win_over_the_cloud() {
        let (c, _) = parse(&doc(r#","cloud":"china","graph_url":"http://127.0.0.1:9000/","login_url":"http://127.0.0.1:9001""#)).unwrap();
        assert_eq!(c.graph_base, "http://127.0.0.1:9000");
        assert_eq!(c.login_base, "http://127.0.0.1:9001");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("{", ""),
            ("[]", ""),
            (
                r#"{"client_id":"66666666-7777-8888-9999-000000000000"}"#,
                "tenant_id",
            ),
            (&doc(r#","backfill_days":15"#), "backfill_days"),
            (&doc(r#","backfill_days":-1"#), "backfill_days"),
            (&doc(r#","backfill_days":"7""#), "backfill_days"),
            (&doc(r#","cloud":"germany""#), "cloud"),
            (
                &doc(r#","graph_url":"http://graph.example.com""#),
                "graph_url",
            ),
            (&doc(r#","routing":[]"#), "routing"),
            (&doc(r#","routing":["email"]"#), "routing"),
            (
                &format!(r#"{{"tenant_id":"not a tenant","client_id":"{CLIENT}"}}"#),
                "tenant_id",
            ),
            (
                &format!(r#"{{"tenant_id":"{TENANT}","client_id":"my-app"}}"#),
                "client_id",
            ),
        ];
        for (input, key) in cases {
            let e = parse(input).expect_err(input);
            assert_eq!(e.key, key, "{input}: {}", e.message);
            assert!(!e.remedy.is_empty());
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let (_, mut o) = parse(&doc(r#","service_sources":["a"],"backfil_days":3"#)).unwrap();
        assert_eq!(o.string_list("service_sources").unwrap().unwrap(), ["a"]);
        assert_eq!(o.finish("defender-alerts").unwrap_err().key, "backfil_days");
    }

    #[test]
    fn domains_and_guids() {
        assert!(is_guid(TENANT));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
        assert!(parse(&doc("").replace(TENANT, "contoso.onmicrosoft.com")).is_ok());
    }
}
