//! `entra.risky_sign_in` as an OCSF Authentication (3002) Logon: who signed in, to which
//! app, from where and with what outcome, with Identity Protection's risk fields.

use secops_connector::ocsf::builders::{endpoint, identity, location, product, set_enum};
use secops_connector::ocsf::record::str_of;
use secops_connector::ocsf::{Class, Mapping, Ocsf, Record, object, tables};
use serde_json::{Value, json};

pub const RISKY_SIGN_IN: Mapping = Mapping {
    name: "entra.risky_sign_in → Authentication",
    map,
};

fn map(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    let id = r.string("id").ok_or("the sign-in has no `id`")?;
    identity(o, &id, None, r.string("correlationId"));
    product(o, "Microsoft Entra ID", Some("Sign-in logs"));
    o.class(Class::AUTHENTICATION, (1, "Logon"));
    // The severity of a risky sign-in is its aggregated risk (what Identity Protection
    // concluded), else the risk during the sign-in.
    let aggregated = r.string("riskLevelAggregated");
    let during = r.string("riskLevelDuringSignIn");
    if let Some(level) = aggregated.as_deref().or(during.as_deref()) {
        set_enum(o, "severity", tables::severity(level));
    }
    if let Some(entry) = during.as_deref().and_then(tables::risk_level) {
        set_enum(o, "risk_level", entry);
    }
    let risk_types: Vec<String> = r
        .array("riskEventTypes_v2")
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut details = risk_types.join(", ");
    for key in ["riskState", "riskDetail"] {
        if let Some(v) = r.string(key) {
            details.push_str(&format!(
                "{}{key}: {v}",
                if details.is_empty() { "" } else { "; " }
            ));
        }
    }
    o.set("risk_details", details);
    if let Some(a) = aggregated {
        o.keep_unmapped("riskLevelAggregated", a.into());
    }

    if let Some(status) = r.object("status") {
        let code = status.get("errorCode").and_then(Value::as_i64);
        let outcome = match code {
            Some(0) => "success",
            Some(_) => "failure",
            None => "unknown",
        };
        set_enum(o, "status", tables::result(outcome));
        if let Some(c) = code {
            o.set("status_code", c.to_string());
        }
        if code != Some(0) {
            o.set("status_detail", str_of(&status, "failureReason"));
        }
    }

    let (uid, name, display) = (
        r.string("userId"),
        r.string("userPrincipalName"),
        r.string("userDisplayName"),
    );
    let parts = secops_connector::ocsf::builders::UserParts {
        uid: uid.as_deref(),
        name: name.as_deref(),
        display_name: display.as_deref(),
        ..Default::default()
    };
    // OCSF requires the user of an Authentication; a sign-in always names one, but a
    // record that does not is still kept, as an unknown user.
    let user = secops_connector::ocsf::builders::user(o, "user", &parts)
        .unwrap_or_else(|| json!({"name": "unknown"}));
    o.set("user", user);

    let app = r.string("appDisplayName");
    let app_id = r.string("appId");
    if let Some(a) = &app_id {
        o.observe("service.uid".into(), 10, a);
    }
    let resource = r.string("resourceDisplayName");
    let service = object([
        (
            "name",
            app.or(resource)
                .unwrap_or_else(|| "Microsoft Entra ID".into())
                .into(),
        ),
        ("uid", app_id.into()),
    ]);
    o.set("service", Value::Object(service));

    if let Some(ip) = r.peek("ipAddress").map(str::to_string)
        && let Some(mut e) = endpoint(o, "src_endpoint", &ip, None)
    {
        r.discard("ipAddress");
        if let Some(l) = r.object("location").map(|l| location(&l))
            && !l.is_empty()
        {
            if let Some(c) = l.get("country").and_then(Value::as_str) {
                o.observe("src_endpoint.location.country".into(), 14, c);
            }
            e["location"] = l.into();
        }
        o.set("src_endpoint", e);
    }
    if let Some(d) = r.object("deviceDetail") {
        let uid = str_of(&d, "deviceId");
        let name = str_of(&d, "displayName");
        if uid.is_some() || name.is_some() {
            if let Some(u) = uid {
                o.observe("device.uid".into(), 47, u);
            }
            o.set(
                "device",
                Value::Object(object([
                    ("type_id", 0.into()),
                    ("uid", uid.into()),
                    ("name", name.into()),
                    (
                        "is_compliant",
                        d.get("isCompliant").and_then(Value::as_bool).into(),
                    ),
                    (
                        "is_managed",
                        d.get("isManaged").and_then(Value::as_bool).into(),
                    ),
                ])),
            );
        }
    }
    if let Some(i) = r.take("isInteractive").and_then(|v| v.as_bool()) {
        o.set(
            "logon_type",
            if i { "Interactive" } else { "Non-interactive" },
        );
    }
    match r.string("authenticationRequirement").as_deref() {
        Some("multiFactorAuthentication") => o.set("is_mfa", true),
        Some("singleFactorAuthentication") => o.set("is_mfa", false),
        Some(other) => o.keep_unmapped("authenticationRequirement", other.into()),
        None => {}
    }
    if let Some(ua) = r.string("userAgent") {
        o.observe("http_request.user_agent".into(), 16, &ua);
        o.set("http_request", json!({ "user_agent": ua }));
    }
    Ok(())
}
