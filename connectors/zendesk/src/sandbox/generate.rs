//! The seeded account and the objects a create starts from, shaped like Zendesk's (field
//! names and types as its API documents them): tickets with custom field values, their
//! users, organizations, groups and memberships, ticket fields (system and custom, with a
//! title collision), forms, metrics, satisfaction ratings and brands, plus the ticket
//! events of every ticket's history.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::store::{Kind, Store, iso};

/// The subdomain in the objects' `url`s.
const HOST: &str = "https://tributary.zendesk.com";

const DAY: i64 = 24 * 3600;

const SUBJECTS: &[&str] = &[
    "Cannot log in",
    "Refund request",
    "Invoice is wrong",
    "Printer on fire",
    "How do I export my data?",
    "Feature request: dark mode",
    "Shipping delayed",
    "Password reset link expired",
    "Charged twice",
    "API returns 500",
];

const TAGS: &[&str] = &[
    "billing", "vip", "bug", "urgent", "refund", "shipping", "login", "api", "feedback",
];

const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Ken", "Radia", "Dennis", "Frances",
];

const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Liskov", "Thompson", "Perlman",
    "Ritchie", "Allen",
];

const GROUPS: &[&str] = &[
    "Support",
    "Billing",
    "Tier 2",
    "Escalations",
    "Onboarding",
    "Partners",
    "Returns",
    "VIP",
];

/// Custom ticket fields: (title, type). `product` repeats `Product` in snake_case, so the
/// connector's collision rule has work to do.
const CUSTOM_FIELDS: &[(&str, &str)] = &[
    ("Order Number", "text"),
    ("Refund Amount", "decimal"),
    ("VIP Customer", "checkbox"),
    ("Product", "tagger"),
    ("Follow-up Date", "date"),
    ("Components", "multiselect"),
    ("Seats", "integer"),
    ("product", "text"),
];

const PRODUCTS: &[&str] = &["widget", "gadget", "gizmo"];
const COMPONENTS: &[&str] = &["ui", "backend", "billing", "mobile"];

/// System ticket fields: (title, type).
const SYSTEM_FIELDS: &[(&str, &str)] = &[
    ("Subject", "subject"),
    ("Description", "description"),
    ("Status", "status"),
    ("Type", "tickettype"),
    ("Priority", "priority"),
    ("Group", "group"),
    ("Assignee", "assignee"),
];

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn url(resource: &str, id: u64) -> String {
    format!("{HOST}/api/v2/{resource}/{id}.json")
}

/// Seeds an account with `records` tickets (other kinds scale from it, see
/// [`super::SandboxConfig::records`]). Everything happened at least two days before `now`.
pub(crate) fn seed(seed: u64, now: i64, records: usize) -> Store {
    let mut store = Store::empty(StdRng::seed_from_u64(seed));
    let start = now - 300 * DAY;
    let past = |store: &mut Store, from: i64| -> i64 {
        let to = now - 2 * DAY;
        if from >= to {
            to
        } else {
            store.rng.random_range(from..to)
        }
    };

    for (i, name) in ["Tributary", "Tributary Labs"].iter().enumerate() {
        let id = store.next_id();
        let at = start - DAY + i as i64;
        let mut brand = template(&mut store, Kind::Brand, id, at);
        brand.insert("name".into(), json!(name));
        brand.insert("default".into(), json!(i == 0));
        store.insert(Kind::Brand, brand);
    }
    for (title, kind) in SYSTEM_FIELDS {
        let id = store.next_id();
        let mut field = template(&mut store, Kind::TicketField, id, start - DAY);
        field.insert("title".into(), json!(title));
        field.insert("raw_title".into(), json!(title));
        field.insert("type".into(), json!(kind));
        field.insert("removable".into(), json!(false));
        store.insert(Kind::TicketField, field);
    }
    for (i, (title, kind)) in CUSTOM_FIELDS.iter().enumerate() {
        let id = store.next_id();
        let mut field = template(&mut store, Kind::TicketField, id, start - DAY);
        field.insert("title".into(), json!(title));
        field.insert("raw_title".into(), json!(title));
        field.insert("type".into(), json!(kind));
        field.insert("position".into(), json!(100 + i));
        // The lowercase duplicate is a retired field: inactive, still on old tickets.
        field.insert("active".into(), json!(*title != "product"));
        let options: &[&str] = match *kind {
            "tagger" => PRODUCTS,
            "multiselect" => COMPONENTS,
            _ => &[],
        };
        let options: Vec<Value> = options
            .iter()
            .enumerate()
            .map(|(n, o)| json!({"id": id * 10 + n as u64, "name": o, "raw_name": o, "value": o, "default": false}))
            .collect();
        field.insert("custom_field_options".into(), Value::Array(options));
        store.insert(Kind::TicketField, field);
    }
    let field_ids: Vec<u64> = store.live_ids(Kind::TicketField);
    for (i, name) in ["Default form", "Returns"].iter().enumerate() {
        let id = store.next_id();
        let mut form = template(&mut store, Kind::TicketForm, id, start - DAY);
        form.insert("name".into(), json!(name));
        form.insert("display_name".into(), json!(name));
        form.insert("default".into(), json!(i == 0));
        form.insert("position".into(), json!(i));
        form.insert("ticket_field_ids".into(), json!(field_ids));
        store.insert(Kind::TicketForm, form);
    }

    let groups = (records / 100).clamp(2, GROUPS.len());
    let mut group_ids = Vec::new();
    for name in &GROUPS[..groups] {
        let id = store.next_id();
        let at = past(&mut store, start - 30 * DAY);
        let mut group = template(&mut store, Kind::Group, id, at);
        group.insert("name".into(), json!(name));
        store.insert(Kind::Group, group);
        group_ids.push(id);
    }

    let orgs = (records / 20).max(3);
    let mut org_ids = Vec::new();
    for n in 0..orgs {
        let id = store.next_id();
        let at = past(&mut store, start);
        let mut org = template(&mut store, Kind::Organization, id, at);
        org.insert(
            "name".into(),
            json!(format!("{} Corp {n}", pick(&mut store.rng, LAST_NAMES))),
        );
        org.insert(
            "domain_names".into(),
            json!([format!("org{n}.example.com")]),
        );
        let tag = *pick(&mut store.rng, TAGS);
        org.insert("tags".into(), json!([tag]));
        let updated = past(&mut store, at);
        org.insert("updated_at".into(), json!(iso(updated)));
        store.insert(Kind::Organization, org);
        org_ids.push(id);
    }

    let admin = store.next_id();
    let mut user = template(&mut store, Kind::User, admin, start - DAY);
    user.insert("name".into(), json!("Sandbox Admin"));
    user.insert("email".into(), json!("admin@tributary.example"));
    user.insert("role".into(), json!("admin"));
    user.insert("role_type".into(), json!(Value::Null));
    user.insert("organization_id".into(), Value::Null);
    store.insert(Kind::User, user);
    store.admin_id = admin;

    let agents = (records / 50).max(2);
    let end_users = (records / 2).max(5);
    let mut agent_ids = vec![admin];
    let mut end_user_ids = Vec::new();
    for n in 0..agents + end_users {
        let id = store.next_id();
        let at = past(&mut store, start);
        let mut user = template(&mut store, Kind::User, id, at);
        let name = format!(
            "{} {}",
            pick(&mut store.rng, FIRST_NAMES),
            pick(&mut store.rng, LAST_NAMES)
        );
        user.insert("name".into(), json!(name));
        user.insert("email".into(), json!(format!("user{n}@example.com")));
        if n < agents {
            user.insert("role".into(), json!("agent"));
            user.insert("role_type".into(), json!(0));
            user.insert("organization_id".into(), Value::Null);
            agent_ids.push(id);
        } else {
            let org = *pick(&mut store.rng, &org_ids);
            user.insert("organization_id".into(), json!(org));
            let plan = *pick(&mut store.rng, &["free", "pro", "enterprise"]);
            user.insert(
                "user_fields".into(),
                json!({"plan": plan, "signup_source": "web"}),
            );
            end_user_ids.push(id);
        }
        let updated = past(&mut store, at);
        user.insert("updated_at".into(), json!(iso(updated)));
        store.insert(Kind::User, user);
    }
    for (n, agent) in agent_ids.clone().into_iter().enumerate() {
        let count = 1 + n % 2;
        for k in 0..count {
            let group = group_ids[(n + k) % group_ids.len()];
            let id = store.next_id();
            let mut m = template(&mut store, Kind::GroupMembership, id, start);
            m.insert("user_id".into(), json!(agent));
            m.insert("group_id".into(), json!(group));
            m.insert("default".into(), json!(k == 0));
            store.insert(Kind::GroupMembership, m);
        }
    }
    for user in end_user_ids.clone() {
        let org = store
            .get(Kind::User, user)
            .and_then(|u| u.get("organization_id"))
            .and_then(Value::as_u64);
        if let Some(org) = org {
            let id = store.next_id();
            let mut m = template(&mut store, Kind::OrganizationMembership, id, start);
            m.insert("user_id".into(), json!(user));
            m.insert("organization_id".into(), json!(org));
            let name = store
                .get(Kind::Organization, org)
                .and_then(|o| o.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            m.insert("organization_name".into(), name);
            store.insert(Kind::OrganizationMembership, m);
        }
    }

    for _ in 0..records {
        let created = past(&mut store, start);
        let id = store.new_id(Kind::Ticket);
        // The first end user, as `template` would find it (requester_id is set below).
        let mut ticket = ticket_template(&store, id, created, end_user_ids[0]);
        let requester = *pick(&mut store.rng, &end_user_ids);
        let org = store
            .get(Kind::User, requester)
            .and_then(|u| u.get("organization_id"))
            .cloned()
            .unwrap_or(Value::Null);
        let subject = *pick(&mut store.rng, SUBJECTS);
        let priority = *pick(
            &mut store.rng,
            &[
                Some("low"),
                Some("normal"),
                Some("high"),
                Some("urgent"),
                None,
            ],
        );
        let kind = *pick(
            &mut store.rng,
            &[
                Some("question"),
                Some("incident"),
                Some("problem"),
                Some("task"),
                None,
            ],
        );
        let ntags = store.rng.random_range(0..=3);
        let mut tags: Vec<&str> = (0..ntags).map(|_| *pick(&mut store.rng, TAGS)).collect();
        tags.sort_unstable();
        tags.dedup();
        let group = *pick(&mut store.rng, &group_ids);
        ticket.insert("subject".into(), json!(subject));
        ticket.insert("raw_subject".into(), json!(subject));
        ticket.insert(
            "description".into(),
            json!(format!("{subject}. Please help.")),
        );
        ticket.insert("priority".into(), json!(priority));
        ticket.insert("type".into(), json!(kind));
        ticket.insert("requester_id".into(), json!(requester));
        ticket.insert("submitter_id".into(), json!(requester));
        ticket.insert("organization_id".into(), org);
        ticket.insert("group_id".into(), json!(group));
        ticket.insert("tags".into(), json!(tags));
        let values = custom_values(&mut store);
        ticket.insert("custom_fields".into(), Value::Array(values.clone()));
        ticket.insert("fields".into(), Value::Array(values));
        let event = created_event(&mut store, &ticket, created);
        store.push_event(event);

        let roll = store.rng.random_range(0..100);
        let status = match roll {
            0..10 => "new",
            10..35 => "open",
            35..45 => "pending",
            45..50 => "hold",
            50..85 => "solved",
            _ => "closed",
        };
        if status != "new" {
            let updated = past(&mut store, created);
            let assignee = *pick(&mut store.rng, &agent_ids);
            ticket.insert("status".into(), json!(status));
            ticket.insert("assignee_id".into(), json!(assignee));
            ticket.insert("updated_at".into(), json!(iso(updated)));
            ticket.insert("generated_timestamp".into(), json!(updated));
            let children = vec![
                json!({"status": status, "previous_value": "new", "event_type": "Change"}),
                json!({"assignee_id": assignee, "previous_value": null, "event_type": "Change"}),
                json!({"comment_present": true, "comment_public": true, "event_type": "Comment"}),
            ];
            let event = audit(&mut store, &ticket, updated, children);
            store.push_event(event);
        }
        let mut metric = ticket_metric(&mut store, &ticket, created);
        if matches!(status, "solved" | "closed") {
            let at = ticket.get("updated_at").cloned().unwrap_or(Value::Null);
            metric.insert("solved_at".into(), at.clone());
            metric.insert("updated_at".into(), at);
            let minutes = store.rng.random_range(10..20_000);
            metric.insert(
                "full_resolution_time_in_minutes".into(),
                json!({"calendar": minutes, "business": minutes / 3}),
            );
            if store.rng.random_bool(0.5) {
                let rid = store.next_id();
                let at = ticket
                    .get("generated_timestamp")
                    .and_then(Value::as_i64)
                    .unwrap_or(created);
                let mut rating = template(&mut store, Kind::SatisfactionRating, rid, at);
                let good = store.rng.random_bool(0.8);
                rating.insert("ticket_id".into(), json!(id));
                rating.insert("requester_id".into(), json!(requester));
                rating.insert(
                    "assignee_id".into(),
                    ticket.get("assignee_id").cloned().unwrap_or(Value::Null),
                );
                rating.insert("group_id".into(), json!(group));
                rating.insert("score".into(), json!(if good { "good" } else { "bad" }));
                rating.insert(
                    "comment".into(),
                    json!(if good {
                        "Thanks, quick and helpful!"
                    } else {
                        "Took too long."
                    }),
                );
                store.insert(Kind::SatisfactionRating, rating);
            }
        }
        store.insert(Kind::TicketMetric, metric);
        store.insert(Kind::Ticket, ticket);
    }
    store.sort_events();
    store
}

/// Values of the custom fields for a new seeded ticket (some left empty).
fn custom_values(store: &mut Store) -> Vec<Value> {
    let fields: Vec<(u64, String)> = store
        .table(Kind::TicketField)
        .objects
        .iter()
        .filter(|(_, f)| f.value.get("removable").and_then(Value::as_bool) == Some(true))
        .map(|(id, f)| {
            let kind = f
                .value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("text");
            (*id, kind.to_owned())
        })
        .collect();
    let rng = &mut store.rng;
    fields
        .into_iter()
        .map(|(id, kind)| {
            let value = if rng.random_bool(0.2) {
                Value::Null
            } else {
                match kind.as_str() {
                    "text" => json!(format!("ORD-{}", rng.random_range(10_000..99_999))),
                    // Zendesk sends decimal and integer values as text.
                    "decimal" => json!(format!(
                        "{}.{:02}",
                        rng.random_range(1..500),
                        rng.random_range(0..100)
                    )),
                    "integer" => json!(rng.random_range(1..250).to_string()),
                    "checkbox" => json!(rng.random_bool(0.3)),
                    "tagger" => json!(*pick(rng, PRODUCTS)),
                    "date" => json!(format!(
                        "2025-{:02}-{:02}",
                        rng.random_range(1..13),
                        rng.random_range(1..29)
                    )),
                    "multiselect" => {
                        let mut parts: Vec<&str> = COMPONENTS
                            .iter()
                            .copied()
                            .filter(|_| rng.random_bool(0.4))
                            .collect();
                        parts.sort_unstable();
                        json!(parts)
                    }
                    _ => Value::Null,
                }
            };
            json!({"id": id, "value": value})
        })
        .collect()
}

/// A new ticket as a create starts it, at time `now`, asked by `requester` (the seed picks
/// its own requesters and knows the first end user, so it need not scan every user for
/// each ticket: that scan made seeding 100,000 tickets take over a minute).
fn ticket_template(store: &Store, id: u64, now: i64, requester: u64) -> Map<String, Value> {
    let at = json!(iso(now));
    let resource = Kind::Ticket.resource();
    let first = |store: &Store, kind: Kind| store.first_live_id(kind);
    let values: Vec<Value> = store
        .table(Kind::TicketField)
        .objects
        .iter()
        .filter(|(_, f)| f.value.get("removable").and_then(Value::as_bool) == Some(true))
        .map(|(fid, _)| json!({"id": fid, "value": null}))
        .collect();
    let brand = first(store, Kind::Brand);
    let form = first(store, Kind::TicketForm);
    obj(json!({
        "url": url(resource, id), "id": id, "external_id": null,
        "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}},
        "created_at": at, "updated_at": at, "generated_timestamp": now,
        "type": null, "subject": "New ticket", "raw_subject": "New ticket",
        "description": "New ticket", "priority": null, "status": "new",
        "custom_status_id": 1, "recipient": null,
        "requester_id": requester, "submitter_id": requester, "assignee_id": null,
        "organization_id": null, "group_id": null,
        "collaborator_ids": [], "follower_ids": [], "email_cc_ids": [],
        "forum_topic_id": null, "problem_id": null, "has_incidents": false,
        "is_public": true, "due_at": null, "tags": [],
        "custom_fields": values.clone(), "fields": values,
        "satisfaction_rating": null, "sharing_agreement_ids": [], "followup_ids": [],
        "ticket_form_id": form, "brand_id": brand,
        "allow_channelback": false, "allow_attachments": true,
        "from_messaging_channel": false
    }))
}

/// A new object of `kind` as a create starts it, at time `now`.
pub(crate) fn template(store: &mut Store, kind: Kind, id: u64, now: i64) -> Map<String, Value> {
    let at = json!(iso(now));
    let resource = kind.resource();
    let first = |store: &Store, kind: Kind| store.first_live_id(kind);
    match kind {
        Kind::Ticket => {
            let requester = store
                .table(Kind::User)
                .objects
                .iter()
                .find(|(_, u)| {
                    u.value.get("role").and_then(Value::as_str) == Some("end-user")
                        && !Store::is_deleted(Kind::User, &u.value)
                })
                .map_or(store.admin_id, |(id, _)| *id);
            ticket_template(store, id, now, requester)
        }
        Kind::User => obj(json!({
            "id": id, "url": url(resource, id), "name": format!("User {id}"),
            "email": format!("user{id}@example.com"), "created_at": at, "updated_at": at,
            "time_zone": "Copenhagen", "iana_time_zone": "Europe/Copenhagen", "phone": null,
            "shared_phone_number": null, "photo": null, "locale_id": 1, "locale": "en-US",
            "organization_id": null, "role": "end-user", "verified": true, "external_id": null,
            "tags": [], "alias": "", "active": true, "shared": false, "shared_agent": false,
            "last_login_at": null, "two_factor_auth_enabled": false, "signature": null,
            "details": "", "notes": "", "role_type": null, "custom_role_id": null,
            "moderator": false, "ticket_restriction": "requested",
            "only_private_comments": false, "restricted_agent": true, "suspended": false,
            "default_group_id": null, "report_csv": false, "user_fields": {}
        })),
        Kind::Organization => obj(json!({
            "url": url(resource, id), "id": id, "name": format!("Organization {id}"),
            "shared_tickets": false, "shared_comments": false, "external_id": null,
            "created_at": at, "updated_at": at, "domain_names": [], "details": "",
            "notes": "", "group_id": null, "tags": [], "organization_fields": {},
            "deleted_at": null
        })),
        Kind::Group => obj(json!({
            "url": url(resource, id), "id": id, "is_public": true, "name": format!("Group {id}"),
            "description": "", "default": false, "deleted": false,
            "created_at": at, "updated_at": at
        })),
        Kind::GroupMembership => {
            let user = store.admin_id;
            let group = first(store, Kind::Group);
            obj(json!({
                "url": url(resource, id), "id": id, "user_id": user, "group_id": group,
                "default": false, "created_at": at, "updated_at": at
            }))
        }
        Kind::OrganizationMembership => {
            let user = store.admin_id;
            let org = first(store, Kind::Organization);
            obj(json!({
                "url": url(resource, id), "id": id, "user_id": user, "organization_id": org,
                "default": true, "organization_name": null, "view_tickets": true,
                "created_at": at, "updated_at": at
            }))
        }
        Kind::TicketField => obj(json!({
            "url": url(resource, id), "id": id, "type": "text", "title": format!("Field {id}"),
            "raw_title": format!("Field {id}"), "description": "", "raw_description": "",
            "agent_description": null, "position": 9999, "active": true, "required": false,
            "collapsed_for_agents": false, "regexp_for_validation": null,
            "title_in_portal": format!("Field {id}"), "raw_title_in_portal": format!("Field {id}"),
            "visible_in_portal": false, "editable_in_portal": false,
            "required_in_portal": false, "tag": null, "created_at": at, "updated_at": at,
            "removable": true, "key": null, "custom_field_options": []
        })),
        Kind::TicketForm => obj(json!({
            "url": url(resource, id), "id": id, "name": format!("Form {id}"),
            "raw_name": format!("Form {id}"), "display_name": format!("Form {id}"),
            "raw_display_name": format!("Form {id}"), "end_user_visible": true, "position": 9,
            "ticket_field_ids": [], "active": true, "default": false, "in_all_brands": true,
            "restricted_brand_ids": [], "end_user_conditions": [], "agent_conditions": [],
            "created_at": at, "updated_at": at
        })),
        Kind::TicketMetric => obj(json!({
            "url": url(resource, id), "id": id, "ticket_id": null, "created_at": at,
            "updated_at": at, "group_stations": 1, "assignee_stations": 1, "reopens": 0,
            "replies": 0, "assignee_updated_at": null, "requester_updated_at": at,
            "status_updated_at": at, "initially_assigned_at": null, "assigned_at": null,
            "solved_at": null, "latest_comment_added_at": at,
            "reply_time_in_minutes": {"calendar": null, "business": null},
            "first_resolution_time_in_minutes": {"calendar": null, "business": null},
            "full_resolution_time_in_minutes": {"calendar": null, "business": null},
            "agent_wait_time_in_minutes": {"calendar": null, "business": null},
            "requester_wait_time_in_minutes": {"calendar": null, "business": null},
            "on_hold_time_in_minutes": {"calendar": 0, "business": 0}
        })),
        Kind::SatisfactionRating => obj(json!({
            "url": url(resource, id), "id": id, "assignee_id": null, "group_id": null,
            "requester_id": null, "ticket_id": null, "score": "offered", "comment": null,
            "reason": null, "reason_id": null, "reason_code": null,
            "created_at": at, "updated_at": at
        })),
        Kind::Brand => obj(json!({
            "url": url(resource, id), "id": id, "name": format!("Brand {id}"),
            "brand_url": "https://tributary.zendesk.com", "subdomain": "tributary",
            "host_mapping": null, "has_help_center": false, "help_center_state": "disabled",
            "active": true, "default": false, "logo": null, "ticket_form_ids": [],
            "signature_template": "{{agent.signature}}", "created_at": at, "updated_at": at
        })),
    }
}

/// The ticket event of a ticket's creation: a `Create` child per field set, and its first
/// comment.
pub(crate) fn created_event(
    store: &mut Store,
    ticket: &Map<String, Value>,
    at: i64,
) -> Map<String, Value> {
    let mut children = Vec::new();
    for key in [
        "subject",
        "status",
        "priority",
        "type",
        "requester_id",
        "assignee_id",
        "group_id",
        "organization_id",
        "tags",
    ] {
        let value = ticket.get(key).cloned().unwrap_or(Value::Null);
        if !value.is_null() {
            let mut child = Map::new();
            child.insert(key.to_owned(), value);
            child.insert("event_type".into(), json!("Create"));
            children.push(Value::Object(child));
        }
    }
    for entry in ticket
        .get("custom_fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let value = entry.get("value").cloned().unwrap_or(Value::Null);
        if let (Some(id), false) = (entry.get("id").and_then(Value::as_i64), value.is_null()) {
            children.push(
                json!({"field_name": id.to_string(), "value": value, "event_type": "Create"}),
            );
        }
    }
    children
        .push(json!({"comment_present": true, "comment_public": true, "event_type": "Comment"}));
    audit(store, ticket, at, children)
}

/// A ticket event ("Audit") of `ticket` at `at` with these child events (each gets an id,
/// the `via`, and `event_type` Change unless it says otherwise).
pub(crate) fn audit(
    store: &mut Store,
    ticket: &Map<String, Value>,
    at: i64,
    children: Vec<Value>,
) -> Map<String, Value> {
    let id = store.next_id();
    let ticket_id = ticket.get("id").cloned().unwrap_or(Value::Null);
    let updater = ticket
        .get("assignee_id")
        .filter(|a| !a.is_null())
        .or_else(|| ticket.get("requester_id"))
        .cloned()
        .unwrap_or(Value::Null);
    let children: Vec<Value> = children
        .into_iter()
        .map(|child| {
            let mut out = Map::new();
            out.insert("id".into(), json!(store.next_id()));
            out.insert("via".into(), json!("Web form"));
            out.insert("via_reference_id".into(), Value::Null);
            if let Value::Object(fields) = child {
                out.extend(fields);
            }
            out.entry("event_type").or_insert(json!("Change"));
            Value::Object(out)
        })
        .collect();
    obj(json!({
        "id": id, "ticket_id": ticket_id, "timestamp": at, "created_at": iso(at),
        "updater_id": updater, "via": "Web form",
        "system": {"client": "Mozilla/5.0", "location": "Copenhagen, 84, Denmark",
                   "latitude": 55.6759, "longitude": 12.5655},
        "metadata": {}, "event_type": "Audit", "child_events": children,
        "merged_ticket_ids": []
    }))
}

/// The metrics record of a new ticket.
pub(crate) fn ticket_metric(
    store: &mut Store,
    ticket: &Map<String, Value>,
    at: i64,
) -> Map<String, Value> {
    let id = store.next_id();
    let mut metric = template(store, Kind::TicketMetric, id, at);
    metric.insert(
        "ticket_id".into(),
        ticket.get("id").cloned().unwrap_or(Value::Null),
    );
    let minutes = store.rng.random_range(1..600);
    metric.insert(
        "reply_time_in_minutes".into(),
        json!({"calendar": minutes, "business": minutes / 2}),
    );
    metric.insert("replies".into(), json!(store.rng.random_range(0..6)));
    metric
}
