//! What the recorder removes from a recording before it touches disk: the client secret,
//! every issued token, the tenant and client IDs, and the values of named JSON fields.
//!
//! It works in two passes over the whole scenario. The first looks inside response bodies:
//! token responses get synthetic tokens, named fields get placeholders, and each real value
//! met is remembered. The second replaces every remembered value wherever it occurs, in
//! any string or key of the document (URLs, free text, error messages), so a value that
//! leaked into an unnamed field goes too, and a placeholder is the same everywhere it
//! stands for one value (ids still line up, next links still match their requests).
//!
//! Links (the `url` of a `request`, `@odata.nextLink` and `@odata.deltaLink`, when they
//! point to the instance's own login or Graph host) keep the values of named fields: the
//! connector builds them (its filters, e.g. `riskLevel eq 'medium'`) or follows them, and
//! the replay must see them unchanged. Secrets, tokens and IDs are replaced in them too.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// Stand-ins written into a recorded fixture. Valid GUIDs, so the recorded config passes
/// the connectors' checks on replay.
pub const TENANT_PLACEHOLDER: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
pub const CLIENT_PLACEHOLDER: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";

/// Token claims a recorded token keeps: the connectors read `roles` (what `validate`
/// checks); the audience and delegated scopes say nothing about the tenant. Everything
/// else (object ids, names, IP address, tenant region) is dropped.
const KEPT_CLAIMS: &[&str] = &["aud", "roles", "scp"];

/// Token fields of an OAuth token response.
const TOKEN_FIELDS: &[&str] = &["access_token", "refresh_token", "id_token"];

/// A remembered value shorter than this is replaced only where it is a named field's
/// whole value, not inside other text: replacing "US" or "10.0.0.1" everywhere would
/// garble unrelated strings. Secrets, tokens and IDs are replaced whatever their length.
const MIN_FREE_TEXT_LEN: usize = 6;

pub struct Scrubber {
    /// Real value -> placeholder, replaced everywhere (ASCII case-insensitively: Graph
    /// writes GUIDs in lower case whatever case the config used).
    everywhere: BTreeMap<String, String>,
    fields: BTreeSet<String>,
    /// Named fields' values -> placeholders, in the order first met.
    field_values: BTreeMap<String, String>,
    tokens: usize,
    /// What must not survive, and what to call it if it did.
    sensitive: Vec<(&'static str, String)>,
    /// The login and Graph bases (lower case): URLs under them are links.
    hosts: Vec<String>,
}

impl Scrubber {
    /// `secrets` are (name, value) pairs; `fields` the JSON field names whose values to
    /// replace in response bodies; `hosts` the login and Graph bases of the instance.
    pub fn new<'a>(
        tenant_id: &str,
        client_id: &str,
        secrets: impl IntoIterator<Item = (&'a str, &'a str)>,
        fields: impl IntoIterator<Item = String>,
        hosts: &[&str],
    ) -> Self {
        let mut s = Scrubber {
            everywhere: BTreeMap::new(),
            fields: fields.into_iter().collect(),
            field_values: BTreeMap::new(),
            tokens: 0,
            sensitive: Vec::new(),
            hosts: hosts
                .iter()
                .filter(|h| !h.is_empty())
                .map(|h| h.trim_end_matches('/').to_ascii_lowercase() + "/")
                .collect(),
        };
        for (name, value) in secrets {
            s.replace_everywhere(value, &secret_placeholder(name, value));
            s.sensitive.push(("a secret", value.to_string()));
        }
        s.replace_everywhere(tenant_id, TENANT_PLACEHOLDER);
        s.replace_everywhere(client_id, CLIENT_PLACEHOLDER);
        s.sensitive.push(("the tenant ID", tenant_id.to_string()));
        s.sensitive.push(("the client ID", client_id.to_string()));
        s
    }

    /// What of the secrets, tokens, IDs and (long enough) field values still occurs in
    /// `doc`, in any string or key (field values: outside links): a last check of the
    /// recording before it is written.
    pub fn leftover(&self, doc: &Value) -> Option<&'static str> {
        let sensitive: Vec<(&'static str, String)> = self
            .sensitive
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(what, v)| (*what, v.to_ascii_lowercase()))
            .collect();
        let fields: Vec<String> = self
            .field_values
            .keys()
            .filter(|v| v.len() >= MIN_FREE_TEXT_LEN)
            .map(|v| v.to_ascii_lowercase())
            .collect();
        let mut found = None;
        self.each_string(doc, ("", ""), &mut |text, link| {
            let text = text.to_ascii_lowercase();
            if let Some((what, _)) = sensitive.iter().find(|(_, v)| text.contains(v)) {
                found = found.or(Some(*what));
            } else if !link && fields.iter().any(|v| text.contains(v)) {
                found = found.or(Some("a redacted field's value"));
            }
        });
        found
    }

    /// Whether `text`, the value of `key` in an object that is itself the value of
    /// `within`, is a link.
    fn is_link(&self, within: &str, key: &str, text: &str) -> bool {
        let link_key = matches!(key, "@odata.nextLink" | "@odata.deltaLink")
            || (within == "request" && key == "url");
        let lowered = text.to_ascii_lowercase();
        link_key && self.hosts.iter().any(|h| lowered.starts_with(h))
    }

    /// Calls `f` with every string and key of `value`, and whether it is a link.
    fn each_string(&self, value: &Value, at: (&str, &str), f: &mut impl FnMut(&str, bool)) {
        match value {
            Value::String(s) => f(s, self.is_link(at.0, at.1, s)),
            Value::Array(items) => items.iter().for_each(|v| self.each_string(v, ("", ""), f)),
            Value::Object(map) => {
                for (k, v) in map {
                    f(k, false);
                    self.each_string(v, (at.1, k), f);
                }
            }
            _ => {}
        }
    }

    fn replace_everywhere(&mut self, value: &str, placeholder: &str) {
        if value.is_empty() {
            return;
        }
        self.everywhere
            .entry(value.to_string())
            .or_insert_with(|| placeholder.to_string());
        // The same value percent-encoded, as it appears in a URL or a form body.
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        for variant in [encoded.clone(), encoded.replace('+', "%20")] {
            if variant != value {
                self.everywhere
                    .entry(variant)
                    .or_insert_with(|| placeholder.to_string());
            }
        }
    }

    /// First pass, one response body: replaces the tokens of a token response by
    /// synthetic ones and named fields' values by placeholders, remembering the real values.
    pub fn scrub_body(&mut self, body: &mut Value) {
        if let Value::Object(map) = body {
            for field in TOKEN_FIELDS {
                let real = match map.get(*field) {
                    Some(Value::String(real)) if !real.is_empty() => real.clone(),
                    _ => continue,
                };
                self.tokens += 1;
                let fake = if *field == "access_token" {
                    self.synthetic_jwt(&real)
                } else {
                    format!("recorded-{}-{}", field.replace('_', "-"), self.tokens)
                };
                self.replace_everywhere(&real, &fake);
                self.sensitive.push(("a token", real));
                map.insert((*field).to_string(), Value::String(fake));
            }
        }
        self.scrub_fields(body);
    }

    /// An unsigned JWT that carries only [`KEPT_CLAIMS`] of the real token (the
    /// connectors read its `roles`), unique per token issued.
    fn synthetic_jwt(&self, real: &str) -> String {
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let claims: Map<String, Value> = real
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| KEPT_CLAIMS.contains(&k.as_str()))
            .collect();
        format!(
            "{}.{}.recorded-{}",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&Value::Object(claims)),
            self.tokens
        )
    }

    fn scrub_fields(&mut self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if self.fields.contains(key) {
                        self.replace_named(key, v);
                    } else {
                        self.scrub_fields(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_fields(v)),
            _ => {}
        }
    }

    /// A named field's value: strings get placeholders (one per distinct value), numbers
    /// become 0 (coordinates, counts), whatever the nesting.
    fn replace_named(&mut self, field: &str, value: &mut Value) {
        match value {
            Value::String(real) if !real.is_empty() => {
                let n = self.field_values.len() + 1;
                let placeholder = self
                    .field_values
                    .entry(real.clone())
                    .or_insert_with(|| format!("redacted-{field}-{n}"))
                    .clone();
                *real = placeholder;
            }
            Value::Number(_) => *value = json!(0),
            Value::Array(items) => items.iter_mut().for_each(|v| self.replace_named(field, v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.replace_named(field, v)),
            _ => {}
        }
    }

    /// Second pass, the whole document: every remembered value, in every string and key
    /// (in links: only secrets, tokens and IDs).
    pub fn replace_all(&self, value: &mut Value) {
        let mut ids: Vec<(&str, &str)> = self
            .everywhere
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut all: Vec<(&str, &str)> = ids
            .iter()
            .copied()
            .chain(
                self.field_values
                    .iter()
                    .filter(|(k, _)| k.len() >= MIN_FREE_TEXT_LEN)
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .collect();
        // Longest first, so a value that contains another is replaced whole.
        ids.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        self.replace_in(value, ("", ""), &all, &ids);
    }

    /// `at`: the key of the enclosing object and the key of `value` (see [`Self::is_link`]).
    fn replace_in(
        &self,
        value: &mut Value,
        at: (&str, &str),
        all: &[(&str, &str)],
        ids: &[(&str, &str)],
    ) {
        match value {
            Value::String(s) => {
                let pairs = if self.is_link(at.0, at.1, s) {
                    ids
                } else {
                    all
                };
                *s = replace_text(s, pairs);
            }
            Value::Array(items) => items
                .iter_mut()
                .for_each(|v| self.replace_in(v, ("", ""), all, ids)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    self.replace_in(&mut v, (at.1, &k), all, ids);
                    map.insert(replace_text(&k, all), v);
                }
            }
            _ => {}
        }
    }

    /// The placeholder of each (name, value) secret: the `secrets` of the recorded scenario.
    pub fn secrets_section<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
        Value::Object(
            secrets
                .into_iter()
                .map(|(n, v)| (n.to_string(), Value::String(secret_placeholder(n, v))))
                .collect(),
        )
    }
}

/// A secret that is a GUID stays one: `validate` tells a secret's ID (a GUID) from its
/// value without asking the tenant, and the replay must take the same path.
fn secret_placeholder(name: &str, value: &str) -> String {
    if secops_connector::config::is_guid(value) {
        "5ec2e700-0000-4000-8000-000000000000".into()
    } else {
        format!("recorded-{name}")
    }
}

/// `text` with every needle replaced, ignoring ASCII case. ASCII lower-casing keeps byte
/// offsets, so matches found in the lowered copy are valid offsets into the original.
pub fn replace_text(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (needle, with) in pairs {
        let needle = needle.to_ascii_lowercase();
        if needle.is_empty() || !out.to_ascii_lowercase().contains(&needle) {
            continue;
        }
        let lowered = out.to_ascii_lowercase();
        let mut next = String::with_capacity(out.len());
        let mut at = 0;
        for (i, _) in lowered.match_indices(&needle) {
            next.push_str(&out[at..i]);
            next.push_str(with);
            at = i + needle.len();
        }
        next.push_str(&out[at..]);
        out = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "8F6B2A4E-0C1D-4E5F-9A7B-3C2D1E0F4A5B";
    const CLIENT: &str = "2b7c9d1e-3f4a-4b5c-8d6e-7f8a9b0c1d2e";
    const SECRET: &str = "s3cret~value+with/odd=chars";

    fn jwt(claims: Value) -> String {
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", b64(json!({"alg": "RS256"})), b64(claims))
    }

    fn scrubber(fields: &[&str]) -> Scrubber {
        Scrubber::new(
            TENANT,
            CLIENT,
            [("client-secret", SECRET)],
            fields.iter().map(|f| f.to_string()),
            &[
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
            ],
        )
    }

    #[test]
    fn a_token_response_gets_a_synthetic_token_with_only_the_roles() {
        let mut s = scrubber(&[]);
        let real = jwt(
            json!({"tid": TENANT, "appid": CLIENT, "oid": "0a1b", "ipaddr": "203.0.113.9",
            "roles": ["SecurityAlert.Read.All"], "aud": "https://graph.microsoft.com"}),
        );
        let mut body = json!({"token_type": "Bearer", "expires_in": 3599, "access_token": real,
            "refresh_token": "rt-secret-value"});
        s.scrub_body(&mut body);
        // The real token echoed somewhere else goes too.
        let mut doc =
            json!({"body": body, "echo": format!("Bearer {real}"), "rt": "x rt-secret-value"});
        s.replace_all(&mut doc);
        let text = doc.to_string();
        assert!(
            !text.contains(&real) && !text.contains("rt-secret-value"),
            "{text}"
        );
        let fake = doc["body"]["access_token"].as_str().unwrap();
        assert!(fake.ends_with(".recorded-1"), "{fake}");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(fake.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims,
            json!({"roles": ["SecurityAlert.Read.All"], "aud": "https://graph.microsoft.com"})
        );
        assert_eq!(doc["echo"], format!("Bearer {fake}"));
        assert_eq!(doc["body"]["expires_in"], 3599);
    }

    #[test]
    fn ids_and_the_secret_are_replaced_in_any_case_and_percent_encoded() {
        let s = scrubber(&[]);
        let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        let mut doc = json!({
            "url": format!("https://login.microsoftonline.com/{}/oauth2/v2.0/token", TENANT.to_lowercase()),
            "form": format!("client_id={CLIENT}&client_secret={encoded}"),
            "upper": CLIENT.to_uppercase(),
            TENANT: "as a key",
        });
        s.replace_all(&mut doc);
        assert_eq!(
            doc,
            json!({
                "url": format!("https://login.microsoftonline.com/{TENANT_PLACEHOLDER}/oauth2/v2.0/token"),
                "form": format!("client_id={CLIENT_PLACEHOLDER}&client_secret=recorded-client-secret"),
                "upper": CLIENT_PLACEHOLDER,
                TENANT_PLACEHOLDER: "as a key",
            })
        );
    }

    #[test]
    fn named_fields_get_stable_placeholders_that_follow_the_value_everywhere() {
        let mut s = scrubber(&["userPrincipalName", "location"]);
        let mut page = json!({"value": [
            {"id": "1", "userPrincipalName": "alice@contoso.example",
             "location": {"city": "Oslo", "geo": {"latitude": 59.9}}},
            {"id": "2", "userPrincipalName": "bob@contoso.example"},
            {"id": "3", "userPrincipalName": "alice@contoso.example",
             "description": "Sign-in by alice@contoso.example from Oslo"},
        ]});
        s.scrub_body(&mut page);
        s.replace_all(&mut page);
        let v = &page["value"];
        assert_eq!(v[0]["userPrincipalName"], v[2]["userPrincipalName"]);
        assert_ne!(v[0]["userPrincipalName"], v[1]["userPrincipalName"]);
        assert_eq!(v[0]["location"]["geo"]["latitude"], 0);
        assert_eq!(v[0]["id"], "1");
        let text = page.to_string();
        assert!(!text.contains("alice@") && !text.contains("bob@"), "{text}");
        // "Oslo" is too short to replace inside free text; its field value is replaced.
        assert_ne!(v[0]["location"]["city"], "Oslo");
        assert_eq!(
            v[2]["description"],
            format!(
                "Sign-in by {} from Oslo",
                v[0]["userPrincipalName"].as_str().unwrap()
            )
        );
    }

    #[test]
    fn a_value_containing_another_is_replaced_whole() {
        let s = Scrubber::new(
            "tenant.example",
            "",
            [("short", "abcdef"), ("long", "abcdef-long")],
            [],
            &[],
        );
        let mut doc = json!(["x abcdef-long y ABCDEF z", "nothing here"]);
        s.replace_all(&mut doc);
        assert_eq!(
            doc,
            json!(["x recorded-long y recorded-short z", "nothing here"])
        );
    }

    #[test]
    fn links_keep_field_values_the_connector_filters_on_but_lose_ids() {
        let mut s = scrubber(&["riskLevel"]);
        let filter = "https://graph.microsoft.com/v1.0/auditLogs/signIns?$filter=riskLevel%20eq%20%27medium%27";
        let mut page = json!({"value": [{"id": "1", "riskLevel": "medium",
            "note": "a medium risk"}],
            "@odata.nextLink": format!("{filter}&$skiptoken={TENANT}")});
        s.scrub_body(&mut page);
        let mut doc = json!({"request": {"url": filter}, "response": page});
        s.replace_all(&mut doc);
        assert_eq!(doc["request"]["url"], filter);
        assert_eq!(
            doc["response"]["@odata.nextLink"],
            format!("{filter}&$skiptoken={TENANT_PLACEHOLDER}")
        );
        let placeholder = doc["response"]["value"][0]["riskLevel"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(placeholder, "redacted-riskLevel-1");
        assert_eq!(
            doc["response"]["value"][0]["note"],
            format!("a {placeholder} risk")
        );
        assert_eq!(s.leftover(&doc), None);
        // A Graph URL in a payload field is no link: the value goes.
        let mut payload = json!({"self": format!("{filter}&x=1")});
        s.replace_all(&mut payload);
        assert!(!payload.to_string().contains("medium"), "{payload}");
        // Outside a link the value, and the tenant anywhere, are caught.
        doc["response"]["value"][0]["note"] = json!("medium");
        assert_eq!(s.leftover(&doc), Some("a redacted field's value"));
        doc["request"]["url"] = json!(format!("{filter}&t={}", TENANT.to_lowercase()));
        assert_eq!(s.leftover(&doc), Some("the tenant ID"));
    }

    #[test]
    fn a_secret_that_is_a_guid_gets_a_guid() {
        let id = "11d1b6f6-5c3a-4c5e-9d3b-2f1e0a9b8c7d";
        let s = Scrubber::new(TENANT, CLIENT, [("client-secret", id)], [], &[]);
        let mut doc = json!({"secret": id});
        s.replace_all(&mut doc);
        let placeholder = doc["secret"].as_str().unwrap();
        assert!(
            secops_connector::config::is_guid(placeholder),
            "{placeholder}"
        );
        assert_eq!(
            Scrubber::secrets_section([("client-secret", id)]),
            json!({"client-secret": placeholder})
        );
        assert_eq!(
            Scrubber::secrets_section([("client-secret", SECRET)]),
            json!({"client-secret": "recorded-client-secret"})
        );
    }
}
