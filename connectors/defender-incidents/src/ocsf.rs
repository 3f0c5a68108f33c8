//! `defender.incident` as an OCSF Incident Finding (2005): the incident's own
//! `finding_info` first in `finding_info_list`, its alerts (with `include_alerts`) as
//! related findings (`related_events`) and their evidence as observables; the mapping
//! table is `docs/ocsf.md`.

use secops_connector::ocsf::builders::{
    FindingInfo, UserParts, attacks, finding_activity, identity, product, set_enum, user,
};
use secops_connector::ocsf::{Class, Mapping, Ocsf, Record, evidence, object, tables};
use serde_json::{Value, json};

pub const MAPPING: Mapping = Mapping {
    name: "defender.incident → Incident Finding",
    map,
};

fn map(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    r.discard("@odata.type");
    let id = r.string("id").ok_or("the incident has no `id`")?;
    identity(o, &id, r.string("tenantId"), None);
    product(o, "Microsoft Defender XDR", None);
    if let Some(s) = r.string("severity") {
        set_enum(o, "severity", tables::severity(&s));
    }
    let status = r.string("status");
    set_enum(
        o,
        "status",
        tables::incident_status(status.as_deref().unwrap_or("unknown")),
    );
    if let Some(v) = r.string("classification").and_then(|c| tables::verdict(&c)) {
        set_enum(o, "verdict", v);
    }
    if let Some(d) = r.string("determination") {
        o.set("status_detail", d);
    }
    let created = r.time("createdDateTime");
    let modified = r.time("lastUpdateDateTime");
    let url = r.string("incidentWebUrl");
    o.set("src_url", url.clone());
    let title = r.string("displayName");
    let desc = r.string("description");
    o.set("desc", desc.clone());
    match r.string("assignedTo") {
        Some(a) => {
            let parts = UserParts {
                name: Some(&a),
                ..UserParts::default()
            };
            if let Some(u) = user(o, "assignee", &parts) {
                o.set("assignee", u);
            }
        }
        // OCSF requires an assignee or an assignee group on an Incident Finding; Graph
        // leaves `assignedTo` null until someone takes the incident: the group says so.
        None => o.set(
            "assignee_group",
            json!({"name": "Unassigned", "desc": "Graph: assignedTo is null"}),
        ),
    }
    let mut tags: Vec<Value> = r.array("customTags");
    tags.extend(r.array("systemTags"));
    let tags: Vec<Value> = tags
        .into_iter()
        .filter_map(|t| t.as_str().map(|name| json!({"name": "tag", "value": name})))
        .collect();

    let alerts = r.array("alerts");
    let mut related = Vec::new();
    let mut all_attacks = Vec::new();
    for a in &alerts {
        let Some(a) = a.as_object() else { continue };
        let Some(uid) = a
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.trim().is_empty())
        else {
            continue;
        };
        let techniques = a
            .get("mitreTechniques")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let (alert_attacks, _) = attacks(techniques);
        for at in &alert_attacks {
            if !all_attacks.contains(at) {
                all_attacks.push(at.clone());
            }
        }
        let time = |k: &str| {
            a.get(k)
                .and_then(Value::as_str)
                .and_then(|t| secops_connector::time::Timestamp::parse(t).ok())
                .map(secops_connector::time::Timestamp::unix_millis)
        };
        let severity = text(a, "severity").map(tables::severity);
        // The alert's evidence is named in the incident's observables; its own OCSF
        // form is the alert event.
        let items = a
            .get("evidence")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let _ = evidence::evidences(o, &items);
        related.push(Value::Object(object([
            ("uid", uid.into()),
            ("title", text(a, "title").into()),
            ("type", "Detection Finding".into()),
            ("type_uid", 200400.into()),
            ("created_time", time("createdDateTime").into()),
            ("modified_time", time("lastUpdateDateTime").into()),
            ("severity_id", severity.as_ref().map(|s| s.0).into()),
            ("severity", severity.map(|s| s.1).into()),
            ("status", text(a, "status").into()),
            ("product_uid", text(a, "serviceSource").into()),
            ("attacks", alert_attacks.into()),
        ])));
    }
    let mut info = FindingInfo {
        uid: id,
        title,
        desc,
        created_time: created,
        modified_time: modified,
        src_url: url,
        attacks: all_attacks,
        ..FindingInfo::default()
    }
    .into_value();
    if !related.is_empty() {
        info["related_events_count"] = related.len().into();
        info["related_events"] = related.into();
    }
    o.set("finding_info_list", vec![info]);
    if !tags.is_empty() {
        o.metadata.insert("tags".into(), tags.into());
    }
    o.class(
        Class::INCIDENT_FINDING,
        finding_activity(status.as_deref() == Some("resolved"), created, modified),
    );
    Ok(())
}

/// A string field of an expanded alert; other types are left out (the alert's own event
/// carries them).
fn text<'a>(a: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    a.get(key).and_then(Value::as_str)
}
