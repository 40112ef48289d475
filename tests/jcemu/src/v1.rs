//! v1 handlers: `/systemusers`, `/search/systemusers`.

use axum::http::Method;
use serde_json::{json, Value};

use crate::api::Req;
use crate::http::{ApiError, ApiResponse, ApiResult, Body};
use crate::query::{self, Filter};
use crate::shared::Shared;
use crate::store::users::UserCtx;
use crate::store::{Store, UserRec};

pub fn dispatch(sh: &Shared, method: &Method, segs: &[String], req: &Req) -> Option<ApiResult> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    Some(match (method.as_str(), s.as_slice()) {
        ("GET", ["systemusers"]) => list_users(sh, req),
        ("POST", ["systemusers"]) => create_user(sh, req),
        ("GET", ["systemusers", id]) => get_user(sh, id, req),
        ("PUT", ["systemusers", id]) => put_user(sh, id, req),
        ("DELETE", ["systemusers", id]) => delete_user(sh, id, req),
        ("POST", ["systemusers", id, "password"]) => set_password(sh, id, req),
        ("POST", ["systemusers", id, "state", "activate"]) => activate(sh, id, req),
        ("POST", ["systemusers", id, "state", "suspend"]) => suspend(sh, id, req),
        ("POST", ["search", "systemusers"]) => search(sh, req),
        _ => return None,
    })
}

fn bad(e: String) -> ApiError {
    ApiError::bad_request(e)
}

/// The `search` query parameter of `GET /systemusers`: a JSON `{searchTerm, fields}` object.
fn query_search(req: &Req) -> Result<Filter, ApiError> {
    match req.query.get("search") {
        None | Some("") => Ok(Filter::everything()),
        Some(s) => {
            let v: Value = serde_json::from_str(s).map_err(|_| {
                ApiError::bad_request(
                    "search must be a JSON object {\"searchTerm\": …, \"fields\": […]}",
                )
            })?;
            query::search_filter(&v).map_err(bad)
        }
    }
}

struct Listing {
    filter: Filter,
    sort: Vec<query::SortKey>,
    fields: Option<Vec<String>>,
    skip: usize,
    limit: usize,
}

/// Candidate users for a filter: when the filter requires `_id`, `username`, `email` or `employeeIdentifier` to
/// equal one of a few values, look them up in the indexes instead of scanning (the full filter is still applied).
fn candidates<'s>(store: &'s Store, filter: &Filter) -> Option<Vec<&'s UserRec>> {
    let conds: Vec<&query::Cond> = match filter {
        Filter::Cond(c) => vec![c],
        Filter::All(v) => v
            .iter()
            .flat_map(|f| match f {
                Filter::Cond(c) => vec![c],
                Filter::All(inner) => inner
                    .iter()
                    .filter_map(|g| {
                        if let Filter::Cond(c) = g {
                            Some(c)
                        } else {
                            None
                        }
                    })
                    .collect(),
                Filter::Any(_) => vec![],
            })
            .collect(),
        Filter::Any(_) => return None,
    };
    let c = conds.into_iter().find(|c| {
        matches!(c.op, query::Op::Eq | query::Op::In)
            && ["_id", "username", "email", "employeeIdentifier"].contains(&c.field.as_str())
    })?;
    let mut ids: Vec<String> = c
        .terms
        .iter()
        .filter_map(|t| {
            if c.field == "_id" {
                Some(t.clone())
            } else {
                store.user_id_by(&c.field, t)
            }
        })
        .collect();
    ids.sort();
    ids.dedup();
    Some(ids.iter().filter_map(|id| store.users.get(id)).collect())
}

fn run_listing(store: &Store, l: &Listing, raw_ok: bool) -> ApiResponse {
    let id_only = l.sort.is_empty() || (l.sort.len() == 1 && l.sort[0].field == "_id");
    let desc = l.sort.first().is_some_and(|k| k.desc);
    // the matching users in page order
    let (total, page): (usize, Vec<&UserRec>) = if l.filter.is_everything() && id_only {
        // fast path: ids are generated in order, the map is the index
        let page = if desc {
            store
                .users
                .values()
                .rev()
                .skip(l.skip)
                .take(l.limit)
                .collect()
        } else {
            store.users.values().skip(l.skip).take(l.limit).collect()
        };
        (store.users.len(), page)
    } else {
        let mut matched: Vec<&UserRec> = match candidates(store, &l.filter) {
            Some(c) => c.into_iter().filter(|u| l.filter.matches(&u.doc)).collect(),
            None => store
                .users
                .values()
                .filter(|u| l.filter.matches(&u.doc))
                .collect(),
        };
        if id_only {
            if desc {
                matched.reverse();
            }
        } else {
            matched.sort_by(|a, b| query::cmp_docs(&a.doc, &b.doc, &l.sort, "_id"));
        }
        let total = matched.len();
        (
            total,
            matched.into_iter().skip(l.skip).take(l.limit).collect(),
        )
    };
    if raw_ok && l.fields.is_none() {
        // concatenate the users' cached JSON
        let mut out = Vec::with_capacity(48 + page.iter().map(|u| u.json.len() + 1).sum::<usize>());
        out.extend_from_slice(format!("{{\"totalCount\":{total},\"results\":[").as_bytes());
        for (i, u) in page.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&u.json);
        }
        out.extend_from_slice(b"]}");
        return ApiResponse {
            status: 200,
            body: Body::Raw(out),
            total_count: None,
        };
    }
    let results: Vec<Value> = page
        .iter()
        .map(|u| query::project(&u.doc, l.fields.as_deref(), "_id"))
        .collect();
    ApiResponse::ok(json!({"totalCount": total, "results": results}))
}

fn paging(sh: &Shared, req: &Req) -> Result<(usize, usize), ApiError> {
    let policy = sh.settings.read().limit_over_max;
    Ok((
        query::skip(&req.query).map_err(bad)?,
        query::limit(&req.query, policy).map_err(bad)?,
    ))
}

fn list_users(sh: &Shared, req: &Req) -> ApiResult {
    let (skip, limit) = paging(sh, req)?;
    let filter = Filter::All(vec![
        query::v1_query_filter(&req.query, req.eventual).map_err(bad)?,
        query_search(req)?,
    ]);
    let l = Listing {
        filter,
        sort: query::parse_sort(req.query.all("sort")),
        fields: query::parse_fields(req.query.all("fields")),
        skip,
        limit,
    };
    let store = sh.store.read();
    Ok(run_listing(&store, &l, sh.contract.is_none()))
}

fn search(sh: &Shared, req: &Req) -> ApiResult {
    let (skip, limit) = paging(sh, req)?;
    let empty = serde_json::Map::new();
    let body = match &req.body {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::bad_request("request body must be a JSON object")),
    };
    let mut all = vec![query::v1_query_filter(&req.query, req.eventual).map_err(bad)?];
    if let Some(f) = body.get("filter") {
        all.push(query::v1_body_filter(f, req.eventual).map_err(bad)?);
    }
    if let Some(sf) = body.get("searchFilter") {
        all.push(query::search_filter(sf).map_err(bad)?);
    }
    let body_fields = match body.get("fields") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => query::parse_fields(std::iter::once(s.as_str())),
        Some(Value::Array(a)) => query::parse_fields(a.iter().filter_map(Value::as_str)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "fields must be a space-separated string",
            ))
        }
    };
    let l = Listing {
        filter: Filter::All(all),
        sort: query::parse_sort(req.query.all("sort")),
        fields: body_fields.or_else(|| query::parse_fields(req.query.all("fields"))),
        skip,
        limit,
    };
    let store = sh.store.read();
    Ok(run_listing(&store, &l, sh.contract.is_none()))
}

fn get_user(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    let filter = query::v1_query_filter(&req.query, req.eventual).map_err(bad)?;
    let fields = query::parse_fields(req.query.all("fields"));
    let store = sh.store.read();
    let u = store
        .users
        .get(id)
        .filter(|u| filter.matches(&u.doc))
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(ApiResponse::ok(query::project(
        &u.doc,
        fields.as_deref(),
        "_id",
    )))
}

fn password_of(req: &Req) -> Option<&str> {
    req.body
        .as_ref()
        .and_then(|b| b.get("password"))
        .and_then(Value::as_str)
}

fn has_password(req: &Req) -> bool {
    password_of(req).is_some()
}

fn create_user(sh: &Shared, req: &Req) -> ApiResult {
    let settings = sh.settings.read().clone();
    let salt = if has_password(req) {
        sh.salt()
    } else {
        [0; 16]
    };
    let ctx = UserCtx {
        now_ms: sh.clock.now_ms(),
        org_id: &sh.org_id,
        default_state: settings.default_user_state.as_str(),
        policy: &settings.password_policy,
        full_details: req.full_details(),
        salt,
    };
    let mut store = sh.store.write();
    let doc = store.create_user(req.body.as_ref(), &ctx)?;
    if let Some(id) = doc.get("_id").and_then(Value::as_str) {
        store.event_user(ctx.now_ms, "create", id);
        if let Some(p) = password_of(req) {
            store.event_password(ctx.now_ms, id, p);
        }
    }
    Ok(ApiResponse::ok(Value::Object(doc)))
}

fn put_user(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    let settings = sh.settings.read().clone();
    let salt = if has_password(req) {
        sh.salt()
    } else {
        [0; 16]
    };
    let ctx = UserCtx {
        now_ms: sh.clock.now_ms(),
        org_id: &sh.org_id,
        default_state: settings.default_user_state.as_str(),
        policy: &settings.password_policy,
        full_details: req.full_details(),
        salt,
    };
    let mut store = sh.store.write();
    let doc = store.update_user(id, req.body.as_ref(), &ctx)?;
    store.event_user(ctx.now_ms, "update", id);
    if let Some(p) = password_of(req) {
        store.event_password(ctx.now_ms, id, p);
    }
    Ok(ApiResponse::ok(Value::Object(doc)))
}

fn delete_user(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    let cascade = req.query.get("cascade_manager") == Some("null");
    let mut store = sh.store.write();
    let doc = store.delete_user(id, cascade)?;
    store.event_user(sh.clock.now_ms(), "delete", id);
    Ok(ApiResponse::ok(Value::Object(doc)))
}

fn set_password(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    let password = req
        .body
        .as_ref()
        .and_then(|b| b.get("password"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("password is required"))?;
    let settings = sh.settings.read().clone();
    let ctx = UserCtx {
        now_ms: sh.clock.now_ms(),
        org_id: &sh.org_id,
        default_state: settings.default_user_state.as_str(),
        policy: &settings.password_policy,
        full_details: req.full_details(),
        salt: sh.salt(),
    };
    let mut store = sh.store.write();
    store.set_password(id, password, &ctx)?;
    store.event_password(ctx.now_ms, id, password);
    Ok(ApiResponse::empty(200))
}

fn activate(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    match &req.body {
        None => {}
        Some(Value::Object(m)) => match m.get("email") {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(Value::String(s)) if s.contains('@') => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "email must be true, false or an email address",
                ))
            }
        },
        Some(_) => return Err(ApiError::bad_request("request body must be a JSON object")),
    }
    let mut store = sh.store.write();
    store.activate_user(id)?;
    store.event_user(sh.clock.now_ms(), "update", id);
    Ok(ApiResponse::ok(Value::String("OK".into())))
}

fn suspend(sh: &Shared, id: &str, req: &Req) -> ApiResult {
    if !req.body_empty {
        return Err(ApiError::bad_request("Request body must be empty."));
    }
    let mut store = sh.store.write();
    store.suspend_user(id)?;
    store.event_user(sh.clock.now_ms(), "update", id);
    Ok(ApiResponse::empty(200))
}
