//! The reference against the parser. The parser's side is never a hand-kept list: [`Walker`] is a
//! serde `Deserializer` that hands each shape every field serde asks for and records what it saw.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

use super::*;
use crate::config::{Config, FileShape, HookFileShape};

// ---- the recording deserializer ----

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WalkError(String);

impl de::Error for WalkError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

/// What a walk saw: leaf keys with their kind, tables (with whether they are arrays of tables),
/// enum variants, and the keys read as `toml::Spanned` (the sealer's secrets).
#[derive(Default, Debug)]
struct Seen {
    leaves: BTreeMap<String, String>,
    tables: BTreeMap<String, bool>,
    enums: BTreeMap<String, Vec<&'static str>>,
    spanned: BTreeSet<String>,
}

struct Walker<'a> {
    path: String,
    /// Inside an array: kinds are recorded as "array of <kind>", tables as arrays of tables.
    in_array: bool,
    seen: &'a RefCell<Seen>,
}

impl<'a> Walker<'a> {
    fn root(seen: &'a RefCell<Seen>) -> Self {
        Walker {
            path: String::new(),
            in_array: false,
            seen,
        }
    }

    fn child(&self, field: &str) -> Walker<'a> {
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        Walker {
            path,
            in_array: false,
            seen: self.seen,
        }
    }

    fn leaf(&self, kind: &str) {
        let kind = if self.in_array {
            format!("array of {kind}")
        } else {
            kind.to_owned()
        };
        self.seen
            .borrow_mut()
            .leaves
            .insert(self.path.clone(), kind);
    }
}

fn walk<'de, T: Deserialize<'de>>() -> Result<Seen, WalkError> {
    let seen = RefCell::new(Seen::default());
    T::deserialize(Walker::root(&seen))?;
    Ok(seen.into_inner())
}

macro_rules! leaf {
    ($($method:ident => $kind:literal, $visit:ident($($value:expr)?);)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
            self.leaf($kind);
            visitor.$visit($($value)?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = WalkError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!(
            "{}: a self-describing value (untagged enum, flatten, any); teach the walker and the reference this shape",
            self.path
        )))
    }

    leaf! {
        deserialize_bool => "bool", visit_bool(false);
        deserialize_i8 => "integer", visit_i64(0);
        deserialize_i16 => "integer", visit_i64(0);
        deserialize_i32 => "integer", visit_i64(0);
        deserialize_i64 => "integer", visit_i64(0);
        deserialize_u8 => "integer", visit_u64(0);
        deserialize_u16 => "integer", visit_u64(0);
        deserialize_u32 => "integer", visit_u64(0);
        deserialize_u64 => "integer", visit_u64(0);
        deserialize_f32 => "float", visit_f64(0.0);
        deserialize_f64 => "float", visit_f64(0.0);
        deserialize_char => "char", visit_char('x');
        deserialize_str => "string", visit_str("");
        deserialize_string => "string", visit_str("");
        deserialize_bytes => "bytes", visit_bytes(&[]);
        deserialize_byte_buf => "bytes", visit_bytes(&[]);
        deserialize_unit => "unit", visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        if self.in_array {
            return Err(WalkError(format!("{}: nested arrays", self.path)));
        }
        visitor.visit_seq(OneElement(Some(Walker {
            in_array: true,
            ..self
        })))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("{}: tuples", self.path)))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("{}: tuple structs", self.path)))
    }

    /// A free-form table (no fixed keys): a leaf of kind "table".
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        self.leaf("table");
        visitor.visit_map(Fields {
            walker: self,
            fields: &[],
            next: 0,
            spanned: false,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        let spanned = name.contains("serde_spanned");
        if spanned {
            self.seen.borrow_mut().spanned.insert(self.path.clone());
        } else {
            self.seen
                .borrow_mut()
                .tables
                .insert(self.path.clone(), self.in_array);
        }
        visitor.visit_map(Fields {
            walker: self,
            fields,
            next: 0,
            spanned,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.leaf("enum");
        self.seen
            .borrow_mut()
            .enums
            .insert(self.path.clone(), variants.to_vec());
        let first = variants
            .first()
            .ok_or_else(|| WalkError(format!("{}: an enum without variants", self.path)))?;
        visitor.visit_enum(UnitVariant(first))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_str("")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_unit()
    }
}

/// A struct's fields, each once, in serde's order; a value is walked at `<path>.<field>`.
struct Fields<'a> {
    walker: Walker<'a>,
    fields: &'static [&'static str],
    next: usize,
    /// `toml::Spanned`'s private fields: its value stands for the key itself, the span is not a key.
    spanned: bool,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, WalkError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let field = self.fields[self.next];
        self.next += 1;
        if self.spanned {
            if field.ends_with("value") {
                return seed.deserialize(Walker {
                    path: self.walker.path.clone(),
                    in_array: self.walker.in_array,
                    seen: self.walker.seen,
                });
            }
            return seed.deserialize(0u64.into_deserializer());
        }
        seed.deserialize(self.walker.child(field))
    }
}

struct OneElement<'a>(Option<Walker<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, WalkError> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

struct UnitVariant(&'static str);

impl<'de> de::EnumAccess<'de> for UnitVariant {
    type Error = WalkError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), WalkError> {
        let v = seed.deserialize(BorrowedStrDeserializer::<WalkError>::new(self.0))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant {
    type Error = WalkError;

    fn unit_variant(self) -> Result<(), WalkError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, WalkError> {
        Err(WalkError(format!("variant {} carries data", self.0)))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("variant {} carries data", self.0)))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, WalkError> {
        Err(WalkError(format!("variant {} carries data", self.0)))
    }
}

// ---- the reference's side ----

/// Every documented name (secrets' `_file` and `_env` too) by dotted path.
pub(super) fn documented() -> BTreeMap<String, (&'static SectionDoc, &'static KeyDoc, String)> {
    let mut out = BTreeMap::new();
    for s in SECTIONS {
        for k in s.keys {
            for name in k.names() {
                let path = if s.path.is_empty() {
                    name.clone()
                } else {
                    format!("{}.{name}", s.path)
                };
                assert!(
                    out.insert(path.clone(), (s, k, name)).is_none(),
                    "{path} is documented twice"
                );
            }
        }
    }
    out
}

/// The kind the walker records for a documented type.
fn kind(ty: Type) -> &'static str {
    match ty {
        Type::String | Type::Path => "string",
        Type::Integer => "integer",
        Type::Bool => "bool",
        Type::StringArray => "array of string",
        Type::StringTable => "table",
        Type::Enum => "enum",
    }
}

fn mode_literal(mode: Mode) -> String {
    format!("\"{mode}\"")
}

/// A config for `mode` holding the required keys of that mode (secrets written in the file) with
/// their examples, plus `set` (section path, key, TOML value), minus `omit` (section path, key).
pub(super) fn config_text(
    mode: Mode,
    set: &[(&str, &str, &str)],
    omit: Option<(&str, &str)>,
) -> String {
    let mut text = String::new();
    for s in SECTIONS {
        let mut lines = Vec::new();
        for k in s.keys {
            if k.default != Required || !s.modes_of(k).contains(&mode) {
                continue;
            }
            if omit == Some((s.path, k.key)) {
                continue;
            }
            let value = if k.key == "mode" && s.path.is_empty() {
                mode_literal(mode)
            } else {
                k.example.to_owned()
            };
            lines.push(format!("{} = {value}", k.key));
        }
        for (section, key, value) in set {
            if *section == s.path {
                lines.retain(|l| !l.starts_with(&format!("{key} = ")));
                lines.push(format!("{key} = {value}"));
            }
        }
        if lines.is_empty() {
            continue;
        }
        if !s.path.is_empty() {
            text.push_str(&format!("\n{}\n", s.header()));
        }
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
    }
    text
}

pub(super) fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
    Config::parse(Path::new("/etc/forestsync/forestsync.toml"), text)
}

/// The resolved config, compared through its `Debug` form (every field; secrets redacted alike).
fn resolved(what: &str, text: &str) -> String {
    match parse(text) {
        Ok(c) => format!("{c:?}"),
        Err(e) => panic!("{what}: the parser refuses it: {e}\n--- config ---\n{text}"),
    }
}

// ---- the tests ----

/// The walker itself: it sees renamed, optional, nested, array and enum fields, so an undocumented
/// key of any of these kinds cannot hide from the tests below.
#[test]
fn the_walker_records_every_field_serde_asks_for() {
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Colour {
        #[serde(rename = "red")]
        Red,
        #[serde(rename = "blue")]
        Blue,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        d: Option<std::path::PathBuf>,
        #[serde(default)]
        e: std::collections::BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        a: u32,
        b: Option<String>,
        #[serde(rename = "c", default)]
        cs: Vec<Inner>,
        f: Option<Inner>,
        g: Colour,
        h: Vec<String>,
    }
    let seen = walk::<Probe>().unwrap();
    let leaves: Vec<_> = seen
        .leaves
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    assert_eq!(
        leaves,
        [
            "a:integer",
            "b:string",
            "c.d:string",
            "c.e:table",
            "f.d:string",
            "f.e:table",
            "g:enum",
            "h:array of string"
        ]
    );
    assert_eq!(
        seen.tables.into_iter().collect::<Vec<_>>(),
        [
            (String::new(), false),
            ("c".to_owned(), true),
            ("f".to_owned(), false)
        ]
    );
    assert_eq!(seen.enums["g"], ["red", "blue"]);
}

/// (b) and (a): the documented keys are exactly the keys the parser's shapes accept, with the same
/// kind of value; the documented sections are its tables; enum values are its variants.
#[test]
fn the_documented_keys_are_exactly_the_keys_the_parser_accepts() {
    let seen = walk::<FileShape>().expect("walking the config file's shape");
    let docs = documented();

    let accepted: BTreeSet<&String> = seen.leaves.keys().collect();
    let listed: BTreeSet<&String> = docs.keys().collect();
    let undocumented: Vec<_> = accepted.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "keys the parser accepts but src/config_reference.rs does not document: {undocumented:?}; fix: add them to SECTIONS"
    );
    assert!(
        unknown.is_empty(),
        "keys src/config_reference.rs documents but the parser does not accept: {unknown:?}"
    );

    for (path, (_, k, name)) in &docs {
        let want = if name == k.key { kind(k.ty) } else { "string" };
        assert_eq!(
            seen.leaves[path], want,
            "{path}: documented as {:?}, parsed as {}",
            k.ty, seen.leaves[path]
        );
        match seen.enums.get(path) {
            Some(variants) => assert_eq!(
                k.values,
                variants.as_slice(),
                "{path}: documented values differ from the parser's"
            ),
            None => assert_ne!(k.ty, Type::Enum, "{path}: not an enum in the parser"),
        }
    }

    let tables: BTreeMap<String, bool> = SECTIONS
        .iter()
        .map(|s| (s.path.to_owned(), s.array))
        .collect();
    assert_eq!(
        tables, seen.tables,
        "documented sections (path → array of tables) differ from the parser's"
    );
}

/// (a), by the real parser: a file with every documented key (all three forms of each secret) is
/// accepted by serde (`deny_unknown_fields` would name any key it does not know).
#[test]
fn a_file_with_every_documented_key_is_accepted() {
    let mut text = String::new();
    for s in SECTIONS {
        if !s.path.is_empty() {
            text.push_str(&format!("\n{}\n", s.header()));
        }
        for k in s.keys {
            for name in k.names() {
                let value = if name == k.key {
                    k.example
                } else {
                    "\"jc-secret\""
                };
                text.push_str(&format!("{name} = {value}\n"));
            }
        }
    }
    if let Err(e) = toml::from_str::<FileShape>(&text) {
        panic!("the parser refuses a documented key: {e}\n--- config ---\n{text}");
    }
    // And a key the reference does not know is refused, so the check above can fail.
    let typo = format!("{text}\nnot_a_documented_key = 1\n");
    assert!(toml::from_str::<FileShape>(&typo).is_err());
}

/// Every key's example, and each value of an enumerated key, passes validation in every mode that
/// reads the key; an enumerated key refuses a value it does not list.
#[test]
fn examples_and_listed_values_are_valid_in_the_modes_that_read_them() {
    for s in SECTIONS {
        for k in s.keys {
            let modes = s.modes_of(k);
            assert!(!modes.is_empty(), "{}.{}: read in no mode", s.path, k.key);
            for mode in modes {
                let mut values = vec![k.example.to_owned()];
                values.extend(k.values.iter().map(|v| format!("\"{v}\"")));
                if s.path.is_empty() && k.key == "mode" {
                    // Another mode needs other keys: each mode's own minimal config is checked by
                    // required_keys_are_all_a_mode_needs_and_each_is_needed.
                    values.clear();
                }
                for v in values {
                    let text = config_text(mode, &[(s.path, k.key, &v)], None);
                    resolved(&format!("{}.{} = {v} in mode {mode}", s.path, k.key), &text);
                }
                if !k.values.is_empty() {
                    let text = config_text(mode, &[(s.path, k.key, "\"no-such-value\"")], None);
                    assert!(
                        parse(&text).is_err(),
                        "{}.{}: accepts a value the reference does not list",
                        s.path,
                        k.key
                    );
                }
            }
        }
    }
}

/// (c): leaving a key out resolves to the same config as writing its documented default; writing
/// its example resolves to a different one (so the key is read, and the check above can fail).
#[test]
fn documented_defaults_are_what_the_parser_resolves() {
    let mut checked = 0;
    for s in SECTIONS {
        for k in s.keys {
            let default = match k.default {
                Value(v) => Some(v),
                Derived { in_minimal, .. } => Some(in_minimal),
                Unset(_) => None,
                Required => continue,
            };
            let mode = s.modes_of(k)[0];
            let what = format!("{}.{} in mode {mode}", s.path, k.key);
            let minimal = resolved(&what, &config_text(mode, &[], None));
            if let Some(default) = default {
                assert_ne!(default, k.example, "{what}: the example is the default");
                let explicit =
                    resolved(&what, &config_text(mode, &[(s.path, k.key, default)], None));
                assert_eq!(
                    minimal, explicit,
                    "{what}: the documented default {default} is not what the parser resolves when the key is absent"
                );
                checked += 1;
            }
            if k.key == "seal_key_file" && std::env::var_os("FORESTSYNC_SEAL_KEY_FILE").is_some() {
                continue; // the environment overrides the key in this process
            }
            let example = resolved(
                &what,
                &config_text(mode, &[(s.path, k.key, k.example)], None),
            );
            assert_ne!(
                minimal, example,
                "{what}: writing {} changes nothing in the resolved config",
                k.example
            );
        }
    }
    assert!(checked >= 30, "only {checked} defaults checked");
}

/// Each mode's minimal config (its required keys) loads, and lacks nothing: leaving out any one
/// required key is an error.
#[test]
fn required_keys_are_all_a_mode_needs_and_each_is_needed() {
    for mode in ALL.iter().copied() {
        resolved(
            &format!("minimal config of {mode}"),
            &config_text(mode, &[], None),
        );
        for s in SECTIONS {
            for k in s.keys {
                if k.default != Required || !s.modes_of(k).contains(&mode) {
                    continue;
                }
                let text = config_text(mode, &[], Some((s.path, k.key)));
                assert!(
                    parse(&text).is_err(),
                    "{}.{} is documented as required in {mode}, but a config without it loads",
                    s.path,
                    k.key
                );
            }
        }
    }
}

/// The capture hook reads only documented keys, and the sealer seals exactly the documented secrets.
#[test]
fn the_hook_and_the_sealer_read_documented_keys() {
    let docs = documented();
    let hook = walk::<HookFileShape>().expect("walking the hook's shape");
    for path in hook.leaves.keys() {
        assert!(
            docs.contains_key(path),
            "the hook reads {path}, which is not documented"
        );
    }
    let sealer = walk::<crate::seal::SecretsShape>().expect("walking the sealer's shape");
    let secrets: BTreeSet<String> = docs
        .iter()
        .filter(|(_, (_, k, name))| k.secret && *name == k.key)
        .map(|(path, _)| path.clone())
        .collect();
    assert_eq!(
        sealer.spanned, secrets,
        "the secrets `forestsync seal` seals differ from the documented ones"
    );
}

#[test]
fn the_checked_in_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config-reference.md");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == render(),
        "docs/config-reference.md is stale; run: cargo run -q -- config-reference > docs/config-reference.md"
    );
}

#[test]
fn the_reference_names_every_key_with_its_default() {
    let text = render();
    for (path, (_, k, name)) in documented() {
        assert!(text.contains(&format!("`{name}`")), "{path} missing");
        if let Value(v) = k.default {
            assert!(
                text.contains(&format!("`{v}`")),
                "{path}: default {v} missing"
            );
        }
    }
}
