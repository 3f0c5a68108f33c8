//! Where an instance's secrets come from: a `--secrets` JSON file, else the environment
//! (`CONNECTOR_SECRET_<NAME>`, upper case, `-` as `_`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::redact::Redactor;

#[derive(Clone, Default)]
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
}

impl Secrets {
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SecretsError::Read {
            path: path.display().to_string(),
            cause,
        })?;
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
