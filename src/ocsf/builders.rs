//! Builders of the OCSF objects every mapping needs: severity and status, the product,
//! `finding_info` with its MITRE attacks, users, devices and network endpoints, each
//! registering the observables it names.

use serde_json::{Map, Value, json};

use super::record::str_of;
use super::tables::Entry;
use super::{Ocsf, object};

/// Sets an `<name>_id` / `<name>` pair from a table entry, e.g. `severity_id`/`severity`.
pub fn set_enum(o: &mut Ocsf, name: &str, (id, caption): Entry) {
    o.set(&format!("{name}_id"), id);
    o.set(name, caption);
}

/// `metadata.product`: the Microsoft product that produced the record.
pub fn product(o: &mut Ocsf, name: &str, feature: Option<&str>) {
    let mut p = object([("name", name.into()), ("vendor_name", "Microsoft".into())]);
    if let Some(f) = feature {
        p.insert("feature".into(), json!({ "name": f }));
    }
    o.metadata.insert("product".into(), Value::Object(p));
}

/// `metadata.uid` (the Graph id) and, when given, the tenant and the correlation id.
pub fn identity(o: &mut Ocsf, uid: &str, tenant: Option<String>, correlation: Option<String>) {
    o.metadata.insert("uid".into(), uid.into());
    if let Some(t) = tenant {
        o.metadata.insert("tenant_uid".into(), t.into());
    }
    if let Some(c) = correlation {
        o.metadata.insert("correlation_uid".into(), c.into());
    }
}

/// MITRE ATT&CK attacks from Graph's `mitreTechniques` (`T1059`, `T1059.001`): a
/// sub-technique also names its technique. Values that are not technique ids are
/// returned apart, to stay in `unmapped`.
pub fn attacks(techniques: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let (mut attacks, mut rejected) = (Vec::new(), Vec::new());
    for t in techniques {
        let Some(id) = t.as_str().filter(|s| is_technique(s)) else {
            rejected.push(t);
            continue;
        };
        let attack = match id.split_once('.') {
            Some((technique, _)) => json!({
                "technique": {"uid": technique},
                "sub_technique": {"uid": id},
            }),
            None => json!({"technique": {"uid": id}}),
        };
        if !attacks.contains(&attack) {
            attacks.push(attack);
        }
    }
    (attacks, rejected)
}

/// `T` and four digits, optionally `.` and three digits.
fn is_technique(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    match b.len() {
        5 => b[0] == b'T' && digits(&b[1..]),
        9 => b[0] == b'T' && digits(&b[1..5]) && b[5] == b'.' && digits(&b[6..]),
        _ => false,
    }
}

/// An IP address as OCSF's `ip_t` accepts it.
pub fn valid_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// An e-mail address as OCSF's `email_t` pattern accepts it: one `@`, a local part of
/// letters, digits and ``!#$%&'*+,-./=?^_`{|}~``, a domain with a dot after its first label.
pub fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+,-./=?^_`{|}~".contains(&c));
    let Some((first, rest)) = domain.split_once('.') else {
        return false;
    };
    let label = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    local_ok
        && !first.is_empty()
        && first.bytes().all(label)
        && !rest.is_empty()
        && rest.bytes().all(|c| label(c) || c == b'.')
}

/// The parts of a Graph user as they appear in its various shapes (evidence
/// `userAccount`, `initiatedBy.user`, a sign-in's top-level fields).
#[derive(Default)]
pub struct UserParts<'a> {
    /// Entra object id (or the SID when there is none).
    pub uid: Option<&'a str>,
    /// The sign-in name: `userPrincipalName`, or the account name.
    pub name: Option<&'a str>,
    pub display_name: Option<&'a str>,
    pub domain: Option<&'a str>,
    /// A second id (the on-premises SID when `uid` is the Entra id).
    pub uid_alt: Option<&'a str>,
    /// A mailbox address.
    pub email: Option<&'a str>,
}

impl<'a> UserParts<'a> {
    /// A Defender evidence `userAccount`.
    pub fn account(a: &'a Map<String, Value>) -> Self {
        let aad = str_of(a, "azureAdUserId");
        let sid = str_of(a, "userSid");
        UserParts {
            uid: aad.or(sid),
            name: str_of(a, "userPrincipalName").or(str_of(a, "accountName")),
            display_name: str_of(a, "displayName"),
            domain: str_of(a, "domainName"),
            uid_alt: aad.and(sid),
            email: None,
        }
    }
}

/// An OCSF `user`, or `None` when nothing identifies it (OCSF needs a name, uid or
/// account). Observables: the name, the uid and the e-mail address.
pub fn user(o: &mut Ocsf, path: &str, u: &UserParts<'_>) -> Option<Value> {
    if u.uid.is_none() && u.name.is_none() {
        return None;
    }
    let email = u
        .email
        .or(u.name)
        .filter(|e| valid_email(e))
        .map(str::to_string);
    let user = object([
        ("uid", u.uid.into()),
        ("name", u.name.into()),
        ("display_name", u.display_name.into()),
        ("domain", u.domain.into()),
        ("uid_alt", u.uid_alt.into()),
        ("email_addr", email.clone().into()),
    ]);
    if let Some(n) = u.name {
        o.observe(format!("{path}.name"), 4, n);
    }
    if let Some(id) = u.uid {
        o.observe(format!("{path}.uid"), 31, id);
    }
    if let Some(e) = &email {
        o.observe(format!("{path}.email_addr"), 5, e);
    }
    Some(Value::Object(user))
}

/// An OCSF `network_endpoint` for an IP address (and its country), or `None` when the
/// text is no IP address.
pub fn endpoint(o: &mut Ocsf, path: &str, ip: &str, country: Option<&str>) -> Option<Value> {
    if !valid_ip(ip) {
        return None;
    }
    o.observe(format!("{path}.ip"), 2, ip);
    let mut e = object([("ip", ip.into())]);
    if let Some(c) = country {
        o.observe(format!("{path}.location.country"), 14, c);
        e.insert("location".into(), json!({ "country": c }));
    }
    Some(Value::Object(e))
}

/// A Graph sign-in or risk `location` (`city`, `state`, `countryOrRegion`) as OCSF.
pub fn location(l: &Map<String, Value>) -> Map<String, Value> {
    object([
        ("city", str_of(l, "city").into()),
        ("region", str_of(l, "state").into()),
        ("country", str_of(l, "countryOrRegion").into()),
    ])
}

/// A file hash as an OCSF fingerprint.
pub fn fingerprint(algorithm_id: u32, algorithm: &str, value: &str) -> Value {
    json!({"algorithm_id": algorithm_id, "algorithm": algorithm, "value": value})
}

/// The parts of `finding_info` common to every finding.
#[derive(Default)]
pub struct FindingInfo {
    pub uid: String,
    pub title: Option<String>,
    pub desc: Option<String>,
    pub created_time: Option<i64>,
    pub modified_time: Option<i64>,
    pub first_seen_time: Option<i64>,
    pub last_seen_time: Option<i64>,
    /// The record's page in the Microsoft portal.
    pub src_url: Option<String>,
    /// The product's own category of the finding.
    pub types: Vec<String>,
    pub attacks: Vec<Value>,
    pub uid_alt: Option<String>,
}

impl FindingInfo {
    pub fn into_value(self) -> Value {
        Value::Object(object([
            ("uid", self.uid.into()),
            ("uid_alt", self.uid_alt.into()),
            ("title", self.title.into()),
            ("desc", self.desc.into()),
            ("created_time", self.created_time.into()),
            ("modified_time", self.modified_time.into()),
            ("first_seen_time", self.first_seen_time.into()),
            ("last_seen_time", self.last_seen_time.into()),
            ("src_url", self.src_url.into()),
            ("types", self.types.into()),
            ("attacks", self.attacks.into()),
        ]))
    }
}

/// The finding `activity_id`: Close once resolved, Create while the record was never
/// updated, Update after.
pub fn finding_activity(
    resolved: bool,
    created: Option<i64>,
    modified: Option<i64>,
) -> super::event::Activity {
    if resolved {
        (3, "Close")
    } else if created.is_some() && created == modified {
        (1, "Create")
    } else {
        (2, "Update")
    }
}
