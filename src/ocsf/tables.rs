//! Graph enum values to OCSF ids and captions. Each table returns `(id, caption)`;
//! a Graph value the table does not know maps to OCSF "Other" (99) with the Graph value
//! as the caption, so a new Graph value is kept, not lost.

/// An OCSF enum id and its caption (or the source's own value for "Other").
pub type Entry = (u32, String);

/// Graph's enum members are camelCase; some reference pages print them capitalised
/// (`Active`, `TruePositive`): both are read alike.
fn camel(v: &str) -> String {
    let mut c = v.chars();
    c.next()
        .map(|first| first.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

fn other(v: &str) -> Entry {
    (99, v.to_string())
}

fn known(id: u32, caption: &str) -> Entry {
    (id, caption.to_string())
}

/// Defender `alertSeverity` (alerts, incidents) and Entra `riskLevel` to OCSF
/// `severity_id`. Entra's `none` is a record without risk (Informational); `hidden`
/// (no P2 licence) says nothing, Unknown.
pub fn severity(v: &str) -> Entry {
    match camel(v).as_str() {
        "unknown" | "hidden" => known(0, "Unknown"),
        "informational" | "none" => known(1, "Informational"),
        "low" => known(2, "Low"),
        "medium" => known(3, "Medium"),
        "high" => known(4, "High"),
        _ => other(v),
    }
}

/// Entra `riskLevel` to OCSF `risk_level_id` (0 Info … 3 High).
pub fn risk_level(v: &str) -> Option<Entry> {
    Some(match camel(v).as_str() {
        "none" => known(0, "Info"),
        "low" => known(1, "Low"),
        "medium" => known(2, "Medium"),
        "high" => known(3, "High"),
        // `hidden`: the tenant has no P2 licence, Graph does not say the level.
        "hidden" => return None,
        _ => other(v),
    })
}

/// Defender alert `status` to the finding `status_id`.
pub fn alert_status(v: &str) -> Entry {
    match camel(v).as_str() {
        "unknown" => known(0, "Unknown"),
        "new" => known(1, "New"),
        "inProgress" => known(2, "In Progress"),
        "resolved" => known(4, "Resolved"),
        _ => other(v),
    }
}

/// Defender incident `status` to the finding `status_id`: `active` is an open incident
/// nobody worked on yet (New); `awaitingAction` waits on someone (In Progress);
/// `redirected` was merged into another incident (Other, with the Graph value).
pub fn incident_status(v: &str) -> Entry {
    match camel(v).as_str() {
        "unknown" => known(0, "Unknown"),
        "active" => known(1, "New"),
        "inProgress" | "awaitingAction" => known(2, "In Progress"),
        "resolved" => known(4, "Resolved"),
        _ => other(v),
    }
}

/// Entra `riskState` (risky users, risk detections) to the finding `status_id`: a risk
/// still open is New, one confirmed compromised is being handled (In Progress), one
/// remediated, dismissed or confirmed safe is Resolved.
pub fn risk_state(v: &str) -> Entry {
    match camel(v).as_str() {
        "none" => known(0, "Unknown"),
        "atRisk" => known(1, "New"),
        "confirmedCompromised" => known(2, "In Progress"),
        "remediated" | "dismissed" | "confirmedSafe" => known(4, "Resolved"),
        _ => other(v),
    }
}

/// Defender `classification` (alerts, incidents) and Entra `riskState` conclusions to
/// OCSF `verdict_id`; `None` when there is no conclusion yet.
pub fn verdict(v: &str) -> Option<Entry> {
    Some(match camel(v).as_str() {
        "falsePositive" | "confirmedSafe" => known(1, "False Positive"),
        "truePositive" | "confirmedCompromised" => known(2, "True Positive"),
        "informationalExpectedActivity" => known(5, "Benign"),
        "unknown" | "atRisk" | "none" | "remediated" | "dismissed" => return None,
        _ => other(v),
    })
}

/// Entra audit `result` and sign-in outcome to the IAM `status_id`.
pub fn result(v: &str) -> Entry {
    match camel(v).as_str() {
        "success" => known(1, "Success"),
        "failure" | "timeout" => known(2, "Failure"),
        _ => other(v),
    }
}

/// A Defender evidence `verdict` to OCSF `verdict_id` of an evidence.
pub fn evidence_verdict(v: &str) -> Option<Entry> {
    Some(match camel(v).as_str() {
        "unknown" => return None,
        "suspicious" => known(4, "Suspicious"),
        "malicious" => known(8, "Security Risk"),
        "noThreatsFound" => known(5, "Benign"),
        _ => other(v),
    })
}
