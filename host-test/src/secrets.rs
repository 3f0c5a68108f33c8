//! Where an instance's secrets come from: a `--secrets` JSON file, else the environment:
//! `CONNECTOR_SECRET_<NAME>` for `run` (upper case, `-` as `_`), and per instance for
//! `serve`, `CONNECTOR_SECRET_<INSTANCE>_<NAME>` (the instance name upper case, every
//! character but letters and digits as `_`), so one variable never serves every tenant.

use std::collections::BTreeMap;
use std::path::Path;

use crate::redact::Redactor;

#[derive(Clone, Default, Hash)]
pub struct Secrets(BTreeMap<String, String>);

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error(
        "the secrets file {path} is not a JSON object of strings ({cause}); \
         write it as {{\"client-secret\": \"<the secret's Value>\"}}"
    )]
    Parse { path: String, cause: String },
    #[error(
        "the secrets hold {found:?} but the connector reads {expected:?}: rename the key \
         to {expected:?}"
    )]
    Misspelled { found: String, expected: String },
}

impl Secrets {
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SecretsError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        warn_if_others_can_read(path);
        // The error message of serde_json never quotes the input, so no secret leaks here.
        serde_json::from_str(&text)
            .map(Secrets)
            .map_err(|e| SecretsError::Parse {
                path: path.display().to_string(),
                cause: e.to_string(),
            })
    }

    pub fn from_env() -> Self {
        let map = std::env::vars()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("CONNECTOR_SECRET_")?;
                Some((name.to_ascii_lowercase().replace('_', "-"), v))
            })
            .collect();
        Secrets(map)
    }

    /// The secrets of `serve`'s instance `instance` from the environment:
    /// `CONNECTOR_SECRET_<INSTANCE>_<NAME>`, e.g. `CONNECTOR_SECRET_CONTOSO_ALERTS_CLIENT_SECRET`
    /// for `client-secret` of instance `contoso-alerts`.
    pub fn from_env_for(instance: &str) -> Self {
        Self::from_vars_for(instance, std::env::vars())
    }

    fn from_vars_for(instance: &str, vars: impl Iterator<Item = (String, String)>) -> Self {
        let prefix = format!("CONNECTOR_SECRET_{}_", env_name(instance));
        Secrets(
            vars.filter_map(|(k, v)| {
                let name = k.strip_prefix(&prefix)?;
                Some((name.to_ascii_lowercase().replace('_', "-"), v))
            })
            .collect(),
        )
    }

    /// Refuses secrets where a key the connector reads is missing but a near spelling of it
    /// (`client_secret`, `Client-Secret`) is there: named, with the key expected.
    pub fn check_names(&self, expected: &[String]) -> Result<(), SecretsError> {
        let fold = |k: &str| k.to_ascii_lowercase().replace(['_', ' ', '.'], "-");
        for want in expected.iter().filter(|w| !self.0.contains_key(*w)) {
            if let Some(found) = self.0.keys().find(|k| fold(k) == fold(want)) {
                return Err(SecretsError::Misspelled {
                    found: found.clone(),
                    expected: want.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        Secrets(map)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// (name, value) of every secret.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Registers every value with the redactor, before anything can log it.
    pub fn register(&self, redactor: &Redactor) {
        for v in self.0.values() {
            redactor.add(v);
        }
    }
}

/// `contoso-alerts` as `CONTOSO_ALERTS`.
pub fn env_name(instance: &str) -> String {
    instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A secrets file others can read is used, with a warning: refusing it would stop a
/// running fleet over a permission.
#[cfg(unix)]
fn warn_if_others_can_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the secrets file {} can be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_others_can_read(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_reads_each_instance_own_variables() {
        let vars = [
            ("CONNECTOR_SECRET_CONTOSO_ALERTS_CLIENT_SECRET", "a"),
            ("CONNECTOR_SECRET_GLOBEX_CLIENT_SECRET", "b"),
            ("CONNECTOR_SECRET_CLIENT_SECRET", "shared"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let contoso = Secrets::from_vars_for("contoso-alerts", vars.clone().into_iter());
        assert_eq!(contoso.get("client-secret"), Some("a"));
        let globex = Secrets::from_vars_for("globex", vars.clone().into_iter());
        assert_eq!(globex.get("client-secret"), Some("b"));
        let other = Secrets::from_vars_for("initech", vars.into_iter());
        assert_eq!(other.get("client-secret"), None, "no shared fallback");
    }

    #[test]
    fn a_misspelled_key_is_named_with_the_expected_one() {
        let secrets = Secrets::from_map([("client_secret".into(), "x".into())].into());
        let err = secrets
            .check_names(&["client-secret".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"client_secret\"") && err.contains("\"client-secret\""),
            "{err}"
        );
        let right = Secrets::from_map([("client-secret".into(), "x".into())].into());
        assert!(right.check_names(&["client-secret".into()]).is_ok());
    }
}
