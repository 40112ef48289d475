//! v2 handlers: user groups, members, graph traversals, Active Directory instances, agents, associations.

use axum::http::Method;
use serde_json::{Map, Value};

use crate::api::Req;
use crate::http::{ApiError, ApiResponse, ApiResult};
use crate::query::{self, ListSpec};
use crate::shared::Shared;
use crate::store::GraphOp;

pub fn dispatch(sh: &Shared, method: &Method, segs: &[String], req: &Req) -> Option<ApiResult> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    Some(match (method.as_str(), s.as_slice()) {
        // user groups
        ("GET", ["usergroups"]) => {
            let store = sh.store.read();
            list(sh, req, store.groups.values(), None)
        }
        ("POST", ["usergroups"]) => {
            let mut store = sh.store.write();
            store.create_group(req.body.as_ref(), &sh.org_id).map(|d| {
                if let Some(id) = d.get("id").and_then(Value::as_str) {
                    store.event_group(sh.clock.now_ms(), "create", id);
                }
                ApiResponse::json(201, Value::Object(d))
            })
        }
        ("GET", ["usergroups", id]) => sh
            .store
            .read()
            .groups
            .get(*id)
            .map(|g| ApiResponse::ok(Value::Object(g.clone())))
            .ok_or_else(|| ApiError::not_found("user group not found")),
        ("PUT", ["usergroups", id]) => {
            let mut store = sh.store.write();
            store.put_group(id, req.body.as_ref(), &sh.org_id).map(|d| {
                store.event_group(sh.clock.now_ms(), "update", id);
                ApiResponse::ok(Value::Object(d))
            })
        }
        ("DELETE", ["usergroups", id]) => {
            let status = sh.settings.read().delete_usergroup_status;
            let mut store = sh.store.write();
            store.delete_group(id).map(|d| {
                store.event_group(sh.clock.now_ms(), "delete", id);
                if status == 200 {
                    ApiResponse::ok(Value::Object(d))
                } else {
                    ApiResponse::empty(204)
                }
            })
        }
        ("GET", ["usergroups", id, "members"]) => {
            let store = sh.store.read();
            store
                .group_members(id)
                .and_then(|items| page(sh, req, items))
        }
        ("POST", ["usergroups", id, "members"]) => {
            graph_post(sh, req, &["user"], |store, op, idem| {
                let (verb, user) = (op.op.clone(), op.id.clone());
                if store.member_op(id, op, idem)? {
                    store.event_member(sh.clock.now_ms(), &verb, id, &user);
                }
                Ok(())
            })
        }
        ("GET", ["usergroups", id, "membership"]) => {
            let store = sh.store.read();
            store
                .group_membership(id)
                .and_then(|items| graph_list(sh, req, items, Some(&["object_id", "type"])))
        }
        ("GET", ["usergroups", id, "associations"]) => {
            let targets = match targets(req, USER_TARGETS) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            let store = sh.store.read();
            store
                .object_associations("user_group", id, &targets)
                .and_then(|items| page(sh, req, items))
        }
        ("POST", ["usergroups", id, "associations"]) => {
            graph_post(sh, req, USER_TARGETS, |store, op, idem| {
                let (verb, ad) = (op.op.clone(), op.id.clone());
                if store.object_assoc_op("user_group", id, op, idem)? {
                    store.event_association(sh.clock.now_ms(), &verb, &ad, "user_group", id);
                }
                Ok(())
            })
        }
        ("GET", ["usergroups", id, "activedirectories"]) => {
            let store = sh.store.read();
            store
                .group_ads(id)
                .and_then(|items| graph_list(sh, req, items, None))
        }
        // users
        ("GET", ["users", id, "memberof"]) => {
            let store = sh.store.read();
            store
                .user_memberof(id)
                .and_then(|items| graph_list(sh, req, items, Some(&["object_id", "type"])))
        }
        ("GET", ["users", id, "associations"]) => {
            let targets = match targets(req, USER_TARGETS) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            let store = sh.store.read();
            store
                .object_associations("user", id, &targets)
                .and_then(|items| page(sh, req, items))
        }
        ("POST", ["users", id, "associations"]) => {
            graph_post(sh, req, USER_TARGETS, |store, op, idem| {
                let (verb, ad) = (op.op.clone(), op.id.clone());
                if store.object_assoc_op("user", id, op, idem)? {
                    store.event_association(sh.clock.now_ms(), &verb, &ad, "user", id);
                }
                Ok(())
            })
        }
        ("GET", ["users", id, "activedirectories"]) => {
            let store = sh.store.read();
            store
                .user_ads(id)
                .and_then(|items| graph_list(sh, req, items, None))
        }
        // Active Directory
        ("GET", ["activedirectories"]) => {
            let store = sh.store.read();
            list(sh, req, store.ads.values(), None)
        }
        ("POST", ["activedirectories"]) => sh
            .store
            .write()
            .create_ad(req.body.as_ref(), &sh.org_id, sh.clock.now_ms())
            .map(|d| ApiResponse::json(201, Value::Object(d))),
        ("GET", ["activedirectories", id]) => sh
            .store
            .read()
            .ads
            .get(*id)
            .map(|a| ApiResponse::ok(Value::Object(a.clone())))
            .ok_or_else(|| ApiError::not_found("Active Directory instance not found")),
        ("PATCH", ["activedirectories", id]) => sh
            .store
            .write()
            .patch_ad(id, req.body.as_ref(), sh.clock.now_ms())
            .map(|d| ApiResponse::ok(Value::Object(d))),
        ("DELETE", ["activedirectories", id]) => sh
            .store
            .write()
            .delete_ad(id)
            .map(|d| ApiResponse::ok(Value::Object(d))),
        ("GET", ["activedirectories", id, "agents"]) => {
            let store = sh.store.read();
            store
                .agents_of(id)
                .and_then(|items| list(sh, req, items.iter(), None))
        }
        ("POST", ["activedirectories", id, "agents"]) => {
            let key = sh.connect_key();
            sh.store
                .write()
                .create_agent(id, req.body.as_ref(), key, sh.clock.now_ms())
                .map(|a| ApiResponse::json(201, a))
        }
        ("GET", ["activedirectories", id, "agents", agent]) => sh
            .store
            .read()
            .agent(id, agent)
            .map(|a| ApiResponse::ok(a.list_json())),
        ("DELETE", ["activedirectories", id, "agents", agent]) => sh
            .store
            .write()
            .delete_agent(id, agent)
            .map(|()| ApiResponse::empty(204)),
        ("GET", ["activedirectories", id, "associations"]) => {
            let targets = match targets(req, &["user", "user_group"]) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            let store = sh.store.read();
            store
                .ad_associations(id, &targets)
                .and_then(|items| page(sh, req, items))
        }
        ("POST", ["activedirectories", id, "associations"]) => {
            graph_post(sh, req, &["user", "user_group"], |store, op, idem| {
                if store.ad_assoc_op(id, &op.kind, &op.id, &op.op, op.attributes, idem)? {
                    store.event_association(sh.clock.now_ms(), &op.op, id, &op.kind, &op.id);
                }
                Ok(())
            })
        }
        ("GET", ["activedirectories", id, "users"]) => {
            let sync_status = match bool_param(req, "syncStatus") {
                Ok(s) => s == Some(true),
                Err(e) => return Some(Err(e)),
            };
            let store = sh.store.read();
            store
                .ad_users(id)
                .map(|mut items| {
                    if sync_status {
                        // the newest agent report of each user (AGENT-CHANNEL.md)
                        for item in &mut items {
                            let status = item
                                .get("id")
                                .and_then(Value::as_str)
                                .and_then(|u| store.sync_status(id, u));
                            if let Some(st) = status {
                                item.insert("syncStatus".into(), st);
                            }
                        }
                    }
                    items
                })
                .and_then(|items| graph_list(sh, req, items, None))
        }
        ("GET", ["activedirectories", id, "usergroups"]) => {
            let store = sh.store.read();
            store
                .ad_groups(id)
                .and_then(|items| graph_list(sh, req, items, None))
        }
        _ => return None,
    })
}

/// Targets a user or user group can be associated to (`GraphOperation-User` / `-UserGroup`).
const USER_TARGETS: &[&str] = &[
    "active_directory",
    "application",
    "g_suite",
    "idp_routing_policy",
    "ldap_server",
    "office_365",
    "password_manager_item",
    "policy",
    "policy_group",
    "radius_server",
    "system",
    "system_group",
];

fn bad(e: String) -> ApiError {
    ApiError::bad_request(e)
}

fn bool_param(req: &Req, name: &str) -> Result<Option<bool>, ApiError> {
    match req.query.get(name) {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got '{v}'"
        ))),
    }
}

/// Required `targets` (repeated, comma- or `|`-joined).
fn targets(req: &Req, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let t: Vec<String> = req
        .query
        .all("targets")
        .flat_map(|v| v.split([',', '|']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if t.is_empty() {
        return Err(ApiError::bad_request(format!(
            "targets is required ({})",
            allowed.join(", ")
        )));
    }
    if let Some(bad) = t.iter().find(|x| !allowed.contains(&x.as_str())) {
        return Err(ApiError::bad_request(format!(
            "invalid target '{bad}' ({})",
            allowed.join(", ")
        )));
    }
    Ok(t)
}

fn paging(sh: &Shared, req: &Req) -> Result<(usize, usize), ApiError> {
    let policy = sh.settings.read().limit_over_max;
    Ok((
        query::skip(&req.query).map_err(bad)?,
        query::limit(&req.query, policy).map_err(bad)?,
    ))
}

/// A v2 list with `filter`/`sort`/`fields`/`limit`/`skip`: bare array + `x-total-count`.
fn list<'a>(
    sh: &Shared,
    req: &Req,
    docs: impl Iterator<Item = &'a Map<String, Value>>,
    allowed: Option<&[&str]>,
) -> ApiResult {
    let (skip, limit) = paging(sh, req)?;
    let filter = query::v2_filter(&req.query, allowed).map_err(bad)?;
    let sort = query::parse_sort(req.query.all("sort"));
    let fields = query::parse_fields(req.query.all("fields"));
    let (total, items) = ListSpec {
        filter: &filter,
        sort: &sort,
        fields: fields.as_deref(),
        skip,
        limit,
        id_field: "id",
    }
    .apply(docs);
    Ok(ApiResponse::list(items, total))
}

/// Graph traversals: filter (only `object_id`/`type` where restricted), sort, limit, skip.
fn graph_list(
    sh: &Shared,
    req: &Req,
    items: Vec<Map<String, Value>>,
    allowed: Option<&[&str]>,
) -> ApiResult {
    let (skip, limit) = paging(sh, req)?;
    let mut filter = query::v2_filter(&req.query, allowed).map_err(bad)?;
    filter.rename_field("object_id", "id");
    let sort = query::parse_sort(req.query.all("sort"));
    let (total, items) = ListSpec {
        filter: &filter,
        sort: &sort,
        fields: None,
        skip,
        limit,
        id_field: "id",
    }
    .apply(items.iter());
    Ok(ApiResponse::list(items, total))
}

/// Lists with only `limit`/`skip` (members, associations).
fn page(sh: &Shared, req: &Req, items: Vec<Map<String, Value>>) -> ApiResult {
    let (skip, limit) = paging(sh, req)?;
    let total = items.len();
    Ok(ApiResponse::list(
        items
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(Value::Object)
            .collect(),
        total,
    ))
}

fn graph_post(
    sh: &Shared,
    req: &Req,
    types: &[&str],
    f: impl FnOnce(&mut crate::store::Store, GraphOp, bool) -> Result<(), ApiError>,
) -> ApiResult {
    let op = GraphOp::parse(req.body.as_ref(), types)?;
    let idempotent = sh.settings.read().graph_idempotent;
    f(&mut sh.store.write(), op, idempotent)?;
    Ok(ApiResponse::empty(204))
}
