//! One page of a list: `$top` and its caps, `$expand`, `$filter`, `$skip` or
//! `$skiptoken`, the quiet end of deep paging, clamped and short pages, and the next link
//! Graph writes (dangling on riskyUsers, with a rewritten `$top`).

use std::time::SystemTime;

use serde_json::{Value, json};

use super::query::Filter;
use super::records::{
    ALERTS, DIRECTORY_AUDITS, INCIDENTS, RISK_DETECTIONS, RISKY_USERS, Record, SIGN_INS,
};
use super::{Answer, State, answer, graph_error, rfc3339};

/// Graph's page size where the request sends no `$top`.
fn default_top(list: &str) -> usize {
    match list {
        DIRECTORY_AUDITS | SIGN_INS => 1000,
        RISK_DETECTIONS | RISKY_USERS => 20,
        _ => 100,
    }
}

/// A query value as Graph writes it into a next link.
fn enc(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A signIns skip token: opaque to the client, the position and page number to us.
fn skip_token(skip: usize, page: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("sim:{skip}:{page}"))
}

fn read_skip_token(token: &str) -> Option<(usize, usize)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.strip_prefix("sim:")?.split(':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A 400 the way Graph words a `$top` over the list's limit (note the empty code).
fn top_exceeded(cap: usize, asked: usize) -> Value {
    json!({"error": {
        "code": "",
        "message": format!("The query specified in the URI is not valid. The limit of '{cap}' for Top query has been exceeded. The value from the incoming request is '{asked}'."),
        "details": [],
        "innerError": {"date": rfc3339(SystemTime::now()), "request-id": "00000000-0000-4000-8000-000000000001",
            "client-request-id": "00000000-0000-4000-8000-000000000002"}
    }})
}

/// One page of `list`.
pub(super) fn page(
    s: &mut State,
    base: &str,
    list: &'static str,
    url: &url::Url,
    prefer_unknown: bool,
    missing_id: bool,
) -> Answer {
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let bad = |message: String| answer(400, graph_error("BadRequest", &message));
    let asked = match get("$top").map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return bad(format!(
                "Invalid $top value '{}'.",
                get("$top").unwrap_or("")
            ));
        }
    };
    if let (Some(n), Some(&cap)) = (asked, s.behaviour.top_caps.get(list))
        && n > cap
    {
        s.counters.top_refused += 1;
        return answer(400, top_exceeded(cap, n));
    }
    let expand = list == INCIDENTS
        && get("$expand").is_some_and(|e| e.split(',').any(|x| x.trim() == "alerts"));
    if expand && s.behaviour.expand_fails {
        s.counters.expand_failures += 1;
        return answer(
            500,
            graph_error("InternalServerError", "An internal server error occurred."),
        );
    }
    // Without `$filter` (an older validation probe): every record.
    let filter = match get("$filter").map(|f| Filter::parse(f, list)) {
        None => Filter::default(),
        Some(Ok(f)) => f,
        Some(Err(message)) => {
            s.counters.bad_filters += 1;
            return bad(message);
        }
    };
    let (skip, page_no, via_token) = match get("$skiptoken") {
        Some(token) => match read_skip_token(token) {
            Some((skip, page)) => (skip, page, true),
            None => return bad("Invalid Skip Token.".into()),
        },
        None => match get("$skip").map(str::parse::<usize>) {
            None => (0, 0, false),
            Some(Ok(n)) => (n, 0, false),
            Some(Err(_)) => return bad("Invalid $skip value.".into()),
        },
    };
    if list == SIGN_INS && via_token {
        s.next_link_requests += 1;
        if let Some(n) = s.behaviour.skip_token_faults
            && (s.next_link_requests - 1).is_multiple_of(n.max(1))
        {
            s.counters.skip_token_faults += 1;
            return if s.counters.skip_token_faults % 2 == 1 {
                bad("Invalid Skip Token.".into())
            } else {
                answer(
                    503,
                    graph_error(
                        "ServiceUnavailable",
                        "The service is temporarily unavailable.",
                    ),
                )
            };
        }
    }
    let set = s.set_of(list);
    let mut matching: Vec<&Record> = s
        .sets
        .get(&set)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| filter.times_match(r))
        .filter(|r| !filter.has_terms() || filter.terms_match(&r.json_for(list, set, true, false)))
        .collect();
    matching.sort_by(|a, b| {
        b.sort_time(list)
            .cmp(&a.sort_time(list))
            .then(a.id.cmp(&b.id))
    });
    if get("$orderby").is_some_and(|o| o.ends_with(" asc")) {
        matching.reverse();
    }
    let total = matching.len();
    let count =
        (get("$count") == Some("true") && matches!(list, ALERTS | INCIDENTS)).then_some(total);
    let context = format!(
        "{base}/v1.0/$metadata#{}",
        url.path().trim_start_matches("/v1.0/")
    );
    let mut body = json!({"@odata.context": context});
    if let Some(n) = count {
        body["@odata.count"] = json!(n);
    }
    if matches!(list, ALERTS | INCIDENTS) && s.behaviour.skip_limit.is_some_and(|l| skip >= l) {
        s.counters.deep_skips += 1;
        body["value"] = json!([]);
        return answer(200, body);
    }
    if list == RISKY_USERS && s.behaviour.dangling_next_link && skip > 0 && skip >= total {
        s.counters.dangling_followed += 1;
        return answer(400, json!({"error": {"code": "BadRequest", "message": ""}}));
    }
    let top = asked.unwrap_or_else(|| default_top(list));
    let mut take = top.min(s.behaviour.page_max);
    let clamp = s.behaviour.clamp.get(list).copied();
    let clamped = clamp.is_some_and(|c| c < take);
    if let Some(c) = clamp {
        take = take.min(c);
    }
    let remaining = total.saturating_sub(skip);
    let mut served = take.min(remaining);
    if list == SIGN_INS && s.behaviour.short_pages && page_no.is_multiple_of(2) && served > 1 {
        served /= 2;
        s.counters.short_pages += 1;
    }
    if clamped && remaining > served {
        s.counters.clamped_pages += 1;
    }
    // A clamped page still moves the next link on by what was asked.
    let advance = if clamped { top } else { served };
    let dangling = list == RISKY_USERS
        && s.behaviour.dangling_next_link
        && served > 0
        && served == top
        && skip + served == total;
    let mut records: Vec<Value> = matching[skip.min(total)..skip.min(total) + served]
        .iter()
        .map(|r| r.json_for(list, set, prefer_unknown, expand))
        .collect();
    if missing_id {
        let now = rfc3339(SystemTime::now());
        records.insert(
            0,
            json!({"createdDateTime": now, "lastUpdateDateTime": now, "title": "no id"}),
        );
    }
    body["value"] = json!(records);
    if skip + advance < total || dangling {
        let mut parts: Vec<String> = q
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "$skip" | "$skiptoken" | "$top"))
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect();
        let next_top = match s.behaviour.next_link_top {
            Some(t) if list == RISKY_USERS => t.min(top),
            _ => top,
        };
        if asked.is_some() || next_top != top {
            parts.push(format!("$top={next_top}"));
        }
        parts.push(if list == SIGN_INS {
            format!("$skiptoken={}", skip_token(skip + advance, page_no + 1))
        } else {
            format!("$skip={}", skip + advance)
        });
        let link_base = s.behaviour.next_link_base.as_deref().unwrap_or(base);
        body["@odata.nextLink"] = json!(format!("{link_base}{}?{}", url.path(), parts.join("&")));
    }
    answer(200, body)
}
