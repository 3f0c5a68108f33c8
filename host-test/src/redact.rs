//! Keeps secrets and access tokens out of everything the host writes: logs, errors, reports.
//! Every text that came from a component or a remote server passes through [`Redactor`].

use std::sync::{Arc, RwLock};

const MASK: &str = "[REDACTED]";
/// Values shorter than this are not masked: masking "a" everywhere would garble output and
/// a secret that short is not a secret.
const MIN_LEN: usize = 6;

#[derive(Clone, Default)]
pub struct Redactor(Arc<RwLock<Vec<String>>>);

impl Redactor {
    /// Masks `value` from now on.
    pub fn add(&self, value: &str) {
        if value.len() < MIN_LEN {
            return;
        }
        let mut values = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !values.iter().any(|v| v == value) {
            values.push(value.to_string());
            // Longest first, so a value that contains another is masked whole.
            values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// Remembers the access token of a token-endpoint response body, if it holds one.
    pub fn add_token_response(&self, body: &[u8]) {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            refresh_token: Option<String>,
        }
        if let Ok(t) = serde_json::from_slice::<TokenResponse>(body) {
            for token in [t.access_token, t.refresh_token].into_iter().flatten() {
                self.add(&token);
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let values = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for v in values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        mask_bearer(&out)
    }
}

/// Masks whatever follows `Bearer `, in case a token the host never saw is echoed back.
fn mask_bearer(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("Bearer ") {
        let (head, tail) = rest.split_at(i + "Bearer ".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(MASK);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_known_values_and_bearer_tokens() {
        let r = Redactor::default();
        r.add("s3cret-value~x");
        r.add("abc"); // too short to mask
        r.add_token_response(br#"{"access_token":"eyJ.tok.en","expires_in":3599}"#);
        let text = "secret s3cret-value~x, token eyJ.tok.en, header Bearer zzz.yyy, abc";
        assert_eq!(
            r.redact(text),
            "secret [REDACTED], token [REDACTED], header Bearer [REDACTED], abc"
        );
    }
}
