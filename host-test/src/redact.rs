//! Keeps secrets and access tokens out of everything the host writes: logs, errors, reports.
//! Every text that came from a component or a remote server passes through [`Redactor`].

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

const MASK: &str = "[REDACTED]";
/// Values shorter than this are not masked: masking "a" everywhere would garble output and
/// a secret that short is not a secret.
const MIN_LEN: usize = 6;

/// Access tokens masked by value: the newest few. A tenant gets a new token every hour
/// for as long as it runs, and keeping them all would grow every instance's memory and
/// the cost of every redaction without end; an older token has expired, and any text
/// that carries one as a bearer credential is still masked by [`mask_bearer`].
const TOKENS_KEPT: usize = 4;

#[derive(Clone, Default)]
pub struct Redactor(Arc<RwLock<Values>>);

#[derive(Default)]
struct Values {
    /// Secrets, for the redactor's whole life.
    secrets: Vec<String>,
    /// Tokens, newest last.
    tokens: VecDeque<String>,
    /// Both, longest first, so a value that contains another is masked whole.
    all: Vec<String>,
}

impl Values {
    fn rebuild(&mut self) {
        self.all = self.secrets.iter().chain(&self.tokens).cloned().collect();
        self.all.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

impl Redactor {
    /// Masks `value` from now on.
    pub fn add(&self, value: &str) {
        if value.len() < MIN_LEN {
            return;
        }
        let mut values = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !values.all.iter().any(|v| v == value) {
            values.secrets.push(value.to_string());
            values.rebuild();
        }
    }

    fn add_token(&self, token: &str) {
        if token.len() < MIN_LEN {
            return;
        }
        let mut values = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !values.all.iter().any(|v| v == token) {
            values.tokens.push_back(token.to_string());
            if values.tokens.len() > TOKENS_KEPT {
                values.tokens.pop_front();
            }
            values.rebuild();
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
                self.add_token(&token);
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let values = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for v in values.all.iter() {
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

    #[test]
    fn keeps_secrets_for_good_and_only_the_newest_tokens() {
        let r = Redactor::default();
        r.add("s3cret-value~x");
        let token = |n: usize| format!("eyJ.token-number-{n}");
        for n in 0..100 {
            let body = format!(r#"{{"access_token":"{}"}}"#, token(n));
            r.add_token_response(body.as_bytes());
        }
        let values = r.0.read().unwrap();
        assert_eq!(
            values.tokens.len(),
            TOKENS_KEPT,
            "a year of hourly tokens stays bounded"
        );
        assert_eq!(values.secrets, ["s3cret-value~x"]);
        drop(values);
        let text = format!("s3cret-value~x {} {}", token(99), token(96));
        assert_eq!(r.redact(&text), "[REDACTED] [REDACTED] [REDACTED]");
        assert_eq!(r.redact("Bearer eyJ.token-number-1"), "Bearer [REDACTED]");
    }
}
