//! Bad config input, generated from the reference table: every documented key, in turn, missing
//! (when required), of the wrong type, misspelt, with a value it does not list, out of range, a bad
//! URL / DN / id where the key holds one, an unusable CA or secret file. Each case must be refused
//! with a message naming the key (dotted path, or section + key) on a line that says `fix:`. A key
//! added to [`SECTIONS`] is covered without touching this file.

use std::path::{Path, PathBuf};

use super::tests::{config_text, parse};
use super::*;
use crate::config::{Config, ConfigError};

/// One bad config and what its error must name.
struct Case {
    what: String,
    text: String,
    /// The key the message must name (as written in the file).
    key: String,
    /// The section the message must name ("" at the top level).
    section: &'static str,
}

fn case(what: String, text: String, key: &str, section: &'static str) -> Case {
    Case {
        what,
        text,
        key: key.to_owned(),
        section,
    }
}

/// A value of another TOML type than the key's.
fn wrong_type(ty: Type) -> &'static str {
    match ty {
        Type::String | Type::Path | Type::Enum => "123",
        Type::Integer => "\"ten\"",
        Type::Bool => "\"yes\"",
        Type::StringArray => "\"ldaps://dc1.example.com\"",
        Type::StringTable => "42",
    }
}

/// Out-of-range values for an integer key: negative and huge always; below or above the bounds
/// its meaning states ("at least 1", "at most N", "(0–100)").
fn out_of_range(k: &KeyDoc) -> Vec<String> {
    let mut v = vec!["-1".to_owned(), i64::MAX.to_string()];
    if k.meaning.contains("at least 1") {
        v.push("0".into());
    }
    if let Some(rest) = k.meaning.split("at most ").nth(1) {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = n.parse::<u64>() {
            v.push((n + 1).to_string());
        }
    }
    if k.meaning.contains("(0–100)") {
        v.push("101".into());
    }
    v
}

/// Every generated case that needs no file system.
fn text_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let modes = [
        Mode::AdAuthoritative,
        Mode::TwoWay,
        Mode::JumpcloudAuthoritative,
    ];
    for s in SECTIONS {
        for k in s.keys {
            let read_in = s.modes_of(k);
            let mode = read_in[0];
            let at = |v: &str| format!("{}.{} = {v} in mode {mode}", s.path, k.key);
            let with = |v: &str| config_text(mode, &[(s.path, k.key, v)], None);

            // Missing, in every mode that requires it.
            if k.default == KeyDefault::Required {
                for m in modes.iter().copied().filter(|m| read_in.contains(m)) {
                    // Keep the section in the file: set another, optional key of it.
                    let keep: Vec<(&str, &str, &str)> = s
                        .keys
                        .iter()
                        .find(|o| {
                            o.key != k.key
                                && o.default != KeyDefault::Required
                                && s.modes_of(o).contains(&m)
                        })
                        .map(|o| (s.path, o.key, o.example))
                        .into_iter()
                        .collect();
                    out.push(case(
                        format!("{}.{} missing in mode {m}", s.path, k.key),
                        config_text(m, &keep, Some((s.path, k.key))),
                        k.key,
                        s.path,
                    ));
                }
            }
            // Wrong type.
            let v = wrong_type(k.ty);
            out.push(case(at(v), with(v), k.key, s.path));
            // Unknown key (a misspelling of this one).
            let typo = format!("{}_typo", k.key);
            out.push(case(
                format!("{}.{typo} in mode {mode}", s.path),
                config_text(mode, &[(s.path, &typo, "1")], None),
                &typo,
                s.path,
            ));
            // A value the key does not list.
            if !k.values.is_empty() {
                for v in ["\"no-such-value\"", "\"\"", "\"AD-AUTHORITATIVE \""] {
                    out.push(case(at(v), with(v), k.key, s.path));
                }
            }
            // Out of range.
            if k.ty == Type::Integer {
                for v in out_of_range(k) {
                    out.push(case(at(&v), with(&v), k.key, s.path));
                }
            }
            // Bad URLs, DNs and ids where the key holds one (recognised by its example).
            let mut bad = Vec::new();
            if k.ty == Type::String && k.example.contains("://") {
                bad.extend([
                    "\"not a url\"",
                    "\"ftp://console.example.com/\"",
                    "\"https://\"",
                ]);
            }
            if k.ty == Type::StringArray && k.example.contains("://") {
                bad.extend([
                    "[\"not a url\"]",
                    "[\"http://dc1.example.com\"]",
                    "[\"ldaps://dc1.example.com/DC=x\"]",
                    "[]",
                ]);
            }
            if k.ty == Type::String
                && ["\"CN=", "\"OU=", "\"DC="]
                    .iter()
                    .any(|p| k.example.starts_with(p))
            {
                bad.extend(["\"not a dn\"", "\"CN=x,,DC=y\""]);
            }
            let bare = k.example.trim_matches('"');
            if bare.len() == 24 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
                bad.extend(["\"5f0c\"", "\"zzzzzzzzzzzzzzzzzzzzzzzz\""]);
            }
            if s.path == "telemetry" && k.key == "listen" {
                bad.extend(["\"localhost\"", "\"127.0.0.1:99999\""]);
            }
            for v in bad {
                out.push(case(at(v), with(v), k.key, s.path));
            }
            // Secrets: both forms at once, a missing file, an unset variable, an empty value.
            if k.secret {
                let file = format!("{}_file", k.key);
                let env = format!("{}_env", k.key);
                out.push(case(
                    format!("{}.{} and {file} both given", s.path, k.key),
                    config_text(mode, &[(s.path, &file, "\"/nonexistent/secret\"")], None),
                    k.key,
                    s.path,
                ));
                out.push(case(
                    format!("{}.{file} unreadable", s.path),
                    config_text(
                        mode,
                        &[(s.path, &file, "\"/nonexistent/secret\"")],
                        Some((s.path, k.key)),
                    ),
                    &file,
                    s.path,
                ));
                out.push(case(
                    format!("{}.{env} not set", s.path),
                    config_text(
                        mode,
                        &[(s.path, &env, "\"FORESTSYNC_TEST_SURELY_UNSET_VAR\"")],
                        Some((s.path, k.key)),
                    ),
                    &env,
                    s.path,
                ));
                out.push(case(at("\"\""), with("\"\""), k.key, s.path));
            }
        }
    }
    out
}

/// Checks one refusal: the key and its section are named, on a line that says what to do.
fn assert_names_key_and_fix(c: &Case, e: &ConfigError) {
    let text = e.to_string();
    assert!(
        text.lines()
            .any(|l| l.contains(&c.key) && l.contains("fix:")),
        "{}: the error does not name `{}` with a fix on one line:\n{text}\n--- config ---\n{}",
        c.what,
        c.key,
        c.text
    );
    assert!(
        text.contains(c.section),
        "{}: the error does not name the section [{}]:\n{text}",
        c.what,
        c.section
    );
    assert!(!text.contains("panicked"), "{}: {text}", c.what);
}

#[test]
fn every_documented_key_given_wrong_is_refused_naming_the_key_and_the_fix() {
    let cases = text_cases();
    for c in &cases {
        match parse(&c.text) {
            Ok(_) => panic!(
                "{}: the parser accepts it\n--- config ---\n{}",
                c.what, c.text
            ),
            Err(e) => {
                if std::env::var_os("FORESTSYNC_SHOW_CONFIG_ERRORS").is_some() {
                    eprintln!("{}:\n  {e}", c.what);
                }
                assert_names_key_and_fix(c, &e)
            }
        }
    }
    // Every documented key took part.
    let keys: usize = SECTIONS.iter().map(|s| s.keys.len()).sum();
    assert!(cases.len() >= 3 * keys, "only {} cases", cases.len());
    eprintln!("config cases tried: {} (text)", cases.len());
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn unusable_ca_files_and_unreadable_config_files_are_refused_by_load() {
    let dir = std::env::temp_dir().join(format!(
        "forestsync-badconfig-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir.clone());
    let not_pem = dir.join("not-pem.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_files: Vec<(String, PathBuf)> = vec![
        ("missing".into(), dir.join("missing.pem")),
        ("a directory".into(), dir.clone()),
        ("not PEM".into(), not_pem),
        ("a broken PEM block".into(), garbage),
    ];
    let mut tried = 0;
    for s in SECTIONS {
        for k in s.keys {
            if !(k.ty == Type::Path && k.key.ends_with("ca_file")) {
                continue;
            }
            let mode = s.modes_of(k)[0];
            for (what, file) in &bad_files {
                let value = format!("\"{}\"", file.display());
                let text = config_text(mode, &[(s.path, k.key, &value)], None);
                let path = dir.join(format!("{}-{}.toml", s.path, tried));
                std::fs::write(&path, &text).unwrap();
                let c = Case {
                    what: format!("{}.{} {what}", s.path, k.key),
                    text,
                    key: k.key.to_owned(),
                    section: s.path,
                };
                // The text alone is fine: only load looks at the file.
                assert!(parse(&c.text).is_ok(), "{}", c.what);
                match Config::load(&path) {
                    Ok(_) => panic!("{}: load accepts it", c.what),
                    Err(e) => assert_names_key_and_fix(&c, &e),
                }
                tried += 1;
            }
        }
    }
    assert!(tried >= 12, "only {tried} CA cases");

    // The config file itself: missing, a directory, not UTF-8, not TOML, empty.
    let good = config_text(Mode::AdAuthoritative, &[], None);
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "not UTF-8",
            b"mode = \"ad-\xff\xfeauthoritative\"\n".to_vec(),
        ),
        ("binary", vec![0u8, 159, 146, 150, 0, 1, 2, 3]),
        ("not TOML", b"mode: ad-authoritative\n[jumpcloud\n".to_vec()),
        ("empty", Vec::new()),
        (
            "a duplicate key",
            format!("{good}\n[jumpcloud]\nburst = 1\n").into_bytes(),
        ),
        (
            "huge",
            format!("{good}\n# {}\n", "x".repeat(5 << 20)).into_bytes()[..]
                .iter()
                .chain(b"nonsense = [\n")
                .copied()
                .collect(),
        ),
    ];
    for (what, bytes) in &files {
        let path = dir.join(format!("file-{tried}.toml"));
        std::fs::write(&path, bytes).unwrap();
        let e = Config::load(&path).expect_err(what).to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("fix:")
                || e.contains("cannot read"),
            "{what}: {e}"
        );
        assert!(e.len() < 4096, "{what}: the error is {} bytes", e.len());
        tried += 1;
    }
    for path in [dir.join("no-such.toml"), dir.clone()] {
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("cannot read config file") && e.contains(&path.display().to_string()),
            "{e}"
        );
        tried += 1;
    }
    drop(scratch);
    eprintln!("config cases tried: {tried} (files)");
}

/// The `Syntax` message is located: line, dotted path, and the fix from the reference.
#[test]
fn shape_errors_say_where_and_what_the_key_takes() {
    let text = config_text(
        Mode::AdAuthoritative,
        &[("jumpcloud", "burst", "\"x\"")],
        None,
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("jumpcloud.burst"), "{e}");
    assert!(
        e.contains("fix: jumpcloud.burst is an integer, e.g. burst = 5"),
        "{e}"
    );
    assert!(e.contains("line "), "{e}");
    let text = config_text(
        Mode::AdAuthoritative,
        &[("domain", "on_leave_scope", "\"keep\"")],
        None,
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("domain.on_leave_scope"), "{e}");
    assert!(
        e.contains("one of \"delete\", \"suspend\", \"unbind\""),
        "{e}"
    );
    let _ = Path::new("");
}
