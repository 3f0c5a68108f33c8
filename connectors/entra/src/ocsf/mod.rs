//! Entra ID records as OCSF: risk detections and risky users as Detection Findings
//! (here), risky sign-ins as Authentication ([`sign_in`]), directory audits by category
//! and activity ([`audit`]). The mapping tables are `docs/ocsf.md`.

mod audit;
mod sign_in;

use secops_connector::ocsf::builders::{
    FindingInfo, UserParts, endpoint, finding_activity, identity, location, product, set_enum, user,
};
use secops_connector::ocsf::{Class, Mapping, Ocsf, Record, object, tables};
use serde_json::Value;

pub use audit::DIRECTORY_AUDIT;
pub use sign_in::RISKY_SIGN_IN;

pub const RISK_DETECTION: Mapping = Mapping {
    name: "entra.risk_detection → Detection Finding",
    map: risk_detection,
};

/// A risky user is Identity Protection's verdict that an account may be compromised,
/// with a lifecycle (at risk, remediated, dismissed, confirmed): a finding about the
/// user, who is both the affected resource and the evidence. OCSF 1.8.0 has no class of
/// a user's risk state (User Inventory Info reports inventory, not a detection to
/// triage; IAM Analysis Finding is about permissions), so Detection Finding it is.
pub const RISKY_USER: Mapping = Mapping {
    name: "entra.risky_user → Detection Finding",
    map: risky_user,
};

const PRODUCT: &str = "Microsoft Entra ID Protection";

/// The risk fields every Identity Protection record has: severity and risk level from
/// `riskLevel`, status and verdict from `riskState`, `riskDetail` as the status detail.
fn risk(r: &mut Record, o: &mut Ocsf) -> bool {
    if let Some(level) = r.string("riskLevel") {
        set_enum(o, "severity", tables::severity(&level));
        if let Some(entry) = tables::risk_level(&level) {
            set_enum(o, "risk_level", entry);
        }
    }
    let state = r.string("riskState");
    let state_str = state.as_deref().unwrap_or("none");
    set_enum(o, "status", tables::risk_state(state_str));
    if let Some(v) = tables::verdict(state_str) {
        set_enum(o, "verdict", v);
    }
    if let Some(d) = r.string("riskDetail") {
        o.set("status_detail", d);
    }
    matches!(state_str, "remediated" | "dismissed" | "confirmedSafe")
}

/// The user a record names by `userId`, `userPrincipalName` and `userDisplayName`.
fn record_user(r: &mut Record, o: &mut Ocsf, path: &str) -> Option<Value> {
    let (uid, name, display) = (
        r.string("userId"),
        r.string("userPrincipalName"),
        r.string("userDisplayName"),
    );
    let parts = UserParts {
        uid: uid.as_deref(),
        name: name.as_deref(),
        display_name: display.as_deref(),
        ..UserParts::default()
    };
    user(o, path, &parts)
}

fn risk_detection(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    let id = r.string("id").ok_or("the risk detection has no `id`")?;
    identity(o, &id, None, r.string("correlationId"));
    let source = r.string("source");
    product(o, PRODUCT, source.as_deref());
    let closed = risk(r, o);
    let event_type = r.string("riskEventType");
    let created = r.time("detectedDateTime");
    let modified = r.time("lastUpdatedDateTime");
    let info = FindingInfo {
        uid: id,
        uid_alt: r.string("requestId"),
        title: event_type.clone(),
        desc: r
            .string("activity")
            .map(|a| format!("Risk detected on a {a} activity")),
        created_time: created,
        modified_time: modified,
        first_seen_time: r.time("activityDateTime"),
        types: event_type.into_iter().collect(),
        ..FindingInfo::default()
    };
    o.set("finding_info", info.into_value());
    o.class(
        Class::DETECTION_FINDING,
        finding_activity(closed, created, modified),
    );
    let mut ev = serde_json::Map::new();
    if let Some(u) = record_user(r, o, "evidences[0].user") {
        ev.insert("user".into(), u);
    }
    if let Some(ip) = r.peek("ipAddress").map(str::to_string)
        && let Some(mut e) = endpoint(o, "evidences[0].src_endpoint", &ip, None)
    {
        r.discard("ipAddress");
        if let Some(l) = r.object("location").map(|l| location(&l))
            && !l.is_empty()
        {
            if let Some(c) = l.get("country").and_then(Value::as_str) {
                o.observe("evidences[0].src_endpoint.location.country".into(), 14, c);
            }
            e["location"] = l.into();
        }
        ev.insert("src_endpoint".into(), e);
    }
    if !ev.is_empty() {
        o.set("evidences", vec![Value::Object(ev)]);
    }
    Ok(())
}

fn risky_user(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    let id = r.string("id").ok_or("the risky user has no `id`")?;
    identity(o, &id, None, None);
    product(o, PRODUCT, None);
    let closed = risk(r, o);
    let modified = r.time("riskLastUpdatedDateTime");
    let (upn, display) = (r.string("userPrincipalName"), r.string("userDisplayName"));
    let parts = UserParts {
        uid: Some(&id),
        name: upn.as_deref(),
        display_name: display.as_deref(),
        ..UserParts::default()
    };
    let u = user(o, "evidences[0].user", &parts);
    let state = o_status(o);
    let info = FindingInfo {
        uid: id.clone(),
        title: Some(format!(
            "Risky user{}",
            upn.as_deref().map(|u| format!(" {u}")).unwrap_or_default()
        )),
        desc: state,
        modified_time: modified,
        types: vec!["riskyUser".into()],
        ..FindingInfo::default()
    };
    o.set("finding_info", info.into_value());
    // A risky user has no creation time of its own: each risk change is an update.
    o.class(
        Class::DETECTION_FINDING,
        finding_activity(closed, None, modified),
    );
    o.observe("resources[0].uid".into(), 10, &id);
    o.set(
        "resources",
        vec![Value::Object(object([
            ("uid", id.as_str().into()),
            ("name", upn.as_deref().into()),
            ("type", "User".into()),
        ]))],
    );
    if let Some(u) = u {
        o.set("evidences", vec![serde_json::json!({ "user": u })]);
    }
    Ok(())
}

/// The finding's status caption, as a description of a risky user's state.
fn o_status(o: &mut Ocsf) -> Option<String> {
    o.get_mut("status")
        .and_then(|s| s.as_str())
        .map(|s| format!("User risk state: {s}"))
}
