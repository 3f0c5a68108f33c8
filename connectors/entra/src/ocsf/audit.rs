//! `entra.directory_audit` by `category` and `activityDisplayName`: account changes as
//! Account Change (3001), group and role membership as Group Management (3006), other
//! changes to directory objects as Entity Management (3004), and whatever else (or a
//! record missing what those classes require) as API Activity (6003), the safe fallback:
//! every audit is an operation some actor called on the directory's API.

use secops_connector::ocsf::builders::{UserParts, endpoint, identity, product, set_enum, user};
use secops_connector::ocsf::record::str_of;
use secops_connector::ocsf::{Class, Mapping, Ocsf, Record, object, tables};
use serde_json::{Map, Value, json};

pub const DIRECTORY_AUDIT: Mapping = Mapping {
    name: "entra.directory_audit → Account Change, Group Management, Entity Management or API Activity",
    map,
};

/// What an audit activity is in OCSF: the class, and the activity within it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Account(u32, &'static str),
    Group(u32, &'static str),
    Entity(u32, &'static str),
}

/// `(category, activityDisplayName)` → class and activity. Names are Entra's audit
/// activity names (the audit log activities reference); matched exactly.
const TABLE: &[(&str, &str, Target)] = &[
    ("UserManagement", "Add user", Target::Account(1, "Create")),
    (
        "UserManagement",
        "Delete user",
        Target::Account(6, "Delete"),
    ),
    (
        "UserManagement",
        "Hard Delete user",
        Target::Account(6, "Delete"),
    ),
    (
        "UserManagement",
        "Disable account",
        Target::Account(5, "Disable"),
    ),
    (
        "UserManagement",
        "Enable account",
        Target::Account(2, "Enable"),
    ),
    (
        "UserManagement",
        "Reset user password",
        Target::Account(4, "Password Reset"),
    ),
    (
        "UserManagement",
        "Reset password (by admin)",
        Target::Account(4, "Password Reset"),
    ),
    (
        "UserManagement",
        "Change user password",
        Target::Account(3, "Password Change"),
    ),
    (
        "UserManagement",
        "Change password (self-service)",
        Target::Account(3, "Password Change"),
    ),
    ("UserManagement", "Update user", Target::Entity(3, "Update")),
    (
        "UserManagement",
        "Restore user",
        Target::Entity(1, "Create"),
    ),
    (
        "UserManagement",
        "User registered security info",
        Target::Account(10, "MFA Factor Enable"),
    ),
    (
        "UserManagement",
        "User deleted security info",
        Target::Account(11, "MFA Factor Disable"),
    ),
    (
        "GroupManagement",
        "Add member to group",
        Target::Group(3, "Add User"),
    ),
    (
        "GroupManagement",
        "Remove member from group",
        Target::Group(4, "Remove User"),
    ),
    ("GroupManagement", "Add group", Target::Group(6, "Create")),
    (
        "GroupManagement",
        "Delete group",
        Target::Group(5, "Delete"),
    ),
    (
        "GroupManagement",
        "Update group",
        Target::Entity(3, "Update"),
    ),
    (
        "GroupManagement",
        "Add owner to group",
        Target::Group(3, "Add User"),
    ),
    (
        "GroupManagement",
        "Remove owner from group",
        Target::Group(4, "Remove User"),
    ),
    // A directory role is a group of privileges: assigning one is adding its member.
    (
        "RoleManagement",
        "Add member to role",
        Target::Group(3, "Add User"),
    ),
    (
        "RoleManagement",
        "Remove member from role",
        Target::Group(4, "Remove User"),
    ),
    (
        "RoleManagement",
        "Add eligible member to role",
        Target::Group(3, "Add User"),
    ),
    (
        "RoleManagement",
        "Remove eligible member from role",
        Target::Group(4, "Remove User"),
    ),
];

/// Activities the table does not name, in categories of directory objects: an Entity
/// Management activity by Graph's `operationType`.
const ENTITY_CATEGORIES: &[&str] = &[
    "UserManagement",
    "GroupManagement",
    "RoleManagement",
    "ApplicationManagement",
    "Policy",
    "DeviceManagement",
    "DirectoryManagement",
    "AdministrativeUnit",
    "Agreement",
    "EntitlementManagement",
];

fn target(category: &str, activity: &str, operation: &str) -> Option<Target> {
    // The activity decides; the category only breaks a tie. Records file activities
    // under other categories than one expects (the reference's example "Add member to
    // group" is under UserManagement).
    let named = |same_category: bool| {
        TABLE.iter().find(|(c, a, _)| {
            (!same_category || *c == category) && a.eq_ignore_ascii_case(activity)
        })
    };
    if let Some((_, _, t)) = named(true).or_else(|| named(false)) {
        return Some(*t);
    }
    if !ENTITY_CATEGORIES.contains(&category) {
        return None;
    }
    Some(match operation {
        "Add" => Target::Entity(1, "Create"),
        "Update" | "Assign" | "Unassign" => Target::Entity(3, "Update"),
        "Delete" => Target::Entity(4, "Delete"),
        _ => return None,
    })
}

/// The API Activity of an operation Graph names by `operationType`.
fn api_activity(operation: &str) -> (u32, &'static str) {
    match operation {
        "Add" => (1, "Create"),
        "Update" | "Assign" | "Unassign" => (3, "Update"),
        "Delete" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

fn map(r: &mut Record, o: &mut Ocsf) -> Result<(), String> {
    let id = r.string("id").ok_or("the audit record has no `id`")?;
    identity(o, &id, None, r.string("correlationId"));
    let service = r.string("loggedByService");
    product(o, "Microsoft Entra ID", Some("Audit logs"));
    if let Some(s) = &service {
        o.metadata.insert("log_source".into(), s.as_str().into());
    }
    set_enum(o, "severity", (1, "Informational".into()));
    let result = r.string("result");
    set_enum(
        o,
        "status",
        tables::result(result.as_deref().unwrap_or("unknown")),
    );
    o.set("status_detail", r.string("resultReason"));
    let category = r.string("category").unwrap_or_default();
    let activity = r.string("activityDisplayName").unwrap_or_default();
    let operation = r.string("operationType").unwrap_or_default();
    o.set("message", activity.clone());
    o.metadata
        .insert("event_code".into(), format!("{category}/{activity}").into());
    actor(r, o);
    let targets = r.array("targetResources");
    let placed = match target(&category, &activity, &operation) {
        Some(Target::Account(id, name)) => account(o, &targets, (id, name)),
        Some(Target::Group(id, name)) => group(o, &targets, (id, name)),
        Some(Target::Entity(id, name)) => entity(o, &targets, (id, name)),
        None => false,
    };
    if !placed {
        fallback(o, &targets, &activity, &operation, service.as_deref());
    }
    let details = r.array("additionalDetails");
    if !details.is_empty() {
        o.keep_unmapped("additionalDetails", details.into());
    }
    Ok(())
}

/// `initiatedBy`: the user (with the IP they came from) or the app that acted.
fn actor(r: &mut Record, o: &mut Ocsf) {
    let Some(by) = r.object("initiatedBy") else {
        return;
    };
    let mut actor = Map::new();
    if let Some(u) = by.get("user").and_then(Value::as_object) {
        let parts = UserParts {
            uid: str_of(u, "id"),
            name: str_of(u, "userPrincipalName"),
            display_name: str_of(u, "displayName"),
            ..UserParts::default()
        };
        if let Some(user) = user(o, "actor.user", &parts) {
            actor.insert("user".into(), user);
        }
        if let Some(ip) = str_of(u, "ipAddress")
            && let Some(e) = endpoint(o, "src_endpoint", ip, None)
        {
            o.set("src_endpoint", e);
        }
    }
    if let Some(a) = by.get("app").and_then(Value::as_object) {
        let uid = str_of(a, "appId").or(str_of(a, "servicePrincipalId"));
        let name = str_of(a, "displayName").or(str_of(a, "servicePrincipalName"));
        if let Some(u) = uid {
            o.observe("actor.app_uid".into(), 10, u);
        }
        actor.insert("app_uid".into(), uid.into());
        actor.insert("app_name".into(), name.into());
        actor.retain(|_, v| !v.is_null());
    }
    if !actor.is_empty() {
        o.set("actor", Value::Object(actor));
    }
}

/// Target resources of a type (`User`, `Group`, `Role`, …).
fn of_type<'a>(
    targets: &'a [Value],
    types: &[&str],
) -> impl Iterator<Item = &'a Map<String, Value>> {
    targets
        .iter()
        .filter_map(Value::as_object)
        .filter(move |t| {
            str_of(t, "type").is_some_and(|ty| types.iter().any(|x| x.eq_ignore_ascii_case(ty)))
        })
}

fn target_user(o: &mut Ocsf, path: &str, t: &Map<String, Value>) -> Option<Value> {
    let parts = UserParts {
        uid: str_of(t, "id"),
        name: str_of(t, "userPrincipalName").or(str_of(t, "displayName")),
        display_name: str_of(t, "displayName"),
        ..UserParts::default()
    };
    user(o, path, &parts)
}

fn account(o: &mut Ocsf, targets: &[Value], activity: (u32, &'static str)) -> bool {
    let Some(t) = of_type(targets, &["User"]).next() else {
        return false;
    };
    let Some(u) = target_user(o, "user", t) else {
        return false;
    };
    o.set("user", u);
    o.class(Class::ACCOUNT_CHANGE, activity);
    true
}

fn group(o: &mut Ocsf, targets: &[Value], activity: (u32, &'static str)) -> bool {
    let Some(g) = of_type(targets, &["Group", "Role", "DirectoryRole"]).next() else {
        return false;
    };
    let (uid, name) = (str_of(g, "id"), str_of(g, "displayName"));
    if uid.is_none() && name.is_none() {
        return false;
    }
    if let Some(n) = name {
        o.observe("group.name".into(), 32, n);
    }
    if let Some(u) = uid {
        o.observe("group.uid".into(), 33, u);
    }
    let kind = str_of(g, "type");
    let mut group = object([
        ("uid", uid.into()),
        ("name", name.into()),
        ("type", kind.into()),
    ]);
    if kind.is_some_and(|k| k.eq_ignore_ascii_case("Role"))
        && let Some(n) = name
    {
        group.insert("privileges".into(), json!([n]));
    }
    o.set("group", Value::Object(group));
    if let Some(t) = of_type(targets, &["User"]).next()
        && let Some(u) = target_user(o, "user", t)
    {
        o.set("user", u);
    }
    o.class(Class::GROUP_MANAGEMENT, activity);
    true
}

fn entity(o: &mut Ocsf, targets: &[Value], activity: (u32, &'static str)) -> bool {
    let Some(t) = targets.iter().filter_map(Value::as_object).next() else {
        return false;
    };
    let (uid, name, kind) = (str_of(t, "id"), str_of(t, "displayName"), str_of(t, "type"));
    if uid.is_none() && name.is_none() {
        return false;
    }
    if let Some(u) = uid {
        o.observe("entity.uid".into(), 10, u);
    }
    let type_id = match kind.unwrap_or("") {
        "Device" => 1,
        "User" => 2,
        "Group" => 3,
        "Policy" => 5,
        _ => 99,
    };
    o.set(
        "entity",
        Value::Object(object([
            ("uid", uid.into()),
            ("name", name.into()),
            ("type_id", type_id.into()),
            ("type", kind.into()),
        ])),
    );
    o.class(Class::ENTITY_MANAGEMENT, activity);
    true
}

/// API Activity: the operation on the directory, its caller, and the targets as
/// resources. OCSF requires an actor, an API operation and a source endpoint; when the
/// record names no IP address the source is the calling app or user by its id.
fn fallback(
    o: &mut Ocsf,
    targets: &[Value],
    activity: &str,
    operation: &str,
    service: Option<&str>,
) {
    let op = if activity.is_empty() {
        operation
    } else {
        activity
    };
    let mut api = object([(
        "operation",
        (if op.is_empty() { "unknown" } else { op }).into(),
    )]);
    if let Some(s) = service {
        api.insert("service".into(), json!({ "name": s }));
    }
    o.set("api", Value::Object(api));
    let resources: Vec<Value> = targets
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|t| {
            let (uid, name) = (str_of(t, "id"), str_of(t, "displayName"));
            (uid.is_some() || name.is_some()).then(|| {
                Value::Object(object([
                    ("uid", uid.into()),
                    ("name", name.into()),
                    ("type", str_of(t, "type").into()),
                ]))
            })
        })
        .collect();
    for (i, r) in resources.iter().enumerate() {
        if let Some(u) = r["uid"].as_str() {
            o.observe(format!("resources[{i}].uid"), 10, u);
        }
    }
    o.set("resources", resources);
    let caller = o.get_mut("actor").and_then(|a| {
        a.pointer("/user/uid")
            .or(a.pointer("/app_uid"))
            .or(a.pointer("/user/name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if o.get_mut("actor").is_none() {
        o.set("actor", json!({"app_name": service.unwrap_or("unknown")}));
    }
    if o.get_mut("src_endpoint").is_none() {
        o.set(
            "src_endpoint",
            match caller {
                Some(uid) => json!({ "uid": uid }),
                None => json!({"name": service.unwrap_or("unknown")}),
            },
        );
    }
    o.class(Class::API_ACTIVITY, api_activity(operation));
}
