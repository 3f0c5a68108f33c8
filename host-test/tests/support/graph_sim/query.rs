//! `$filter` as Graph takes it from the connectors: time comparisons (`ge`, `gt`, `le`,
//! `lt`) on a time property of the list's type joined by `and`, and string equality terms
//! (`eq`, joined by `or` inside parentheses). A property the type lacks is refused with
//! Graph's own message; a quoted datetime is refused as signIns refuse it.

use std::time::SystemTime;

use serde_json::Value;

use super::records::{
    ALERTS, DIRECTORY_AUDITS, INCIDENTS, RISK_DETECTIONS, RISKY_USERS, Record, SIGN_INS,
};

/// The OData type behind a list, its properties and which of them are times.
pub struct EntityType {
    pub name: &'static str,
    pub properties: &'static [&'static str],
    pub times: &'static [&'static str],
}

pub fn entity_type(list: &str) -> EntityType {
    match list {
        ALERTS => EntityType {
            name: "microsoft.graph.security.alert",
            properties: &[
                "id",
                "title",
                "description",
                "status",
                "severity",
                "serviceSource",
                "detectionSource",
                "classification",
                "determination",
                "assignedTo",
                "incidentId",
                "category",
                "providerAlertId",
                "tenantId",
            ],
            times: &[
                "createdDateTime",
                "lastUpdateDateTime",
                "firstActivityDateTime",
                "lastActivityDateTime",
                "resolvedDateTime",
            ],
        },
        INCIDENTS => EntityType {
            name: "microsoft.graph.security.incident",
            properties: &[
                "id",
                "displayName",
                "description",
                "status",
                "severity",
                "classification",
                "determination",
                "assignedTo",
                "tenantId",
                "incidentWebUrl",
                "redirectIncidentId",
                "customTags",
                "summary",
            ],
            times: &["createdDateTime", "lastUpdateDateTime"],
        },
        DIRECTORY_AUDITS => EntityType {
            name: "microsoft.graph.directoryAudit",
            properties: &[
                "id",
                "category",
                "activityDisplayName",
                "result",
                "resultReason",
                "loggedByService",
                "operationType",
                "correlationId",
                "initiatedBy",
                "targetResources",
            ],
            times: &["activityDateTime"],
        },
        SIGN_INS => EntityType {
            name: "microsoft.graph.signIn",
            properties: &[
                "id",
                "userPrincipalName",
                "userId",
                "appId",
                "appDisplayName",
                "ipAddress",
                "riskLevelDuringSignIn",
                "riskLevelAggregated",
                "riskState",
                "riskDetail",
                "status",
                "conditionalAccessStatus",
                "clientAppUsed",
            ],
            times: &["createdDateTime"],
        },
        RISKY_USERS => EntityType {
            name: "microsoft.graph.riskyUser",
            properties: &[
                "id",
                "riskLevel",
                "riskState",
                "riskDetail",
                "userPrincipalName",
                "userDisplayName",
                "isDeleted",
                "isProcessing",
            ],
            times: &["riskLastUpdatedDateTime"],
        },
        RISK_DETECTIONS => EntityType {
            name: "microsoft.graph.riskDetection",
            properties: &[
                "id",
                "riskEventType",
                "riskState",
                "riskLevel",
                "riskDetail",
                "userId",
                "userPrincipalName",
                "ipAddress",
                "source",
                "detectionTimingType",
                "activity",
            ],
            times: &[
                "activityDateTime",
                "detectedDateTime",
                "lastUpdatedDateTime",
            ],
        },
        other => panic!("no simulated type for list {other}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ge,
    Gt,
    Le,
    Lt,
}

#[derive(Debug)]
enum Clause {
    Time {
        field: String,
        op: Op,
        at: SystemTime,
    },
    /// Any of these `field eq 'value'` terms.
    AnyEq(Vec<(String, String)>),
    /// A parenthesised clause the simulator does not read: taken as matching everything.
    All,
}

/// A parsed `$filter`.
#[derive(Debug, Default)]
pub struct Filter {
    clauses: Vec<Clause>,
}

/// Splits `s` at ` <word> ` outside parentheses and quotes.
fn split_top(s: &str, word: &str) -> Vec<String> {
    let sep = format!(" {word} ");
    let (mut parts, mut depth, mut quoted, mut start) = (vec![], 0i32, false, 0);
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            _ if !quoted && depth == 0 && s[i..].starts_with(&sep) => {
                parts.push(s[start..i].trim().to_string());
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(s[start..].trim().to_string());
    parts
}

/// Graph's answer to a clause it cannot take: the message of its 400.
fn invalid(detail: &str) -> String {
    format!("Invalid filter clause: {detail}")
}

impl Filter {
    pub fn parse(filter: &str, list: &str) -> Result<Filter, String> {
        let ty = entity_type(list);
        let known = |f: &str| ty.properties.contains(&f) || ty.times.contains(&f);
        let missing = |f: &str| {
            invalid(&format!(
                "Could not find a property named '{f}' on type '{}'.",
                ty.name
            ))
        };
        let mut clauses = vec![];
        for part in split_top(filter.trim(), "and") {
            if let Some(inner) = part.strip_prefix('(').and_then(|p| p.strip_suffix(')')) {
                let mut terms = vec![];
                for term in split_top(inner, "or") {
                    match term.splitn(3, ' ').collect::<Vec<_>>()[..] {
                        [f, "eq", v]
                            if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') =>
                        {
                            if !known(f) {
                                return Err(missing(f));
                            }
                            terms.push((f.to_string(), v[1..v.len() - 1].to_string()));
                        }
                        _ => {
                            terms.clear();
                            break;
                        }
                    }
                }
                clauses.push(if terms.is_empty() {
                    Clause::All
                } else {
                    Clause::AnyEq(terms)
                });
                continue;
            }
            let [field, op, value] = part.splitn(3, ' ').collect::<Vec<_>>()[..] else {
                return Err(invalid(&format!(
                    "the clause '{part}' is not <property> <operator> <value>"
                )));
            };
            if !known(field) {
                return Err(missing(field));
            }
            if !ty.times.contains(&field) {
                if op == "eq"
                    && value.starts_with('\'')
                    && value.ends_with('\'')
                    && value.len() >= 2
                {
                    clauses.push(Clause::AnyEq(vec![(
                        field.to_string(),
                        value[1..value.len() - 1].to_string(),
                    )]));
                    continue;
                }
                return Err(invalid(&format!(
                    "the simulator compares only time properties and 'eq' on strings ('{part}')"
                )));
            }
            let op = match op {
                "ge" => Op::Ge,
                "gt" => Op::Gt,
                "le" => Op::Le,
                "lt" => Op::Lt,
                other => {
                    return Err(invalid(&format!(
                        "the operator '{other}' is not one the simulator takes on '{field}'"
                    )));
                }
            };
            // A quoted datetime is a string, not a DateTimeOffset (docs #14173).
            if value.starts_with('\'') {
                return Err(invalid(&format!(
                    "A binary operator with incompatible types was detected. Found operand types \
                     'Edm.DateTimeOffset' and 'Edm.String' for operator kind '{op:?}'."
                )));
            }
            let at = humantime::parse_rfc3339(value)
                .map_err(|e| invalid(&format!("'{value}' is not a date and time: {e}")))?;
            clauses.push(Clause::Time {
                field: field.to_string(),
                op,
                at,
            });
        }
        Ok(Filter { clauses })
    }

    /// Whether the time clauses hold for `r` (cheap: no rendering).
    pub fn times_match(&self, r: &Record) -> bool {
        self.clauses.iter().all(|c| match c {
            Clause::Time { field, op, at } => match r.time_of(field) {
                None => false,
                Some(t) => match op {
                    Op::Ge => t >= *at,
                    Op::Gt => t > *at,
                    Op::Le => t <= *at,
                    Op::Lt => t < *at,
                },
            },
            _ => true,
        })
    }

    /// Whether the string terms hold for the record as stored (`rendered` with every
    /// enum member as itself).
    pub fn terms_match(&self, rendered: &Value) -> bool {
        self.clauses.iter().all(|c| match c {
            Clause::AnyEq(terms) => terms
                .iter()
                .any(|(f, v)| rendered.get(f).and_then(Value::as_str) == Some(v.as_str())),
            _ => true,
        })
    }

    pub fn has_terms(&self) -> bool {
        self.clauses.iter().any(|c| matches!(c, Clause::AnyEq(_)))
    }
}
