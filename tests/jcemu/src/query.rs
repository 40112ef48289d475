//! Query parameters, JumpCloud's v1/v2 filter languages, sort, field projection and paging.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::config::LimitPolicy;

pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_LIMIT: usize = 10;

/// Decoded query string (`+` is a space, percent-decoding applied), in order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(q: Option<&str>) -> Params {
        let pairs = q
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Params { pairs }
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Value of a (possibly dotted) field.
pub fn lookup<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = doc.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    Nin,
    Lt,
    Lte,
    Gt,
    Gte,
    Sw,
    Ew,
    Co,
    Nco,
    /// v2 `search`: case-insensitive substring.
    Search,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cond {
    pub field: String,
    pub op: Op,
    pub terms: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Every member must match (an empty list matches everything).
    All(Vec<Filter>),
    /// At least one member must match (an empty list matches everything).
    Any(Vec<Filter>),
    Cond(Cond),
}

impl Filter {
    pub fn everything() -> Filter {
        Filter::All(Vec::new())
    }

    pub fn is_everything(&self) -> bool {
        match self {
            Filter::All(v) | Filter::Any(v) => v.iter().all(Filter::is_everything),
            Filter::Cond(_) => false,
        }
    }

    pub fn matches(&self, doc: &Map<String, Value>) -> bool {
        match self {
            Filter::All(v) => v.iter().all(|f| f.matches(doc)),
            Filter::Any(v) => v.is_empty() || v.iter().any(|f| f.matches(doc)),
            Filter::Cond(c) => c.matches(lookup(doc, &c.field)),
        }
    }

    pub fn rename_field(&mut self, from: &str, to: &str) {
        match self {
            Filter::All(v) | Filter::Any(v) => v.iter_mut().for_each(|f| f.rename_field(from, to)),
            Filter::Cond(c) => {
                if c.field == from {
                    c.field = to.to_string();
                }
            }
        }
    }
}

impl Cond {
    pub fn matches(&self, v: Option<&Value>) -> bool {
        let (op, negate) = match self.op {
            Op::Ne => (Op::Eq, true),
            Op::Nin => (Op::In, true),
            Op::Nco => (Op::Co, true),
            o => (o, false),
        };
        let hit = match v {
            None | Some(Value::Null) => op == Op::Eq && self.terms.iter().any(|t| t == "null"),
            Some(Value::Array(items)) => items.iter().any(|i| scalar_test(op, &self.terms, i)),
            Some(other) => scalar_test(op, &self.terms, other),
        };
        hit != negate
    }
}

fn scalar_test(op: Op, terms: &[String], v: &Value) -> bool {
    match op {
        Op::Eq | Op::In => terms.iter().any(|t| equals(v, t)),
        Op::Lt => terms.first().and_then(|t| compare(v, t)) == Some(Ordering::Less),
        Op::Lte => matches!(
            terms.first().and_then(|t| compare(v, t)),
            Some(Ordering::Less | Ordering::Equal)
        ),
        Op::Gt => terms.first().and_then(|t| compare(v, t)) == Some(Ordering::Greater),
        Op::Gte => matches!(
            terms.first().and_then(|t| compare(v, t)),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        Op::Sw => text(v).is_some_and(|s| terms.iter().any(|t| s.starts_with(t.as_str()))),
        Op::Ew => text(v).is_some_and(|s| terms.iter().any(|t| s.ends_with(t.as_str()))),
        Op::Co => text(v).is_some_and(|s| terms.iter().any(|t| s.contains(t.as_str()))),
        Op::Search => text(v).is_some_and(|s| {
            let s = s.to_lowercase();
            terms.iter().any(|t| s.contains(&t.to_lowercase()))
        }),
        Op::Ne | Op::Nin | Op::Nco => false,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn equals(v: &Value, term: &str) -> bool {
    match v {
        Value::String(s) => s == term,
        Value::Bool(b) => term == if *b { "true" } else { "false" },
        Value::Number(n) => match (n.as_f64(), term.parse::<f64>()) {
            (Some(a), Ok(b)) => a == b,
            _ => false,
        },
        Value::Null => term == "null",
        _ => false,
    }
}

fn compare(v: &Value, term: &str) -> Option<Ordering> {
    match v {
        Value::String(s) => Some(s.as_str().cmp(term)),
        Value::Number(n) => n.as_f64()?.partial_cmp(&term.parse::<f64>().ok()?),
        Value::Bool(b) => Some(b.cmp(&term.parse::<bool>().ok()?)),
        _ => None,
    }
}

/// Splits on `|`; `\|` is a literal `|`.
pub fn split_terms(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn has_unescaped_pipe(value: &str) -> bool {
    split_terms(value).len() > 1
}

/// One v1 filter `<field>:$<op>:<value>`.
pub fn parse_v1(s: &str, eventually_consistent: bool) -> Result<Cond, String> {
    let bad = || {
        format!("invalid filter '{s}': expected <field>:<operator>:<value>, e.g. username:$eq:jdoe")
    };
    let (field, rest) = s.split_once(':').ok_or_else(bad)?;
    let (op, value) = rest.split_once(':').ok_or_else(bad)?;
    if field.is_empty() {
        return Err(bad());
    }
    let op = match op {
        "$eq" => Op::Eq,
        "$ne" => Op::Ne,
        "$in" => Op::In,
        "$nin" => Op::Nin,
        "$lt" => Op::Lt,
        "$lte" => Op::Lte,
        "$gt" => Op::Gt,
        "$gte" => Op::Gte,
        "$sw" => Op::Sw,
        "$ew" => Op::Ew,
        "$co" => Op::Co,
        "$nco" => Op::Nco,
        o if !o.starts_with('$') => {
            return Err(format!(
                "invalid filter '{s}': v1 operators start with '$' (e.g. $eq), got '{o}'"
            ))
        }
        o => return Err(format!("invalid filter '{s}': unsupported operator '{o}'")),
    };
    let needs_ec =
        matches!(op, Op::Ew | Op::Co | Op::Nco) || (op == Op::Sw && has_unescaped_pipe(value));
    if needs_ec && !eventually_consistent {
        return Err(format!(
            "invalid filter '{s}': this operator form requires the header 'x-eventually-consistent: true'"
        ));
    }
    let terms = match op {
        Op::In | Op::Nin | Op::Sw | Op::Ew | Op::Co | Op::Nco => split_terms(value),
        _ => vec![value.replace("\\|", "|")],
    };
    Ok(Cond {
        field: field.to_string(),
        op,
        terms,
    })
}

const V2_OPS: [&str; 9] = [
    "eq", "ne", "gt", "ge", "lt", "le", "in", "search", "between",
];

/// One v2 filter `<field>:<op>:<value>`.
pub fn parse_v2(s: &str) -> Result<Cond, String> {
    let bad = || {
        format!("invalid filter '{s}': expected <field>:<operator>:<value>, e.g. name:eq:Admins")
    };
    let (field, rest) = s.split_once(':').ok_or_else(bad)?;
    let (op, value) = rest.split_once(':').ok_or_else(bad)?;
    if field.is_empty() {
        return Err(bad());
    }
    let op = match op {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" => Op::Gt,
        "ge" => Op::Gte,
        "lt" => Op::Lt,
        "le" => Op::Lte,
        "in" => Op::In,
        "search" => Op::Search,
        "between" => {
            return Err(format!(
                "invalid filter '{s}': the 'between' operator is not supported by jcemu"
            ))
        }
        o => {
            return Err(format!(
                "invalid filter '{s}': unsupported operator '{o}' (eq ne gt ge lt le in search)"
            ))
        }
    };
    let terms = if op == Op::In {
        split_terms(value)
    } else {
        vec![value.to_string()]
    };
    Ok(Cond {
        field: field.to_string(),
        op,
        terms,
    })
}

fn looks_like_v2_filter(s: &str) -> bool {
    let mut it = s.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(f), Some(op), Some(_)) => {
            !f.is_empty()
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && V2_OPS.contains(&op)
        }
        _ => false,
    }
}

/// The v2 filters of a request: `filter` may be repeated and/or comma-joined (`explode: false`). A comma
/// starts a new filter only when what follows looks like `<field>:<op>:`, so values may contain commas.
pub fn v2_filter(params: &Params, allowed_fields: Option<&[&str]>) -> Result<Filter, String> {
    let mut conds = Vec::new();
    for raw in params.all("filter") {
        if raw.is_empty() {
            continue;
        }
        let mut pieces: Vec<String> = Vec::new();
        for piece in raw.split(',') {
            match pieces.last_mut() {
                Some(last) if !looks_like_v2_filter(piece) => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => pieces.push(piece.to_string()),
            }
        }
        for p in pieces {
            let c = parse_v2(&p)?;
            if let Some(allowed) = allowed_fields {
                if !allowed.contains(&c.field.as_str()) {
                    return Err(format!(
                        "invalid filter '{p}': only these fields can be filtered here: {}",
                        allowed.join(", ")
                    ));
                }
            }
            conds.push(Filter::Cond(c));
        }
    }
    Ok(Filter::All(conds))
}

/// The v1 query filters: `filter=` (repeatable, AND), `filter[N]=` / `filter[and][N]=` (AND),
/// `filter[or][N]=` (OR of those, ANDed with the rest).
pub fn v1_query_filter(params: &Params, eventually_consistent: bool) -> Result<Filter, String> {
    let mut and = Vec::new();
    let mut or = Vec::new();
    for (k, v) in params.pairs() {
        if k == "filter" {
            if !v.is_empty() {
                and.push(Filter::Cond(parse_v1(v, eventually_consistent)?));
            }
            continue;
        }
        let Some(rest) = k.strip_prefix("filter[") else {
            continue;
        };
        let indexed = |s: &str| {
            s.strip_suffix(']')
                .is_some_and(|n| n.parse::<usize>().is_ok())
        };
        if let Some(r) = rest.strip_prefix("or][") {
            if !indexed(r) {
                return Err(format!("invalid filter parameter '{k}'"));
            }
            or.push(Filter::Cond(parse_v1(v, eventually_consistent)?));
        } else if let Some(r) = rest.strip_prefix("and][") {
            if !indexed(r) {
                return Err(format!("invalid filter parameter '{k}'"));
            }
            and.push(Filter::Cond(parse_v1(v, eventually_consistent)?));
        } else if indexed(rest) {
            and.push(Filter::Cond(parse_v1(v, eventually_consistent)?));
        } else {
            return Err(format!("invalid filter parameter '{k}'"));
        }
    }
    if !or.is_empty() {
        and.push(Filter::Any(or));
    }
    Ok(Filter::All(and))
}

fn body_term(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".into()),
        other => Err(format!("unsupported filter value {other}")),
    }
}

/// `filter` of `POST /search/systemusers`: a list of `{field: value}` objects (AND), `{"or": [...]}`,
/// `{"and": [...]}`, `{field: value, ...}` (AND), or a v1 filter string. A value may be a scalar (equality) or
/// `{"$op": value}` (`$in`/`$nin`/multi-term operators take a list or a `|`-separated string).
pub fn v1_body_filter(v: &Value, eventually_consistent: bool) -> Result<Filter, String> {
    match v {
        Value::Null => Ok(Filter::everything()),
        Value::String(s) => Ok(Filter::Cond(parse_v1(s, eventually_consistent)?)),
        Value::Array(items) => Ok(Filter::All(
            items
                .iter()
                .map(|i| v1_body_filter(i, eventually_consistent))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(m) => {
            let mut all = Vec::new();
            for (k, val) in m {
                match k.as_str() {
                    "or" | "$or" => {
                        let items = val.as_array().ok_or("filter 'or' must be a list")?;
                        all.push(Filter::Any(
                            items
                                .iter()
                                .map(|i| v1_body_filter(i, eventually_consistent))
                                .collect::<Result<_, _>>()?,
                        ));
                    }
                    "and" | "$and" => {
                        let items = val.as_array().ok_or("filter 'and' must be a list")?;
                        all.push(Filter::All(
                            items
                                .iter()
                                .map(|i| v1_body_filter(i, eventually_consistent))
                                .collect::<Result<_, _>>()?,
                        ));
                    }
                    field => match val {
                        Value::Object(ops) => {
                            for (op, arg) in ops {
                                let terms = match arg {
                                    Value::Array(a) => {
                                        a.iter().map(body_term).collect::<Result<Vec<_>, _>>()?
                                    }
                                    other => {
                                        let t = body_term(other)?;
                                        if ["$in", "$nin", "$sw", "$ew", "$co", "$nco"]
                                            .contains(&op.as_str())
                                        {
                                            split_terms(&t)
                                        } else {
                                            vec![t]
                                        }
                                    }
                                };
                                let joined: Vec<String> =
                                    terms.iter().map(|t| t.replace('|', "\\|")).collect();
                                let c = parse_v1(
                                    &format!("{field}:{op}:{}", joined.join("|")),
                                    eventually_consistent,
                                )?;
                                all.push(Filter::Cond(c));
                            }
                        }
                        Value::Array(a) => {
                            let terms = a.iter().map(body_term).collect::<Result<Vec<_>, _>>()?;
                            all.push(Filter::Cond(Cond {
                                field: field.to_string(),
                                op: Op::In,
                                terms,
                            }));
                        }
                        scalar => all.push(Filter::Cond(Cond {
                            field: field.to_string(),
                            op: Op::Eq,
                            terms: vec![body_term(scalar)?],
                        })),
                    },
                }
            }
            Ok(Filter::All(all))
        }
        other => Err(format!("unsupported filter {other}")),
    }
}

/// `searchFilter: {searchTerm: string | [string], fields: [string]}`: any term is a case-insensitive substring
/// of any of the fields (default fields: username, email, firstname, lastname, displayname).
pub fn search_filter(v: &Value) -> Result<Filter, String> {
    let m = match v {
        Value::Null => return Ok(Filter::everything()),
        Value::Object(m) => m,
        _ => return Err("searchFilter must be an object".into()),
    };
    let terms: Vec<String> = match m.get("searchTerm") {
        None | Some(Value::Null) => return Ok(Filter::everything()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(body_term).collect::<Result<_, _>>()?,
        Some(_) => {
            return Err("searchFilter.searchTerm must be a string or a list of strings".into())
        }
    };
    let fields: Vec<String> = match m.get("fields") {
        None | Some(Value::Null) => ["username", "email", "firstname", "lastname", "displayname"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| {
                f.as_str()
                    .map(str::to_string)
                    .ok_or("searchFilter.fields must be strings")
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Some(_) => return Err("searchFilter.fields must be a list of strings".into()),
    };
    Ok(Filter::Any(
        fields
            .into_iter()
            .map(|f| {
                Filter::Cond(Cond {
                    field: f,
                    op: Op::Search,
                    terms: terms.clone(),
                })
            })
            .collect(),
    ))
}

#[derive(Clone, Debug, PartialEq)]
pub struct SortKey {
    pub field: String,
    pub desc: bool,
}

/// Sort keys from space- or comma-separated lists; `-` prefix = descending.
pub fn parse_sort<'a>(values: impl Iterator<Item = &'a str>) -> Vec<SortKey> {
    let mut keys = Vec::new();
    for v in values {
        for k in v.split([' ', ',']).filter(|s| !s.is_empty()) {
            let (field, desc) = match k.strip_prefix('-') {
                Some(f) => (f, true),
                None => (k.strip_prefix('+').unwrap_or(k), false),
            };
            if !field.is_empty() {
                keys.push(SortKey {
                    field: field.to_string(),
                    desc,
                });
            }
        }
    }
    keys
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(_)) => 1,
        Some(Value::String(_)) => 2,
        Some(Value::Object(_)) => 3,
        Some(Value::Array(_)) => 4,
        Some(Value::Bool(_)) => 5,
    }
}

pub fn cmp_json(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (
            Some(x @ (Value::Object(_) | Value::Array(_))),
            Some(y @ (Value::Object(_) | Value::Array(_))),
        ) if rank(Some(x)) == rank(Some(y)) => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Compares two documents by the sort keys, then by `id_field` ascending (stable paging).
pub fn cmp_docs(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    keys: &[SortKey],
    id_field: &str,
) -> Ordering {
    for k in keys {
        let o = cmp_json(lookup(a, &k.field), lookup(b, &k.field));
        let o = if k.desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    cmp_json(a.get(id_field), b.get(id_field))
}

/// Field projection from space- or comma-separated lists; `None` = all fields.
pub fn parse_fields<'a>(values: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
    let fields: Vec<String> = values
        .flat_map(|v| v.split([' ', ',']))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if fields.is_empty() {
        None
    } else {
        Some(fields)
    }
}

/// Keeps `id_field` and the requested top-level fields (a dotted name keeps its top-level field).
pub fn project(doc: &Map<String, Value>, fields: Option<&[String]>, id_field: &str) -> Value {
    match fields {
        None => Value::Object(doc.clone()),
        Some(fields) => {
            let mut out = Map::new();
            if let Some(id) = doc.get(id_field) {
                out.insert(id_field.to_string(), id.clone());
            }
            for f in fields {
                let top = f.split('.').next().unwrap_or(f);
                if let Some(v) = doc.get(top) {
                    out.insert(top.to_string(), v.clone());
                }
            }
            Value::Object(out)
        }
    }
}

fn parse_count(params: &Params, name: &str) -> Result<Option<i64>, String> {
    match params.get(name) {
        None | Some("") => Ok(None),
        Some(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{name} must be an integer, got '{s}'")),
    }
}

/// `limit`: default 10, 1..=100; above 100 → 400 or clamped per `LimitPolicy`.
pub fn limit(params: &Params, policy: LimitPolicy) -> Result<usize, String> {
    match parse_count(params, "limit")? {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if n < 1 => Err(format!("limit must be between 1 and {MAX_LIMIT}, got {n}")),
        Some(n) if n > MAX_LIMIT as i64 => match policy {
            LimitPolicy::Reject => Err(format!("limit must be between 1 and {MAX_LIMIT}, got {n}")),
            LimitPolicy::Clamp => Ok(MAX_LIMIT),
        },
        Some(n) => Ok(n as usize),
    }
}

pub fn skip(params: &Params) -> Result<usize, String> {
    match parse_count(params, "skip")? {
        None => Ok(0),
        Some(n) if n < 0 => Err(format!("skip must be >= 0, got {n}")),
        Some(n) => usize::try_from(n).map_err(|_| format!("skip out of range: {n}")),
    }
}

/// Filters, sorts (keys then id), counts, pages and projects a list of documents.
pub struct ListSpec<'a> {
    pub filter: &'a Filter,
    pub sort: &'a [SortKey],
    pub fields: Option<&'a [String]>,
    pub skip: usize,
    pub limit: usize,
    pub id_field: &'a str,
}

impl ListSpec<'_> {
    /// `docs` must already be in id order.
    pub fn apply<'d>(
        &self,
        docs: impl Iterator<Item = &'d Map<String, Value>>,
    ) -> (usize, Vec<Value>) {
        let id_only =
            self.sort.is_empty() || (self.sort.len() == 1 && self.sort[0].field == self.id_field);
        let mut matched: Vec<&Map<String, Value>> =
            docs.filter(|d| self.filter.matches(d)).collect();
        let total = matched.len();
        if id_only {
            if self.sort.first().is_some_and(|k| k.desc) {
                matched.reverse();
            }
        } else {
            matched.sort_by(|a, b| cmp_docs(a, b, self.sort, self.id_field));
        }
        let page = matched
            .into_iter()
            .skip(self.skip)
            .take(self.limit)
            .map(|d| project(d, self.fields, self.id_field))
            .collect();
        (total, page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn v1_ops() {
        let d = doc(
            json!({"department": "Shipping|Receiving Item", "n": 5, "s": true, "tags": ["a", "b"]}),
        );
        let m = |f: &str, ec: bool| parse_v1(f, ec).map(|c| c.matches(lookup(&d, &c.field)));
        assert_eq!(m("department:$sw:Shipping\\|Receiving", false), Ok(true));
        assert!(m("department:$sw:Shipping|Receiving", false).is_err());
        assert_eq!(m("department:$sw:Receiving|Shipping", true), Ok(true));
        assert_eq!(
            m("department:$in:Finance|Shipping\\|Receiving Item", false),
            Ok(true)
        );
        assert_eq!(m("department:$nin:Finance|IT", false), Ok(true));
        assert_eq!(m("n:$gt:4", false), Ok(true));
        assert_eq!(m("n:$lte:4", false), Ok(false));
        assert_eq!(m("s:$eq:true", false), Ok(true));
        assert_eq!(m("tags:$eq:b", false), Ok(true));
        assert_eq!(m("missing:$ne:x", false), Ok(true));
        assert_eq!(
            m("department:$eq:shipping|receiving item", false),
            Ok(false)
        );
        assert!(m("department:$co:Item", false).is_err());
        assert_eq!(m("department:$co:Item", true), Ok(true));
        assert_eq!(m("department:$nco:Item", true), Ok(false));
        assert!(m("department:eq:x", false).is_err());
        assert!(m("department", false).is_err());
    }

    #[test]
    fn v1_params() {
        let p = Params::parse(Some(
            "filter[or][0]=a:$eq:1&filter[or][1]=a:$eq:2&filter[0]=b:$eq:x",
        ));
        let f = v1_query_filter(&p, false).unwrap_or_else(|_| Filter::everything());
        assert!(f.matches(&doc(json!({"a": "2", "b": "x"}))));
        assert!(!f.matches(&doc(json!({"a": "3", "b": "x"}))));
        assert!(!f.matches(&doc(json!({"a": "1", "b": "y"}))));
        assert!(v1_query_filter(&Params::parse(Some("filter[x]=a:$eq:1")), false).is_err());
    }

    #[test]
    fn v2_comma_join() {
        let p = Params::parse(Some("filter=name:eq:a,b,type:eq:user_group&filter=x:ne:1"));
        let f = v2_filter(&p, None).unwrap_or_else(|_| Filter::everything());
        assert!(f.matches(&doc(json!({"name": "a,b", "type": "user_group", "x": 2}))));
        assert!(!f.matches(&doc(json!({"name": "a", "type": "user_group"}))));
        assert!(v2_filter(
            &Params::parse(Some("filter=name:eq:x")),
            Some(&["object_id", "type"])
        )
        .is_err());
    }

    #[test]
    fn body_filters() {
        let f = v1_body_filter(
            &json!({"or": [{"department": "IT"}, {"department": "Sales"}]}),
            false,
        )
        .unwrap_or_else(|_| Filter::everything());
        assert!(f.matches(&doc(json!({"department": "Sales"}))));
        assert!(!f.matches(&doc(json!({"department": "HR"}))));
        let f = v1_body_filter(
            &json!([{"department": {"$in": ["IT", "HR"]}}, {"state": "ACTIVATED"}]),
            false,
        )
        .unwrap_or_else(|_| Filter::everything());
        assert!(f.matches(&doc(json!({"department": "HR", "state": "ACTIVATED"}))));
        assert!(!f.matches(&doc(json!({"department": "HR", "state": "STAGED"}))));
    }

    #[test]
    fn sorting_and_paging() {
        let docs: Vec<Map<String, Value>> = (0..5)
            .map(|i| doc(json!({"_id": format!("{i}"), "g": i % 2})))
            .collect();
        let keys = parse_sort(["-g"].into_iter());
        let f = Filter::everything();
        let spec = ListSpec {
            filter: &f,
            sort: &keys,
            fields: None,
            skip: 1,
            limit: 2,
            id_field: "_id",
        };
        let (total, page) = spec.apply(docs.iter());
        assert_eq!(total, 5);
        let ids: Vec<&str> = page.iter().filter_map(|d| d["_id"].as_str()).collect();
        assert_eq!(ids, vec!["3", "0"]);
        assert_eq!(
            limit(&Params::parse(Some("limit=101")), LimitPolicy::Clamp),
            Ok(100)
        );
        assert!(limit(&Params::parse(Some("limit=101")), LimitPolicy::Reject).is_err());
        assert!(skip(&Params::parse(Some("skip=-1"))).is_err());
    }
}
