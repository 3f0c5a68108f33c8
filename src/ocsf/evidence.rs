//! Defender alert `evidence` (the typed `alertEvidence` subtypes) as OCSF `evidences`,
//! with an observable for every user, device, IP, file hash, URL, mailbox and process
//! each one names.

use serde_json::{Map, Value, json};

use super::builders::{UserParts, endpoint, fingerprint, user, valid_email, valid_ip};
use super::record::str_of;
use super::{Ocsf, object, tables};

/// The `evidences` of an alert's `evidence` array (entries that identify nothing are
/// left out: OCSF requires each evidence to name something).
pub fn evidences(o: &mut Ocsf, items: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for item in items {
        let Some(e) = item.as_object() else { continue };
        let path = format!("evidences[{}]", out.len());
        if let Some(mut ev) = one(o, &path, e) {
            if let Some((id, caption)) = str_of(e, "verdict").and_then(tables::evidence_verdict) {
                ev.insert("verdict_id".into(), id.into());
                ev.insert("verdict".into(), caption.into());
            }
            out.push(Value::Object(ev));
        }
    }
    out
}

/// The short evidence type, e.g. `deviceEvidence` of `#microsoft.graph.security.deviceEvidence`.
fn kind(e: &Map<String, Value>) -> &str {
    str_of(e, "@odata.type")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
}

fn one(o: &mut Ocsf, path: &str, e: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut ev = Map::new();
    match kind(e) {
        "deviceEvidence" => {
            ev.insert("device".into(), device(o, &format!("{path}.device"), e)?);
        }
        "userEvidence" => {
            let a = e.get("userAccount")?.as_object()?;
            ev.insert(
                "user".into(),
                user(o, &format!("{path}.user"), &UserParts::account(a))?,
            );
        }
        "ipEvidence" => {
            let ip = str_of(e, "ipAddress")?;
            let country = str_of(e, "countryLetterCode");
            ev.insert(
                "src_endpoint".into(),
                endpoint(o, &format!("{path}.src_endpoint"), ip, country)?,
            );
        }
        "fileEvidence" => {
            let f = e.get("fileDetails")?.as_object()?;
            ev.insert("file".into(), file(o, &format!("{path}.file"), f)?);
        }
        "processEvidence" => match process(o, &format!("{path}.process"), e) {
            Some(p) => {
                ev.insert("process".into(), p);
            }
            // OCSF identifies a process by its id: without one, the image file is the
            // evidence.
            None => {
                let f = e.get("imageFile")?.as_object()?;
                ev.insert("file".into(), file(o, &format!("{path}.file"), f)?);
            }
        },
        "urlEvidence" => {
            let u = str_of(e, "url")?;
            o.observe(format!("{path}.url.url_string"), 6, u);
            ev.insert("url".into(), json!({ "url_string": u }));
        }
        "mailboxEvidence" => {
            let address = str_of(e, "primaryAddress");
            let mut parts = e
                .get("userAccount")
                .and_then(Value::as_object)
                .map(UserParts::account)
                .unwrap_or_default();
            parts.email = address.filter(|a| valid_email(a));
            parts.name = parts.name.or(address);
            parts.display_name = parts.display_name.or(str_of(e, "displayName"));
            ev.insert("user".into(), user(o, &format!("{path}.user"), &parts)?);
        }
        "analyzedMessageEvidence" => {
            ev.insert("email".into(), message(o, &format!("{path}.email"), e)?);
        }
        other => {
            // Cloud apps, registry keys, Azure resources, mail clusters and the rest: a
            // resource named by the fields each has.
            let name = ["displayName", "registryKey", "name", "query", "url"]
                .iter()
                .find_map(|k| str_of(e, k));
            let uid = [
                "appId",
                "resourceId",
                "objectId",
                "securityGroupId",
                "networkMessageId",
            ]
            .iter()
            .find_map(|k| str_of(e, k));
            if name.is_none() && uid.is_none() {
                return None;
            }
            if let Some(u) = uid {
                o.observe(format!("{path}.resources[0].uid"), 10, u);
            }
            let r = object([
                ("name", name.into()),
                ("uid", uid.into()),
                ("type", (!other.is_empty()).then_some(other).into()),
            ]);
            ev.insert("resources".into(), json!([r]));
        }
    }
    Some(ev)
}

/// A `deviceEvidence` as an OCSF `device`: its DNS name, Defender and Entra device ids,
/// IP addresses and logged-on users.
fn device(o: &mut Ocsf, path: &str, e: &Map<String, Value>) -> Option<Value> {
    let hostname = str_of(e, "deviceDnsName").or(str_of(e, "hostName"));
    let uid = str_of(e, "mdeDeviceId");
    let uid_alt = str_of(e, "azureAdDeviceId");
    if hostname.is_none() && uid.is_none() && uid_alt.is_none() {
        return None;
    }
    if let Some(h) = hostname {
        o.observe(format!("{path}.hostname"), 1, h);
    }
    if let Some(u) = uid.or(uid_alt) {
        o.observe(format!("{path}.uid"), 47, u);
    }
    let ips: Vec<&str> = e
        .get("ipInterfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|ip| valid_ip(ip))
        .collect();
    let interfaces: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            o.observe(format!("{path}.network_interfaces[{i}].ip"), 2, ip);
            json!({ "ip": ip })
        })
        .collect();
    let mut d = object([
        ("type_id", 0.into()),
        ("hostname", hostname.into()),
        ("uid", uid.or(uid_alt).into()),
        ("uid_alt", uid.and(uid_alt).into()),
        ("ip", ips.first().copied().into()),
        ("network_interfaces", interfaces.into()),
    ]);
    if let Some(os) = str_of(e, "osPlatform") {
        // OCSF `os` needs a type id the platform name does not always give: kept as the
        // device description instead of guessing.
        d.insert("desc".into(), format!("OS platform: {os}").into());
    }
    if let Some(users) = e.get("loggedOnUsers").and_then(Value::as_array) {
        let mut groups = Vec::new();
        for (i, u) in users.iter().filter_map(Value::as_object).enumerate() {
            let name = str_of(u, "accountName");
            if let Some(n) = name {
                o.observe(format!("{path}.owner[{i}].name"), 4, n);
                groups.push(n);
            }
        }
        if let Some(first) = users.first().and_then(Value::as_object) {
            let parts = UserParts {
                name: str_of(first, "accountName"),
                domain: str_of(first, "domainName"),
                ..UserParts::default()
            };
            if let Some(owner) = user(o, &format!("{path}.owner"), &parts) {
                d.insert("owner".into(), owner);
            }
        }
    }
    Some(Value::Object(d))
}

/// A Defender `fileDetails` as an OCSF `file` (OCSF requires its name).
fn file(o: &mut Ocsf, path: &str, f: &Map<String, Value>) -> Option<Value> {
    let name = str_of(f, "fileName").or_else(|| {
        str_of(f, "filePath").and_then(|p| p.rsplit(['\\', '/']).find(|s| !s.is_empty()))
    })?;
    o.observe(format!("{path}.name"), 7, name);
    let dir = str_of(f, "filePath");
    let full = dir.map(|d| {
        if d.ends_with(name) {
            d.to_string()
        } else {
            format!("{}\\{name}", d.trim_end_matches(['\\', '/']))
        }
    });
    if let Some(p) = &full {
        o.observe(format!("{path}.path"), 45, p);
    }
    let mut hashes = Vec::new();
    for (key, id, algorithm) in [
        ("md5", 1, "MD5"),
        ("sha1", 2, "SHA-1"),
        ("sha256", 3, "SHA-256"),
    ] {
        if let Some(h) = str_of(f, key) {
            o.observe(format!("{path}.hashes[{}].value", hashes.len()), 8, h);
            hashes.push(fingerprint(id, algorithm, h));
        }
    }
    let size = f
        .get("fileSize")
        .and_then(Value::as_i64)
        .filter(|s| *s >= 0);
    Some(Value::Object(object([
        ("name", name.into()),
        ("type_id", 1.into()),
        ("type", "Regular File".into()),
        ("path", full.into()),
        ("hashes", hashes.into()),
        ("size", size.into()),
        ("company_name", str_of(f, "filePublisher").into()),
    ])))
}

/// A `processEvidence` as an OCSF `process`: pid, command line, image file, user and
/// parent; `None` without a process id (OCSF identifies a process by it).
fn process(o: &mut Ocsf, path: &str, e: &Map<String, Value>) -> Option<Value> {
    let pid = e.get("processId").and_then(Value::as_i64)?;
    let cmd = str_of(e, "processCommandLine");
    let image = e.get("imageFile").and_then(Value::as_object);
    let image_file = image.and_then(|f| file(o, &format!("{path}.file"), f));
    let name = image_file
        .as_ref()
        .and_then(|f| f["name"].as_str())
        .map(str::to_string);
    o.observe(format!("{path}.pid"), 15, &pid.to_string());
    if let Some(c) = cmd {
        o.observe(format!("{path}.cmd_line"), 13, c);
    }
    if let Some(n) = &name {
        o.observe(format!("{path}.name"), 9, n);
    }
    let user = e
        .get("userAccount")
        .and_then(Value::as_object)
        .and_then(|a| user(o, &format!("{path}.user"), &UserParts::account(a)));
    let parent_pid = e.get("parentProcessId").and_then(Value::as_i64);
    let parent = parent_pid.map(|parent_pid| {
        let parent_file = e
            .get("parentProcessImageFile")
            .and_then(Value::as_object)
            .and_then(|f| file(o, &format!("{path}.parent_process.file"), f));
        o.observe(
            format!("{path}.parent_process.pid"),
            15,
            &parent_pid.to_string(),
        );
        Value::Object(object([
            ("pid", parent_pid.into()),
            (
                "name",
                parent_file.as_ref().and_then(|f| f["name"].as_str()).into(),
            ),
            ("file", parent_file.into()),
        ]))
    });
    let created = str_of(e, "processCreationDateTime")
        .and_then(|t| crate::time::Timestamp::parse(t).ok())
        .map(crate::time::Timestamp::unix_millis);
    Some(Value::Object(object([
        ("pid", pid.into()),
        ("cmd_line", cmd.into()),
        ("name", name.into()),
        ("file", image_file.into()),
        ("user", user.into()),
        ("parent_process", parent.into()),
        ("created_time", created.into()),
    ])))
}

/// An `analyzedMessageEvidence` as an OCSF `email`: sender, recipient, subject, message
/// id and the sending IP.
fn message(o: &mut Ocsf, path: &str, e: &Map<String, Value>) -> Option<Value> {
    let sender = e
        .get("p1Sender")
        .and_then(Value::as_object)
        .and_then(|s| str_of(s, "emailAddress"))
        .or(e
            .get("p2Sender")
            .and_then(Value::as_object)
            .and_then(|s| str_of(s, "emailAddress")))
        .filter(|a| valid_email(a));
    let to = str_of(e, "recipientEmailAddress").filter(|a| valid_email(a));
    let uid = str_of(e, "networkMessageId").or(str_of(e, "internetMessageId"));
    let subject = str_of(e, "subject");
    let ip = str_of(e, "senderIp").filter(|ip| valid_ip(ip));
    // OCSF needs a sender or a recipient to call it an e-mail.
    if sender.is_none() && to.is_none() {
        return None;
    }
    if let Some(s) = sender {
        o.observe(format!("{path}.from"), 5, s);
    }
    if let Some(t) = to {
        o.observe(format!("{path}.to[0]"), 5, t);
    }
    if let Some(i) = ip {
        o.observe(format!("{path}.x_originating_ip[0]"), 2, i);
    }
    if let Some(u) = uid {
        o.observe(format!("{path}.uid"), 41, u);
    }
    if let Some(s) = subject {
        o.observe(format!("{path}.subject"), 40, s);
    }
    Some(Value::Object(object([
        ("from", sender.into()),
        ("to", to.map(|t| vec![t]).into()),
        ("uid", uid.into()),
        ("subject", subject.into()),
        ("x_originating_ip", ip.map(|i| vec![i]).into()),
    ])))
}
