//! OpenAPI conformance checker: JumpCloud's own published specs, loaded at run time.
//!
//! [`Contract::load`] reads `api/1.0/index.yaml` (v1, served under `/api`) and `api/2.0/index.yaml` (v2, served
//! under `/api/v2`) from a directory given by the caller (the specs are never copied into this repository; see
//! `../shared/docs/jumpcloud-api.md` section 0). Both files are OpenAPI 3.1.0, whose schema objects are JSON
//! Schema 2020-12; they are validated with the `jsonschema` crate, each whole spec document registered as one
//! resource so that every local `$ref` (`#/components/...`), recursive ones included, resolves. Validators are
//! compiled lazily, one per schema location in the spec, and cached.
//!
//! What is checked:
//! - requests ([`Contract::check_request`]): required query and header parameters present (never `x-api-key`,
//!   `content-type`, `accept`: the server handles those itself), query and header values valid against their
//!   parameter schema (strings coerced to integer/number/boolean per the schema; arrays split per `style`/`explode`;
//!   `filter[0]`, `filter[or][0]`, `x[prop]` keys count as parameter `filter`/`x`), a required request body present,
//!   a JSON body valid against the request body's `application/json` schema, a given content type declared.
//!   Unknown query parameters and headers are allowed. Path parameters are not checked (an [`OperationRef`] carries
//!   the template only).
//! - responses ([`Contract::check_response`]): the status declared by the operation (exact code, `4XX`-style range,
//!   or `default`); a JSON body valid against the declared `application/json` schema; a missing body flagged only if
//!   that schema is an object with required properties. A body on a response declared without content is fine.
//!
//! `format` is asserted for the formats JSON Schema defines (`date-time`, `date`, `email`, …); OpenAPI's own formats
//! (`int32`, `int64`, `byte`, …) are ignored. OpenAPI keywords JSON Schema does not know (`example`, `x-*`,
//! `discriminator`, `xml`, `externalDocs`) are annotations, as are `readOnly`/`writeOnly`.
//!
//! Deliberate tolerances are listed in [`DEVIATIONS`]; nothing else is loosened.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, Registry, Validator};
use serde_json::{Map, Value};

/// Tolerances the checker implements on purpose, as `(operation_id, what and why)`; `"*"` = every operation.
/// The error statuses JumpCloud's best-practices article lists as possible on any call.
const JUMPCLOUD_ERROR_STATUSES: &[u16] = &[
    400, 401, 402, 403, 404, 406, 409, 410, 412, 415, 422, 428, 429, 500, 502, 503, 504,
];

pub const DEVIATIONS: &[(&str, &str)] = &[
    (
        "systemusers_state_activate",
        "request body `email`: the schema types it `object`, but the operation's own description sends \
         `true`/`false` (`{\"email\": false}` suppresses the welcome/activation mail) or a string (the address to \
         send it to); ../shared/docs/jumpcloud-api.md section 10.2. A boolean or string `email` is accepted; any \
         other non-object value is still rejected.",
    ),
    (
        "search_systemusers_post",
        "request body `filter`: the `search` schema types it `object` (`{\"or\": [...]}`, `{\"and\": [...]}`), \
         but the operation's own first sample request sends a list of query expressions \
         (`{\"filter\": [{\"department\": \"IT\"}]}`); ../shared/docs/jumpcloud-api.md section 4.2. A `filter` \
         that is an array of objects is accepted; any other non-object value is still rejected.",
    ),
    (
        "*",
        "undeclared error statuses: most operations declare only their success status (v2 operations \
         forestsync uses rarely declare 4xx at all; GET /systemusers/{id} declares no 404), while JumpCloud's \
         best-practices article lists 400-429 and 500-504 (JUMPCLOUD_ERROR_STATUSES) as possible on any call \
         (../shared/docs/jumpcloud-api.md section 5). Such a status the operation does not declare is accepted \
         when its body conforms to the spec's own shared `ErrorDetails` schema (an `Error` plus optional \
         `details`); other undeclared statuses are still violations.",
    ),
    (
        "*",
        "query arrays declared `style: form, explode: false` (v2 `filter`, `sort`, `fields`, `targets`, ...) are \
         also accepted as a repeated parameter (`filter=a&filter=b`), which is how JumpCloud's own examples send v2 \
         `filter` (../shared/docs/jumpcloud-api.md section 10.4): every occurrence is comma-split and the pieces \
         are merged into one array before validation.",
    ),
];

/// Which of JumpCloud's two APIs (and spec files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// Paths under `/api`, spec `api/1.0/index.yaml`.
    V1,
    /// Paths under `/api/v2`, spec `api/2.0/index.yaml`.
    V2,
}

impl Api {
    /// The URL path prefix the API is served under.
    pub fn prefix(self) -> &'static str {
        match self {
            Api::V1 => "/api",
            Api::V2 => "/api/v2",
        }
    }

    /// The spec file, relative to the directory given to [`Contract::load`].
    pub fn spec_file(self) -> &'static str {
        match self {
            Api::V1 => "api/1.0/index.yaml",
            Api::V2 => "api/2.0/index.yaml",
        }
    }

    fn base_uri(self) -> &'static str {
        match self {
            Api::V1 => "https://jumpcloud-spec.jcemu.invalid/api/1.0/index.json",
            Api::V2 => "https://jumpcloud-spec.jcemu.invalid/api/2.0/index.json",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Api::V1 => "v1",
            Api::V2 => "v2",
        })
    }
}

/// One operation of the spec, as found by [`Contract::operation`].
#[derive(Clone, Debug)]
pub struct OperationRef {
    pub api: Api,
    /// Uppercase HTTP method.
    pub method: String,
    /// The path template as written in the spec, e.g. `/systemusers/{id}`.
    pub template: String,
    /// The spec's (legacy) operationId, e.g. `systemusers_get`.
    pub operation_id: String,
}

/// What [`Contract::check_request`] looks at. Header names lowercase.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestParts<'a> {
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub body: Option<&'a Value>,
    pub content_type: Option<&'a str>,
}

/// Contract violations, one line each, each starting with its location (`body.email: is required`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations(pub Vec<String>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(v)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Why the specs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "JumpCloud spec directory {} not found: pass the directory holding JumpCloud's published OpenAPI files \
         api/1.0/index.yaml and api/2.0/index.yaml (in this project: ../shared/jumpcloud-api next to the repository)",
        dir.display()
    )]
    DirMissing { dir: PathBuf },
    #[error(
        "JumpCloud spec file {} not found: the spec directory must contain api/1.0/index.yaml and \
         api/2.0/index.yaml; fetch it from https://docs.jumpcloud.com/{which} \
         (repo TheJumpCloud/jumpcloud-docs-public, docs/{which}; see SOURCES.md in ../shared/jumpcloud-api)",
        path.display()
    )]
    FileMissing { path: PathBuf, which: &'static str },
    #[error("cannot read JumpCloud spec file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot parse JumpCloud spec file {} as YAML: {message}; the copy is damaged: fetch it again \
         (see SOURCES.md next to it)",
        path.display()
    )]
    Parse { path: PathBuf, message: String },
    #[error(
        "unsupported JumpCloud spec file {}: {detail}; this checker handles OpenAPI 3.1 files with local \
         references only (update spec.rs if JumpCloud changed its format)",
        path.display()
    )]
    Unsupported { path: PathBuf, detail: String },
}

/// Both specs, loaded once. `Send + Sync`; share it in an `Arc`.
pub struct Contract {
    v1: Doc,
    v2: Doc,
    cache: RwLock<HashMap<(Api, String), Compiled>>,
}

type Compiled = Arc<Result<Validator, String>>;

impl fmt::Debug for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compiled = self.cache.read().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Contract")
            .field(
                "v1",
                &format_args!(
                    "{} ({} operations)",
                    self.v1.path.display(),
                    self.v1.ops.len()
                ),
            )
            .field(
                "v2",
                &format_args!(
                    "{} ({} operations)",
                    self.v2.path.display(),
                    self.v2.ops.len()
                ),
            )
            .field("compiled_validators", &compiled)
            .finish()
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Contract>();
}

struct Doc {
    api: Api,
    path: PathBuf,
    root: Arc<Value>,
    registry: Registry<'static>,
    /// Keyed by (uppercase method, template).
    ops: HashMap<(String, String), Operation>,
    routes: Vec<Route>,
}

struct Route {
    template: String,
    /// `None` = a `{param}` segment.
    segments: Vec<Option<String>>,
    methods: Vec<String>,
}

struct Operation {
    operation_id: String,
    params: Vec<Param>,
    body: Option<BodySpec>,
    /// Response keys as written in the spec (`"200"`, `"4XX"`, `"default"`).
    responses: Vec<(String, ResponseSpec)>,
    /// Spec defects found while indexing (unresolvable `$ref`s); reported with every check of the operation.
    problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum In {
    Query,
    Header,
    Path,
    Cookie,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Form,
    Simple,
    SpaceDelimited,
    PipeDelimited,
    DeepObject,
    Other,
}

struct Param {
    name: String,
    location: In,
    required: bool,
    style: Style,
    explode: bool,
    /// JSON pointer (unencoded) to the parameter's schema.
    schema: Option<String>,
}

struct BodySpec {
    required: bool,
    media_types: Vec<String>,
    json_schema: Option<String>,
}

struct ResponseSpec {
    json_schema: Option<String>,
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// Header parameters the checker never asks for (the server handles them itself).
const IGNORED_HEADERS: &[&str] = &["x-api-key", "content-type", "accept"];

impl Contract {
    /// Loads `dir/api/1.0/index.yaml` and `dir/api/2.0/index.yaml` (parsed in parallel).
    pub fn load(dir: &Path) -> Result<Contract, SpecError> {
        if !dir.is_dir() {
            return Err(SpecError::DirMissing {
                dir: dir.to_path_buf(),
            });
        }
        for api in [Api::V1, Api::V2] {
            let path = dir.join(api.spec_file());
            if !path.is_file() {
                return Err(SpecError::FileMissing {
                    path,
                    which: api.spec_file(),
                });
            }
        }
        let (v1, v2) = std::thread::scope(|s| {
            let v2 = s.spawn(|| Doc::load(dir, Api::V2));
            let v1 = Doc::load(dir, Api::V1);
            let v2 = v2
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (v1, v2)
        });
        Ok(Contract {
            v1: v1?,
            v2: v2?,
            cache: RwLock::new(HashMap::new()),
        })
    }

    fn doc(&self, api: Api) -> &Doc {
        match api {
            Api::V1 => &self.v1,
            Api::V2 => &self.v2,
        }
    }

    /// The operation serving `method path`; `path` is relative to the API prefix (`/systemusers/5f1c…`), a query
    /// string is ignored. Literal segments win over templated ones (`/activedirectories/translation-rules/preview`
    /// before `/activedirectories/{activedirectory_id}/…`), leftmost first. Only templates that have `method` count.
    pub fn operation(&self, api: Api, method: &str, path: &str) -> Option<OperationRef> {
        let doc = self.doc(api);
        let method = method.to_ascii_uppercase();
        let path = path.split(['?', '#']).next().unwrap_or("");
        let segments = split_path(path);
        let mut best: Option<&Route> = None;
        for route in &doc.routes {
            if route.segments.len() != segments.len() || !route.methods.contains(&method) {
                continue;
            }
            let matches = route.segments.iter().zip(&segments).all(|(t, s)| match t {
                Some(lit) => lit == s,
                None => !s.is_empty(),
            });
            if !matches {
                continue;
            }
            best = match best {
                Some(b) if !more_specific(route, b) => Some(b),
                _ => Some(route),
            };
        }
        let route = best?;
        let op = doc.ops.get(&(method.clone(), route.template.clone()))?;
        Some(OperationRef {
            api,
            method,
            template: route.template.clone(),
            operation_id: op.operation_id.clone(),
        })
    }

    fn lookup(&self, op: &OperationRef) -> Result<(&Doc, &Operation), Violations> {
        let doc = self.doc(op.api);
        doc.ops
            .get(&(op.method.to_ascii_uppercase(), op.template.clone()))
            .map(|o| (doc, o))
            .ok_or_else(|| {
                Violations(vec![format!(
                    "operation: {} {}{} is not in the {} spec ({})",
                    op.method,
                    op.api.prefix(),
                    op.template,
                    op.api,
                    doc.path.display()
                )])
            })
    }

    /// Checks a request against the operation's parameters and request body.
    pub fn check_request(&self, op: &OperationRef, req: &RequestParts) -> Result<(), Violations> {
        let (doc, operation) = self.lookup(op)?;
        let mut out = operation.problems.clone();

        for param in operation.params.iter().filter(|p| p.location == In::Query) {
            self.check_query_param(doc, param, req.query, &mut out);
        }
        for param in operation.params.iter().filter(|p| p.location == In::Header) {
            self.check_header_param(doc, param, req.headers, &mut out);
        }

        match (&operation.body, req.body) {
            (Some(spec), None) if spec.required => {
                out.push(format!(
                    "body: is required (declared: {})",
                    spec.media_types.join(", ")
                ));
            }
            (Some(spec), Some(body)) => {
                if let Some(ct) = req.content_type {
                    let essence = ct.split(';').next().unwrap_or("").trim();
                    if !spec.media_types.is_empty()
                        && !spec
                            .media_types
                            .iter()
                            .any(|m| m.eq_ignore_ascii_case(essence))
                    {
                        out.push(format!(
                            "header.content-type: {ct:?} is not a declared request media type (declared: {})",
                            spec.media_types.join(", ")
                        ));
                    }
                }
                if let Some(ptr) = &spec.json_schema {
                    let body = tolerate_request(&operation.operation_id, body);
                    self.validate(doc, ptr, &body, "body", &mut out);
                }
            }
            // A body on an operation that declares none is not flagged (as for responses).
            _ => {}
        }
        finish(out)
    }

    /// Checks a response: status declared, JSON body valid against the declared schema.
    pub fn check_response(
        &self,
        op: &OperationRef,
        status: u16,
        body: Option<&Value>,
    ) -> Result<(), Violations> {
        let (doc, operation) = self.lookup(op)?;
        let mut out = operation.problems.clone();
        let Some((key, response)) = find_response(operation, status) else {
            if JUMPCLOUD_ERROR_STATUSES.contains(&status) {
                // See DEVIATIONS ("undeclared error statuses"): checked against the spec's own shared
                // `ErrorDetails` schema (which includes `Error`) instead of being flagged.
                if let Some(body) = body {
                    self.validate(
                        doc,
                        "/components/schemas/ErrorDetails",
                        body,
                        "body",
                        &mut out,
                    );
                }
                return finish(out);
            }
            let declared: Vec<&str> = operation
                .responses
                .iter()
                .map(|(k, _)| k.as_str())
                .collect();
            out.push(format!(
                "status: {status} is not declared for {} {}{} ({}); declared: {}",
                op.method,
                op.api.prefix(),
                op.template,
                operation.operation_id,
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ));
            return finish(out);
        };
        if let Some(ptr) = &response.json_schema {
            match body {
                Some(body) => self.validate(doc, ptr, body, "body", &mut out),
                None => {
                    let required = required_properties(&doc.root, ptr);
                    if !required.is_empty() {
                        out.push(format!(
                            "body: is missing, but the {key} response schema requires properties {}",
                            required.join(", ")
                        ));
                    }
                }
            }
        }
        finish(out)
    }

    fn check_query_param(
        &self,
        doc: &Doc,
        param: &Param,
        query: &[(String, String)],
        out: &mut Vec<String>,
    ) {
        let name = param.name.as_str();
        // (key as sent, bracket suffix after the name or "", value)
        let mut hits: Vec<(&str, String, &str)> = Vec::new();
        for (key, value) in query {
            if key == name {
                hits.push((key, String::new(), value));
            } else if key.len() > name.len() && key.starts_with(name) {
                let rest = decode_brackets(&key[name.len()..]);
                if rest.starts_with('[') {
                    hits.push((key, rest, value));
                }
            }
        }
        if hits.is_empty() {
            if param.required {
                out.push(format!("query.{name}: is required"));
            }
            return;
        }
        let Some(ptr) = &param.schema else { return };
        let Some(schema) = doc.root.pointer(ptr) else {
            return;
        };
        let root = &doc.root;
        let types = schema_types(root, schema, 0);
        let location = format!("query.{name}");

        if types & T_ARRAY != 0 {
            let item_types = subschema(root, schema, "items")
                .map(|s| schema_types(root, s, 0))
                .unwrap_or(0);
            let sep = match param.style {
                Style::Form if !param.explode => Some(','),
                Style::SpaceDelimited => Some(' '),
                Style::PipeDelimited => Some('|'),
                _ => None,
            };
            let mut items = Vec::new();
            for (_, suffix, value) in &hits {
                match sep {
                    Some(sep) if suffix.is_empty() => {
                        items.extend(value.split(sep).map(|v| coerce(v, item_types)));
                    }
                    _ => items.push(coerce(value, item_types)),
                }
            }
            self.validate(doc, ptr, &Value::Array(items), &location, out);
            return;
        }

        if types & T_OBJECT != 0 && hits.iter().any(|(_, suffix, _)| !suffix.is_empty()) {
            let mut object = Map::new();
            for (key, suffix, value) in &hits {
                let prop = suffix
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("");
                if suffix.is_empty() || prop.is_empty() {
                    self.validate(
                        doc,
                        ptr,
                        &coerce(value, types),
                        &format!("query.{key}"),
                        out,
                    );
                    continue;
                }
                let prop_types = subschema(root, schema, "properties")
                    .and_then(|p| p.get(prop))
                    .map(|s| schema_types(root, s, 0))
                    .unwrap_or(0);
                object.insert(prop.to_string(), coerce(value, prop_types));
            }
            if !object.is_empty() {
                self.validate(doc, ptr, &Value::Object(object), &location, out);
            }
            return;
        }

        for (key, suffix, value) in &hits {
            let location = if suffix.is_empty() {
                location.clone()
            } else {
                format!("query.{key}")
            };
            self.validate(doc, ptr, &coerce(value, types), &location, out);
        }
    }

    fn check_header_param(
        &self,
        doc: &Doc,
        param: &Param,
        headers: &[(String, String)],
        out: &mut Vec<String>,
    ) {
        let name = param.name.to_ascii_lowercase();
        if IGNORED_HEADERS.contains(&name.as_str()) {
            return;
        }
        let values: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
            .collect();
        if values.is_empty() {
            if param.required {
                out.push(format!("header.{name}: is required"));
            }
            return;
        }
        let Some(ptr) = &param.schema else { return };
        let Some(schema) = doc.root.pointer(ptr) else {
            return;
        };
        let types = schema_types(&doc.root, schema, 0);
        let location = format!("header.{name}");
        if types & T_ARRAY != 0 {
            let item_types = subschema(&doc.root, schema, "items")
                .map(|s| schema_types(&doc.root, s, 0))
                .unwrap_or(0);
            let items = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(|v| coerce(v.trim(), item_types))
                .collect();
            self.validate(doc, ptr, &Value::Array(items), &location, out);
        } else {
            for value in values {
                self.validate(doc, ptr, &coerce(value.trim(), types), &location, out);
            }
        }
    }

    fn validator(&self, doc: &Doc, ptr: &str) -> Compiled {
        let key = (doc.api, ptr.to_string());
        if let Some(v) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Arc::clone(v);
        }
        // Compiled outside the lock: two threads may both compile a cold entry; the first insert wins.
        let compiled = Arc::new(compile(doc, ptr));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(cache.entry(key).or_insert(compiled))
    }

    fn validate(
        &self,
        doc: &Doc,
        ptr: &str,
        instance: &Value,
        location: &str,
        out: &mut Vec<String>,
    ) {
        let compiled = self.validator(doc, ptr);
        let validator = match &*compiled {
            Ok(v) => v,
            Err(e) => {
                out.push(format!(
                    "{location}: cannot be checked: the schema at {}#{ptr} does not compile: {e}",
                    doc.path.display()
                ));
                return;
            }
        };
        for error in validator.iter_errors(instance) {
            let mut at = location.to_string();
            for segment in error.instance_path().iter() {
                push_segment(&mut at, &segment);
            }
            match error.kind() {
                ValidationErrorKind::Required { property } => {
                    let property = property
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| property.to_string());
                    out.push(format!("{at}.{property}: is required"));
                }
                _ => out.push(format!("{at}: {}", truncate(&error.to_string(), 300))),
            }
        }
    }
}

fn finish(out: Vec<String>) -> Result<(), Violations> {
    if out.is_empty() {
        Ok(())
    } else {
        Err(Violations(out))
    }
}

fn compile(doc: &Doc, ptr: &str) -> Result<Validator, String> {
    let wrapper =
        serde_json::json!({ "$ref": format!("{}#{}", doc.api.base_uri(), encode_fragment(ptr)) });
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&doc.registry)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(true)
        .build(&wrapper)
        .map_err(|e| e.to_string())
}

/// The tolerances of [`DEVIATIONS`] that concern request bodies: a top-level field of a shape the operation's own
/// description uses but its schema rejects is left out of schema validation (any other shape is still checked).
fn tolerate_request<'b>(operation_id: &str, body: &'b Value) -> Cow<'b, Value> {
    type Accepts = fn(&Value) -> bool;
    let tolerated: Option<(&str, Accepts)> = match operation_id {
        "systemusers_state_activate" => Some(("email", |v| v.is_boolean() || v.is_string())),
        "search_systemusers_post" => Some(("filter", |v| {
            v.as_array()
                .is_some_and(|items| items.iter().all(Value::is_object))
        })),
        _ => None,
    };
    if let (Some((field, accepted)), Some(object)) = (tolerated, body.as_object()) {
        if object.get(field).is_some_and(accepted) {
            let mut object = object.clone();
            object.remove(field);
            return Cow::Owned(Value::Object(object));
        }
    }
    Cow::Borrowed(body)
}

fn find_response(operation: &Operation, status: u16) -> Option<(&str, &ResponseSpec)> {
    let exact = status.to_string();
    let range = format!("{}XX", status / 100);
    let find = |wanted: &str| {
        operation
            .responses
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(wanted))
            .map(|(k, r)| (k.as_str(), r))
    };
    find(&exact)
        .or_else(|| find(&range))
        .or_else(|| find("default"))
}

/// Required properties of the object schema at `ptr` (following `$ref` and `allOf`), for the missing-body rule.
fn required_properties(root: &Value, ptr: &str) -> Vec<String> {
    fn collect(root: &Value, schema: &Value, depth: usize, out: &mut Vec<String>) {
        if depth > 16 {
            return;
        }
        let Some(object) = schema.as_object() else {
            return;
        };
        if let Some(Value::Array(required)) = object.get("required") {
            out.extend(
                required
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            );
        }
        if let Some(target) = object
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve_ref(root, r))
        {
            collect(root, target.1, depth + 1, out);
        }
        if let Some(Value::Array(all)) = object.get("allOf") {
            for s in all {
                collect(root, s, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(schema) = root.pointer(ptr) {
        collect(root, schema, 0, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

// ---- types and coercion of parameter values ----

const T_NULL: u8 = 1;
const T_BOOLEAN: u8 = 2;
const T_INTEGER: u8 = 4;
const T_NUMBER: u8 = 8;
const T_STRING: u8 = 16;
const T_ARRAY: u8 = 32;
const T_OBJECT: u8 = 64;

fn type_bit(name: &str) -> u8 {
    match name {
        "null" => T_NULL,
        "boolean" => T_BOOLEAN,
        "integer" => T_INTEGER,
        "number" => T_NUMBER,
        "string" => T_STRING,
        "array" => T_ARRAY,
        "object" => T_OBJECT,
        _ => 0,
    }
}

fn value_bit(v: &Value) -> u8 {
    match v {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOLEAN,
        Value::Number(n) if n.is_i64() || n.is_u64() => T_INTEGER,
        Value::Number(_) => T_NUMBER,
        Value::String(_) => T_STRING,
        Value::Array(_) => T_ARRAY,
        Value::Object(_) => T_OBJECT,
    }
}

/// The JSON types a schema admits, as far as coercion needs to know (0 = unknown).
fn schema_types(root: &Value, schema: &Value, depth: usize) -> u8 {
    if depth > 16 {
        return 0;
    }
    let Some(object) = schema.as_object() else {
        return 0;
    };
    match object.get("type") {
        Some(Value::String(t)) => return type_bit(t),
        Some(Value::Array(ts)) => {
            return ts
                .iter()
                .filter_map(Value::as_str)
                .fold(0, |acc, t| acc | type_bit(t))
        }
        _ => {}
    }
    if let Some(target) = object
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| resolve_ref(root, r))
    {
        return schema_types(root, target.1, depth + 1);
    }
    if let Some(c) = object.get("const") {
        return value_bit(c);
    }
    if let Some(Value::Array(values)) = object.get("enum") {
        return values.iter().fold(0, |acc, v| acc | value_bit(v));
    }
    let mut acc = 0;
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = object.get(key) {
            for s in subs {
                acc |= schema_types(root, s, depth + 1);
            }
        }
    }
    acc
}

/// `schema[key]`, following `$ref`s at the top of `schema`.
fn subschema<'a>(root: &'a Value, schema: &'a Value, key: &str) -> Option<&'a Value> {
    let mut current = schema;
    for _ in 0..16 {
        if let Some(v) = current.get(key) {
            return Some(v);
        }
        current = resolve_ref(root, current.get("$ref")?.as_str()?)?.1;
    }
    None
}

/// A query/header string as the JSON value its schema expects; left a string when it does not fit.
fn coerce(raw: &str, types: u8) -> Value {
    if types & T_INTEGER != 0 {
        if let Ok(i) = raw.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = raw.parse::<u64>() {
            return Value::from(u);
        }
    }
    if types & (T_INTEGER | T_NUMBER) != 0 && types & T_STRING == 0 {
        if let Some(n) = raw
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    if types & T_BOOLEAN != 0 {
        match raw {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if types & T_NULL != 0 && types & T_STRING == 0 && raw == "null" {
        return Value::Null;
    }
    Value::String(raw.to_string())
}

// ---- paths, pointers, references ----

fn split_path(path: &str) -> Vec<&str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

/// `a` beats `b` when, at the first segment where one is literal and the other templated, `a` is the literal.
fn more_specific(a: &Route, b: &Route) -> bool {
    for (x, y) in a.segments.iter().zip(&b.segments) {
        match (x.is_some(), y.is_some()) {
            (true, false) => return true,
            (false, true) => return false,
            _ => {}
        }
    }
    false
}

fn decode_brackets(s: &str) -> String {
    s.replace("%5B", "[")
        .replace("%5b", "[")
        .replace("%5D", "]")
        .replace("%5d", "]")
}

fn push_segment(at: &mut String, segment: &LocationSegment<'_>) {
    match segment {
        LocationSegment::Property(p) => {
            at.push('.');
            at.push_str(p);
        }
        LocationSegment::Index(i) => {
            at.push('[');
            at.push_str(&i.to_string());
            at.push(']');
        }
    }
}

fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.chars().count() <= max {
        Cow::Borrowed(s)
    } else {
        let cut: String = s.chars().take(max).collect();
        Cow::Owned(format!("{cut}…"))
    }
}

fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A JSON pointer as a URI fragment: everything outside RFC 3986 `pchar` / `/` percent-encoded.
fn encode_fragment(ptr: &str) -> String {
    let mut out = String::with_capacity(ptr.len());
    for b in ptr.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A local `$ref` (`#/components/...`) as (pointer, target).
fn resolve_ref<'a>(root: &'a Value, reference: &str) -> Option<(String, &'a Value)> {
    let fragment = reference.strip_prefix('#')?;
    let ptr = percent_decode(fragment);
    root.pointer(&ptr).map(|v| (ptr, v))
}

/// Follows `$ref` chains of OpenAPI objects (parameters, request bodies, responses, path items).
fn resolve_object<'a>(
    root: &'a Value,
    ptr: String,
    value: &'a Value,
) -> Result<(String, &'a Value), String> {
    let (mut ptr, mut value) = (ptr, value);
    for _ in 0..32 {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return Ok((ptr, value));
        };
        match resolve_ref(root, reference) {
            Some((p, v)) => {
                ptr = p;
                value = v;
            }
            None => return Err(format!("$ref {reference:?} at #{ptr} does not resolve")),
        }
    }
    Err(format!("$ref chain at #{ptr} is too long (cycle?)"))
}

/// The first JSON media type of a `content` map (`application/json`, else `…+json` or `…/json; …`).
fn json_media_type(content: &Map<String, Value>) -> Option<&str> {
    if content.contains_key("application/json") {
        return Some("application/json");
    }
    content
        .keys()
        .find(|k| {
            let essence = k
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        })
        .map(String::as_str)
}

fn json_schema_pointer(content_ptr: &str, content: &Map<String, Value>) -> Option<String> {
    let media = json_media_type(content)?;
    content.get(media)?.get("schema")?;
    Some(format!("{content_ptr}/{}/schema", escape_token(media)))
}

// ---- loading ----

impl Doc {
    fn load(dir: &Path, api: Api) -> Result<Doc, SpecError> {
        let path = dir.join(api.spec_file());
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                SpecError::FileMissing {
                    path: path.clone(),
                    which: api.spec_file(),
                }
            } else {
                SpecError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let root: Value = serde_yaml::from_str(&text).map_err(|e| SpecError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        drop(text);
        let unsupported = |detail: String| SpecError::Unsupported {
            path: path.clone(),
            detail,
        };

        match root.get("openapi").and_then(Value::as_str) {
            Some(v) if v.starts_with("3.1.") => {}
            Some(v) => return Err(unsupported(format!("`openapi: {v}`, expected 3.1.x"))),
            None => {
                return Err(unsupported(
                    "no `openapi` version field: not an OpenAPI document".into(),
                ))
            }
        }
        let Some(paths) = root.get("paths").and_then(Value::as_object) else {
            return Err(unsupported("no `paths` object".into()));
        };
        if let Some(reference) = find_non_local_ref(&root) {
            return Err(unsupported(format!("non-local $ref {reference:?}")));
        }

        let mut ops = HashMap::new();
        let mut routes = Vec::new();
        for (template, item) in paths {
            let item_ptr = format!("/paths/{}", escape_token(template));
            let (item_ptr, item) = match resolve_object(&root, item_ptr, item) {
                Ok(x) => x,
                Err(e) => return Err(unsupported(format!("path {template}: {e}"))),
            };
            let mut route = Route {
                template: template.clone(),
                segments: split_path(template)
                    .into_iter()
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            None
                        } else {
                            Some(s.to_string())
                        }
                    })
                    .collect(),
                methods: Vec::new(),
            };
            for method in METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let op_ptr = format!("{item_ptr}/{method}");
                let operation =
                    index_operation(&root, template, method, &item_ptr, item, &op_ptr, op);
                let upper = method.to_ascii_uppercase();
                route.methods.push(upper.clone());
                ops.insert((upper, template.clone()), operation);
            }
            if !route.methods.is_empty() {
                routes.push(route);
            }
        }

        let root = Arc::new(root);
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(api.base_uri(), Arc::clone(&root))
            .and_then(|b| b.prepare())
            .map_err(|e| {
                unsupported(format!(
                    "cannot register the document as a JSON Schema resource: {e}"
                ))
            })?;
        Ok(Doc {
            api,
            path,
            root,
            registry,
            ops,
            routes,
        })
    }
}

fn find_non_local_ref(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                if !r.starts_with('#') {
                    return Some(r.clone());
                }
            }
            map.values().find_map(find_non_local_ref)
        }
        Value::Array(items) => items.iter().find_map(find_non_local_ref),
        _ => None,
    }
}

fn index_operation(
    root: &Value,
    template: &str,
    method: &str,
    item_ptr: &str,
    item: &Value,
    op_ptr: &str,
    op: &Value,
) -> Operation {
    let operation_id = op
        .get("operationId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} {template}", method.to_ascii_uppercase()));
    let mut problems = Vec::new();

    // Path-item parameters first; an operation parameter with the same (name, in) overrides.
    let mut params: Vec<Param> = Vec::new();
    for (base, list) in [
        (item_ptr, item.get("parameters")),
        (op_ptr, op.get("parameters")),
    ] {
        let Some(Value::Array(list)) = list else {
            continue;
        };
        for (i, raw) in list.iter().enumerate() {
            let (ptr, p) = match resolve_object(root, format!("{base}/parameters/{i}"), raw) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(format!("spec: {operation_id} parameter {i}: {e}"));
                    continue;
                }
            };
            let Some(name) = p.get("name").and_then(Value::as_str) else {
                continue;
            };
            let location = match p.get("in").and_then(Value::as_str) {
                Some("query") => In::Query,
                Some("header") => In::Header,
                Some("path") => In::Path,
                Some("cookie") => In::Cookie,
                _ => continue,
            };
            let style = match p.get("style").and_then(Value::as_str) {
                None if matches!(location, In::Query | In::Cookie) => Style::Form,
                None => Style::Simple,
                Some("form") => Style::Form,
                Some("simple") => Style::Simple,
                Some("spaceDelimited") => Style::SpaceDelimited,
                Some("pipeDelimited") => Style::PipeDelimited,
                Some("deepObject") => Style::DeepObject,
                Some(_) => Style::Other,
            };
            let explode = p
                .get("explode")
                .and_then(Value::as_bool)
                .unwrap_or(style == Style::Form);
            let schema = p.get("schema").map(|_| format!("{ptr}/schema"));
            let param = Param {
                name: name.to_string(),
                location,
                required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                style,
                explode,
                schema,
            };
            let same = |q: &Param| {
                q.location == param.location
                    && if location == In::Header {
                        q.name.eq_ignore_ascii_case(&param.name)
                    } else {
                        q.name == param.name
                    }
            };
            if let Some(existing) = params.iter_mut().find(|q| same(q)) {
                *existing = param;
            } else {
                params.push(param);
            }
        }
    }

    let body = match op.get("requestBody") {
        None => None,
        Some(raw) => match resolve_object(root, format!("{op_ptr}/requestBody"), raw) {
            Ok((ptr, rb)) => {
                let content = rb.get("content").and_then(Value::as_object);
                Some(BodySpec {
                    required: rb.get("required").and_then(Value::as_bool).unwrap_or(false),
                    media_types: content
                        .map(|c| c.keys().cloned().collect())
                        .unwrap_or_default(),
                    json_schema: content
                        .and_then(|c| json_schema_pointer(&format!("{ptr}/content"), c)),
                })
            }
            Err(e) => {
                problems.push(format!("spec: {operation_id} requestBody: {e}"));
                None
            }
        },
    };

    let mut responses = Vec::new();
    if let Some(Value::Object(map)) = op.get("responses") {
        for (code, raw) in map {
            let ptr = format!("{op_ptr}/responses/{}", escape_token(code));
            match resolve_object(root, ptr, raw) {
                Ok((ptr, r)) => {
                    let json_schema = r
                        .get("content")
                        .and_then(Value::as_object)
                        .and_then(|c| json_schema_pointer(&format!("{ptr}/content"), c));
                    responses.push((code.clone(), ResponseSpec { json_schema }));
                }
                Err(e) => {
                    problems.push(format!("spec: {operation_id} response {code}: {e}"));
                    responses.push((code.clone(), ResponseSpec { json_schema: None }));
                }
            }
        }
    }

    Operation {
        operation_id,
        params,
        body,
        responses,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::OnceLock;
    use std::time::Instant;

    fn spec_dir() -> PathBuf {
        std::env::var_os("JC_SPEC_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../../shared/jumpcloud-api"
                ))
            })
    }

    fn contract() -> &'static Contract {
        static CONTRACT: OnceLock<Contract> = OnceLock::new();
        CONTRACT.get_or_init(|| {
            let dir = spec_dir();
            let started = Instant::now();
            let contract = Contract::load(&dir).unwrap_or_else(|e| {
                panic!(
                    "these tests need JumpCloud's published specs: expected api/1.0/index.yaml and api/2.0/index.yaml \
                     under {} (set JC_SPEC_DIR to another directory): {e}",
                    dir.display()
                )
            });
            eprintln!("Contract::load took {:?}", started.elapsed());
            contract
        })
    }

    fn op(api: Api, method: &str, path: &str) -> OperationRef {
        contract()
            .operation(api, method, path)
            .unwrap_or_else(|| panic!("no operation for {method} {}{path}", api.prefix()))
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn request<'a>(query: &'a [(String, String)], body: Option<&'a Value>) -> RequestParts<'a> {
        RequestParts {
            query,
            headers: &[],
            body,
            content_type: body.map(|_| "application/json"),
        }
    }

    fn expect_violation(result: Result<(), Violations>, needle: &str) -> Violations {
        let violations = result.expect_err("expected a violation");
        eprintln!("{violations}");
        assert!(
            violations.0.iter().any(|v| v.contains(needle)),
            "no violation mentions {needle:?}:\n{violations}"
        );
        violations
    }

    const ID: &str = "5f1c2a3b4c5d6e7f8a9b0c1d";

    #[test]
    fn finds_operations() {
        let cases = [
            (
                Api::V1,
                "GET",
                "/systemusers".to_string(),
                "/systemusers",
                "systemusers_list",
            ),
            (
                Api::V1,
                "get",
                format!("/systemusers/{ID}"),
                "/systemusers/{id}",
                "systemusers_get",
            ),
            (
                Api::V1,
                "POST",
                "/systemusers".to_string(),
                "/systemusers",
                "systemusers_post",
            ),
            (
                Api::V1,
                "POST",
                format!("/systemusers/{ID}/password"),
                "/systemusers/{id}/password",
                "systemusers_password",
            ),
            (
                Api::V2,
                "POST",
                format!("/usergroups/{ID}/members"),
                "/usergroups/{group_id}/members",
                "graph_userGroupMembersPost",
            ),
            (
                Api::V2,
                "GET",
                format!("/activedirectories/{ID}/associations?targets=user"),
                "/activedirectories/{activedirectory_id}/associations",
                "graph_activeDirectoryAssociationsList",
            ),
            (
                Api::V2,
                "POST",
                format!("/activedirectories/{ID}/agents"),
                "/activedirectories/{activedirectory_id}/agents",
                "activedirectories_agentsPost",
            ),
            (
                Api::V2,
                "DELETE",
                format!("/usergroups/{ID}"),
                "/usergroups/{id}",
                "groups_user_delete",
            ),
            (
                Api::V2,
                "GET",
                "/usergroups/".to_string(),
                "/usergroups",
                "groups_user_list",
            ),
            // Literal segments win over templated ones.
            (
                Api::V2,
                "POST",
                "/activedirectories/translation-rules/preview".to_string(),
                "/activedirectories/translation-rules/preview",
                "activedirectoriesTranslationRules_preview",
            ),
        ];
        for (api, method, path, template, operation_id) in cases {
            let found = op(api, method, &path);
            assert_eq!(found.template, template, "{method} {path}");
            assert_eq!(found.method, method.to_ascii_uppercase());
            assert_eq!(found.api, api);
            assert_eq!(found.operation_id, operation_id, "{method} {path}");
        }
        let c = contract();
        assert!(c.operation(Api::V1, "PATCH", "/systemusers").is_none());
        assert!(c.operation(Api::V1, "GET", "/nope").is_none());
        assert!(
            c.operation(Api::V2, "GET", "/systemusers").is_none(),
            "v1 path looked up in v2"
        );
        assert!(
            c.operation(Api::V1, "GET", "/systemusers//password")
                .is_none(),
            "empty segment is no id"
        );
    }

    #[test]
    fn valid_create_body_accepted() {
        let o = op(Api::V1, "POST", "/systemusers");
        let body = json!({
            "username": "jdoe", "email": "jdoe@example.com", "firstname": "J", "lastname": "Doe",
            "state": "ACTIVATED", "password": "S3cret!pass", "external_dn": "CN=J Doe,DC=alpha,DC=test",
            "external_source_type": "active_directory",
            "attributes": [{"name": "objectGUID", "value": "abc"}],
            "external_password_expiration_date": "2026-01-02T03:04:05Z"
        });
        let query = q(&[("fullValidationDetails", "password")]);
        contract()
            .check_request(&o, &request(&query, Some(&body)))
            .unwrap();
    }

    #[test]
    fn create_body_without_email_rejected() {
        let o = op(Api::V1, "POST", "/systemusers");
        let body = json!({"username": "jdoe"});
        let v = expect_violation(
            contract().check_request(&o, &request(&[], Some(&body))),
            "body.email: is required",
        );
        assert_eq!(v.0.len(), 1, "{v}");
    }

    #[test]
    fn wrong_typed_field_rejected() {
        let o = op(Api::V1, "POST", "/systemusers");
        let body = json!({"username": "jdoe", "email": "jdoe@example.com", "sudo": "yes", "state": "DELETED"});
        let v = expect_violation(
            contract().check_request(&o, &request(&[], Some(&body))),
            "body.sudo:",
        );
        assert!(v.0.iter().any(|l| l.starts_with("body.state:")), "{v}");
        let body = json!({"username": "jdoe", "email": "jdoe@example.com",
                          "external_password_expiration_date": "tomorrow"});
        expect_violation(
            contract().check_request(&o, &request(&[], Some(&body))),
            "body.external_password_expiration_date:",
        );
    }

    #[test]
    fn limit_over_maximum_rejected() {
        let c = contract();
        let o = op(Api::V2, "GET", "/queuedcommand/workflows");
        let query = q(&[("limit", "500")]);
        let v = expect_violation(c.check_request(&o, &request(&query, None)), "query.limit:");
        assert!(v.to_string().contains("500"), "{v}");
        let query = q(&[("limit", "100"), ("skip", "0")]);
        c.check_request(&o, &request(&query, None)).unwrap();
        let query = q(&[("limit", "ten")]);
        expect_violation(c.check_request(&o, &request(&query, None)), "query.limit:");
        // v1 skip has minimum 0.
        let o = op(Api::V1, "POST", "/search/systemusers");
        let query = q(&[("skip", "-1")]);
        expect_violation(c.check_request(&o, &request(&query, None)), "query.skip:");
    }

    #[test]
    fn associations_require_targets() {
        let c = contract();
        let o = op(
            Api::V2,
            "GET",
            &format!("/activedirectories/{ID}/associations"),
        );
        let v = expect_violation(
            c.check_request(&o, &request(&[], None)),
            "query.targets: is required",
        );
        assert_eq!(v.0.len(), 1, "{v}");
        for targets in [
            vec![("targets", "user")],
            vec![("targets", "user,user_group")],
            vec![("targets", "user"), ("targets", "user_group")],
        ] {
            let query = q(&targets);
            c.check_request(&o, &request(&query, None))
                .unwrap_or_else(|v| panic!("{targets:?}: {v}"));
        }
        let query = q(&[("targets", "user,system")]);
        expect_violation(
            c.check_request(&o, &request(&query, None)),
            "query.targets[1]:",
        );
    }

    #[test]
    fn query_styles() {
        let c = contract();
        // v1 filter is a string; filter[n] and filter[or][n] count as filter; unknown parameters are allowed.
        let o = op(Api::V1, "GET", "/systemusers");
        let query = q(&[
            ("filter[0]", "firstname:$eq:foo"),
            ("filter[or][0]", "lastname:$eq:bar"),
            ("limit", "100"),
            ("sort", "_id"),
            ("whatever", "x"),
        ]);
        c.check_request(&o, &request(&query, None)).unwrap();
        // v2 filter: comma-joined or repeated.
        let o = op(Api::V2, "GET", "/usergroups");
        let query = q(&[
            ("filter", "name:eq:A,type:eq:user_group"),
            ("filter", "disabled:eq:false"),
            ("limit", "100"),
        ]);
        c.check_request(&o, &request(&query, None)).unwrap();
        // Boolean query parameter.
        let o = op(Api::V2, "GET", &format!("/activedirectories/{ID}/users"));
        let query = q(&[("syncStatus", "true")]);
        c.check_request(&o, &request(&query, None)).unwrap();
        let query = q(&[("syncStatus", "maybe")]);
        expect_violation(
            c.check_request(&o, &request(&query, None)),
            "query.syncStatus:",
        );
    }

    #[test]
    fn request_bodies() {
        let c = contract();
        let o = op(Api::V2, "POST", &format!("/usergroups/{ID}/members"));
        let body = json!({"op": "add", "type": "user", "id": ID});
        c.check_request(&o, &request(&[], Some(&body))).unwrap();
        let body = json!({"op": "add", "type": "user_group", "id": ID});
        expect_violation(
            c.check_request(&o, &request(&[], Some(&body))),
            "body.type:",
        );
        let body = json!({"type": "user"});
        let v = c.check_request(&o, &request(&[], Some(&body))).unwrap_err();
        assert!(
            v.0.contains(&"body.op: is required".to_string())
                && v.0.contains(&"body.id: is required".to_string()),
            "{v}"
        );

        // `required: true` request body (POST /usergroups does not declare its body required).
        let o = op(Api::V2, "POST", &format!("/usergroups/{ID}/suggestions"));
        let v = expect_violation(
            c.check_request(&o, &request(&[], None)),
            "body: is required",
        );
        assert_eq!(v.0.len(), 1, "{v}");
        let o = op(Api::V2, "POST", "/usergroups");
        c.check_request(&o, &request(&[], None)).unwrap();
        let body = json!({"name": "G"});
        c.check_request(&o, &request(&[], Some(&body))).unwrap();
        let parts = RequestParts {
            query: &[],
            headers: &[],
            body: Some(&body),
            content_type: Some("text/plain"),
        };
        expect_violation(c.check_request(&o, &parts), "header.content-type:");
        let parts = RequestParts {
            content_type: Some("application/json; charset=utf-8"),
            ..parts
        };
        c.check_request(&o, &parts).unwrap();

        let o = op(Api::V2, "POST", &format!("/activedirectories/{ID}/agents"));
        c.check_request(&o, &request(&[], Some(&json!({"agentType": "SYNC"}))))
            .unwrap();
        expect_violation(
            c.check_request(&o, &request(&[], Some(&json!({"agentType": "BOTH"})))),
            "body.agentType:",
        );

        // DEVIATIONS: state/activate `email` as bool or string.
        let o = op(
            Api::V1,
            "POST",
            &format!("/systemusers/{ID}/state/activate"),
        );
        for body in [
            json!({}),
            json!({"email": false}),
            json!({"email": "x@example.com"}),
            json!({"email": {}}),
        ] {
            c.check_request(&o, &request(&[], Some(&body)))
                .unwrap_or_else(|v| panic!("{body}: {v}"));
        }
        expect_violation(
            c.check_request(&o, &request(&[], Some(&json!({"email": 5})))),
            "body.email:",
        );
        // DEVIATIONS: search `filter` as a list of objects (the operation's own sample request).
        let o = op(Api::V1, "POST", "/search/systemusers");
        for body in [
            json!({"filter": [{"department": "IT"}], "fields": "email username sudo"}),
            json!({"filter": {"or": [{"department": "IT"}, {"department": "Sales"}]}}),
            json!({"searchFilter": {"searchTerm": ["john", "sarah"], "fields": ["username"]}}),
        ] {
            c.check_request(&o, &request(&[], Some(&body)))
                .unwrap_or_else(|v| panic!("{body}: {v}"));
        }
        expect_violation(
            c.check_request(
                &o,
                &request(&[], Some(&json!({"filter": ["department:$eq:IT"]}))),
            ),
            "body.filter:",
        );
    }

    #[test]
    fn headers() {
        let c = contract();
        let o = op(Api::V1, "POST", "/search/systemusers");
        let headers = q(&[
            ("x-eventually-consistent", "true"),
            ("x-api-key", "k"),
            ("x-org-id", "abc"),
        ]);
        let parts = RequestParts {
            query: &[],
            headers: &headers,
            body: Some(&json!({"fields": "email"})),
            content_type: None,
        };
        c.check_request(&o, &parts).unwrap();
        let headers = q(&[("x-eventually-consistent", "yes")]);
        let parts = RequestParts {
            headers: &headers,
            ..parts
        };
        expect_violation(
            c.check_request(&o, &parts),
            "header.x-eventually-consistent:",
        );
    }

    fn user() -> Value {
        json!({
            "_id": ID, "username": "jdoe", "email": "jdoe@example.com", "firstname": "J", "lastname": "Doe",
            "state": "ACTIVATED", "suspended": false, "activated": true, "account_locked": false,
            "created": "2026-01-02T03:04:05.000Z", "organization": "5f1c2a3b4c5d6e7f8a9b0c00",
            "password_date": null, "password_expiration_date": null, "password_expired": false,
            "attributes": [{"name": "objectGUID", "value": "abc"}], "addresses": [], "phoneNumbers": [],
            "mfa": {"configured": false, "exclusion": false}, "totp_enabled": false, "sudo": false,
            "external_dn": "CN=J Doe,DC=alpha,DC=test", "external_source_type": "active_directory",
            "delegatedAuthority": null, "restrictedFields": [], "badLoginAttempts": 0, "ssh_keys": []
        })
    }

    #[test]
    fn valid_user_response_accepted() {
        let c = contract();
        for (method, path, status) in [
            ("GET", format!("/systemusers/{ID}"), 200),
            ("POST", "/systemusers".to_string(), 200),
            ("PUT", format!("/systemusers/{ID}"), 200),
            ("DELETE", format!("/systemusers/{ID}"), 200),
        ] {
            let o = op(Api::V1, method, &path);
            c.check_response(&o, status, Some(&user()))
                .unwrap_or_else(|v| panic!("{method} {path}: {v}"));
        }
        let o = op(Api::V1, "GET", "/systemusers");
        c.check_response(
            &o,
            200,
            Some(&json!({"totalCount": 1, "results": [user()]})),
        )
        .unwrap();
    }

    #[test]
    fn undeclared_jumpcloud_error_status_is_checked_against_the_shared_error_schema() {
        let c = contract();
        let o = op(Api::V1, "GET", &format!("/systemusers/{ID}"));
        c.check_response(
            &o,
            404,
            Some(&json!({"code": 404, "message": "Not Found", "status": "Not Found"})),
        )
        .unwrap();
        c.check_response(&o, 429, None).unwrap();
        expect_violation(
            c.check_response(&o, 404, Some(&json!({"code": "not-a-number"}))),
            "body.code",
        );
    }

    #[test]
    fn undeclared_status_rejected() {
        let c = contract();
        let o = op(Api::V1, "GET", &format!("/systemusers/{ID}"));
        let v = expect_violation(
            c.check_response(&o, 418, None),
            "status: 418 is not declared",
        );
        assert!(v.to_string().contains("200"), "{v}");
        // POST /systemusers answers 200 (declared); 201 is not.
        let o = op(Api::V1, "POST", "/systemusers");
        expect_violation(c.check_response(&o, 201, Some(&user())), "status: 201");
        // `default` covers any status.
        let o = op(Api::V2, "GET", "/usergroups");
        c.check_response(
            &o,
            503,
            Some(&json!({"code": 503, "message": "Service Unavailable"})),
        )
        .unwrap();
    }

    #[test]
    fn wrong_typed_response_rejected() {
        let c = contract();
        let o = op(Api::V1, "GET", &format!("/systemusers/{ID}"));
        let mut body = user();
        body["_id"] = json!(5);
        body["state"] = json!("GONE");
        let v = expect_violation(c.check_response(&o, 200, Some(&body)), "body._id:");
        assert!(v.0.iter().any(|l| l.starts_with("body.state:")), "{v}");
        let o = op(Api::V2, "GET", &format!("/usergroups/{ID}/members"));
        expect_violation(
            c.check_response(&o, 200, Some(&json!([{"to": {"id": ID}}]))),
            "body[0].to.type: is required",
        );
        expect_violation(
            c.check_response(&o, 200, Some(&json!({"to": {"id": ID, "type": "user"}}))),
            "body:",
        );
    }

    #[test]
    fn documented_oddities_not_flagged() {
        let c = contract();
        let group = json!({"id": ID, "name": "G", "type": "user_group", "membershipMethod": "STATIC",
                           "attributes": {}});
        // DELETE /usergroups/{id}: 200 with body, or 204.
        let o = op(Api::V2, "DELETE", &format!("/usergroups/{ID}"));
        c.check_response(&o, 200, Some(&group)).unwrap();
        c.check_response(&o, 204, None).unwrap();
        // POST /usergroups 201; graph POST 204 (no content; a body would not be flagged either).
        c.check_response(&op(Api::V2, "POST", "/usergroups"), 201, Some(&group))
            .unwrap();
        let o = op(Api::V2, "POST", &format!("/usergroups/{ID}/members"));
        c.check_response(&o, 204, None).unwrap();
        c.check_response(&o, 204, Some(&json!({}))).unwrap();
        // Password: 200, no content.
        let o = op(Api::V1, "POST", &format!("/systemusers/{ID}/password"));
        c.check_response(&o, 200, None).unwrap();
        c.check_response(
            &o,
            404,
            Some(&json!({"code": 404, "message": "Not Found", "status": "Not Found"})),
        )
        .unwrap();
        // v2 lists are bare arrays (the count travels in the undeclared x-total-count header: nothing to check).
        let o = op(
            Api::V2,
            "GET",
            &format!("/activedirectories/{ID}/associations"),
        );
        c.check_response(
            &o,
            200,
            Some(&json!([{"to": {"id": ID, "type": "user"}, "attributes": null}])),
        )
        .unwrap();
        let o = op(Api::V2, "GET", "/activedirectories");
        let ad = json!({"id": ID, "domain": "DC=alpha;DC=test", "useCase": "ADASAUTHORITY", "updatedAt": null,
                        "primaryAgent": ID, "delegationState": "DISABLED", "groupsEnabled": true});
        c.check_response(&o, 200, Some(&json!([ad]))).unwrap();
        // Agent creation 201 with connectKey; missing body where the schema requires `id` is flagged.
        let o = op(Api::V2, "POST", &format!("/activedirectories/{ID}/agents"));
        let agent = json!({"id": ID, "connectKey": "k", "state": "unsealed", "hostname": null,
                           "passwordUpdatedAt": "2026-01-02T03:04:05Z", "contactAt": null});
        c.check_response(&o, 201, Some(&agent)).unwrap();
        expect_violation(c.check_response(&o, 201, None), "body: is missing");
        let mut bad = agent.clone();
        bad["passwordUpdatedAt"] = json!("yesterday");
        expect_violation(
            c.check_response(&o, 201, Some(&bad)),
            "body.passwordUpdatedAt:",
        );
        // Missing body with no required properties: fine.
        c.check_response(
            &op(Api::V1, "GET", &format!("/systemusers/{ID}")),
            200,
            None,
        )
        .unwrap();
    }

    #[test]
    fn unknown_operation_ref() {
        let fake = OperationRef {
            api: Api::V2,
            method: "GET".into(),
            template: "/nothing/{id}".into(),
            operation_id: "nothing".into(),
        };
        expect_violation(
            contract().check_response(&fake, 200, None),
            "operation: GET /api/v2/nothing/{id}",
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = Path::new("/nonexistent/jumpcloud-api");
        let e = Contract::load(missing).unwrap_err();
        assert!(matches!(e, SpecError::DirMissing { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/jumpcloud-api"), "{e}");
        let empty = std::env::temp_dir().join(format!("jcemu-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(empty.join("api/1.0")).unwrap();
        std::fs::write(
            empty.join("api/1.0/index.yaml"),
            "openapi: 3.1.0\npaths: {}\n",
        )
        .unwrap();
        let e = Contract::load(&empty).unwrap_err();
        assert!(e.to_string().contains("api/2.0/index.yaml"), "{e}");
        std::fs::create_dir_all(empty.join("api/2.0")).unwrap();
        std::fs::write(
            empty.join("api/2.0/index.yaml"),
            "openapi: 3.0.1\npaths: {}\n",
        )
        .unwrap();
        let e = Contract::load(&empty).unwrap_err();
        assert!(
            matches!(e, SpecError::Unsupported { .. }) && e.to_string().contains("3.0.1"),
            "{e}"
        );
        std::fs::write(empty.join("api/2.0/index.yaml"), "openapi: [3.1.0\n").unwrap();
        let e = Contract::load(&empty).unwrap_err();
        assert!(
            matches!(e, SpecError::Parse { .. }) && e.to_string().contains("api/2.0/index.yaml"),
            "{e}"
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn recursive_and_nested_refs() {
        let c = contract();
        // jumpcloud.search.SearchRequestFilter -> filters[] -> SearchRequestFilter (recursive), query -> SearchRequest.
        let ptr = "/components/schemas/jumpcloud.search.SearchRequestFilter";
        let ok = json!({"operation": "and", "filters": [{"filters": [{"field": "user.name", "value": "x"}]}]});
        let mut out = Vec::new();
        c.validate(&c.v2, ptr, &ok, "body", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let bad = json!({"filters": [{"filters": [{"field": 5}]}]});
        c.validate(&c.v2, ptr, &bad, "body", &mut out);
        assert!(
            out.iter()
                .any(|l| l.starts_with("body.filters[0].filters[0].field:")),
            "{out:?}"
        );
        // UserGroup -> GroupAttributes-UserGroup (allOf of $refs) -> GraphAttribute-Sudo.
        let o = op(Api::V2, "GET", &format!("/usergroups/{ID}"));
        let group = json!({"id": ID, "name": "G", "attributes": {"sudo": {"enabled": true, "withoutPassword": false}}});
        c.check_response(&o, 200, Some(&group)).unwrap();
        let group = json!({"id": ID, "name": "G", "attributes": {"sudo": {"enabled": "yes"}}});
        let v = expect_violation(
            c.check_response(&o, 200, Some(&group)),
            "body.attributes.sudo.enabled:",
        );
        assert!(
            v.0.contains(&"body.attributes.sudo.withoutPassword: is required".to_string()),
            "{v}"
        );
    }

    #[test]
    fn status_ranges_and_default() {
        let response = |k: &str| (k.to_string(), ResponseSpec { json_schema: None });
        let mut operation = Operation {
            operation_id: "x".into(),
            params: Vec::new(),
            body: None,
            responses: vec![response("200"), response("4xx"), response("404")],
            problems: Vec::new(),
        };
        assert_eq!(find_response(&operation, 200).unwrap().0, "200");
        assert_eq!(find_response(&operation, 404).unwrap().0, "404");
        assert_eq!(find_response(&operation, 429).unwrap().0, "4xx");
        assert!(find_response(&operation, 500).is_none());
        assert!(find_response(&operation, 201).is_none());
        operation.responses.push(response("default"));
        assert_eq!(find_response(&operation, 500).unwrap().0, "default");
        assert_eq!(find_response(&operation, 429).unwrap().0, "4xx");
    }

    /// Compiles every schema either spec refers to (about 4,800; ~1 s in a debug build), so a spec refresh that
    /// brings a schema the validator cannot compile fails here rather than in an emulator test.
    #[test]
    fn every_schema_compiles() {
        let c = contract();
        let started = Instant::now();
        let mut failures = Vec::new();
        let mut count = 0;
        for doc in [&c.v1, &c.v2] {
            for ((method, template), operation) in &doc.ops {
                failures.extend(operation.problems.iter().cloned());
                let mut ptrs: Vec<&String> = operation
                    .params
                    .iter()
                    .filter_map(|p| p.schema.as_ref())
                    .collect();
                ptrs.extend(operation.body.iter().filter_map(|b| b.json_schema.as_ref()));
                ptrs.extend(
                    operation
                        .responses
                        .iter()
                        .filter_map(|(_, r)| r.json_schema.as_ref()),
                );
                for ptr in ptrs {
                    count += 1;
                    if let Err(e) = &*c.validator(doc, ptr) {
                        failures.push(format!("{} {method} {template} #{ptr}: {e}", doc.api));
                    }
                }
            }
        }
        eprintln!("compiled {count} schemas in {:?}", started.elapsed());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
