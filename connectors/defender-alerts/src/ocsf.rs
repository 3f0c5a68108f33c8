//! `defender.alert` as an OCSF Detection Finding (2004): the alert is a detection by a
//! Defender product, with evidence, MITRE techniques and a triage status; the mapping
//! table is `docs/ocsf.md`.

use secops_connector::ocsf::builders::{
    FindingInfo, UserParts, attacks, finding_activity, identity, product, set_enum, user,
};
use secops_connector::ocsf::{Class, Mapping, Ocsf, Record, evidence, tables};

pub const MAPPING: Mapping = Mapping {
    name: "defender.alert → Detection Finding",
    map,
};

fn map(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    r.discard("@odata.type");
    let id = r.string("id").ok_or("the alert has no `id`")?;
    let tenant = r.string("tenantId");
    identity(o, &id, tenant, r.string("incidentId"));
    let service = r.string("serviceSource");
    let name = r
        .string("productName")
        .unwrap_or_else(|| "Microsoft Defender XDR".into());
    product(o, &name, service.as_deref());
    o.metadata
        .insert("source".into(), "security/alerts_v2".into());
    if let Some(s) = r.string("severity") {
        set_enum(o, "severity", tables::severity(&s));
    }
    let status = r.string("status");
    if let Some(s) = &status {
        set_enum(o, "status", tables::alert_status(s));
    }
    if let Some(v) = r.string("classification").and_then(|c| tables::verdict(&c)) {
        set_enum(o, "verdict", v);
    }
    if let Some(d) = r.string("determination") {
        o.set("status_detail", d);
    }
    let created = r.time("createdDateTime");
    let modified = r.time("lastUpdateDateTime");
    let (attacks, rejected) = attacks(r.array("mitreTechniques"));
    let info = FindingInfo {
        uid: id,
        uid_alt: r.string("providerAlertId"),
        title: r.string("title"),
        desc: r.string("description"),
        created_time: created,
        modified_time: modified,
        first_seen_time: r.time("firstActivityDateTime"),
        last_seen_time: r.time("lastActivityDateTime"),
        src_url: r.string("alertWebUrl"),
        types: r.string("category").into_iter().collect(),
        attacks,
    };
    o.set("finding_info", info.into_value());
    o.class(
        Class::DETECTION_FINDING,
        finding_activity(status.as_deref() == Some("resolved"), created, modified),
    );
    o.set("is_alert", true);
    if let Some(actions) = r.string("recommendedActions") {
        o.set("remediation", serde_json::json!({ "desc": actions }));
    }
    if let Some(a) = r.string("assignedTo") {
        let parts = UserParts {
            name: Some(&a),
            ..UserParts::default()
        };
        if let Some(u) = user(o, "assignee", &parts) {
            o.set("assignee", u);
        }
    }
    let items = r.array("evidence");
    let ev = evidence::evidences(o, &items);
    o.set("evidences", ev);
    if let Some(url) = r.string("incidentWebUrl") {
        // The alert's own portal page is `finding_info.src_url`; its incident's is kept here.
        o.set("src_url", url);
    }
    if !rejected.is_empty() {
        o.keep_unmapped("mitreTechniques", rejected.into());
    }
    Ok(())
}
