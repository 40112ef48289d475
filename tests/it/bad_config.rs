//! Bad config files through the real binary: every subcommand that reads the config refuses an
//! unusable one with exit code 2 (documented in README.md "Using it" and `forestsync --help`), a
//! message naming the key and the fix, and no panic. The full generated set of cases (every
//! documented key, wrong in every way) runs against `Config::parse`/`load` in
//! `src/config_reference/bad_input.rs`; this is the representative subset end to end. Needs no lab.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::unique;

const BIN: &str = env!("CARGO_BIN_EXE_forestsync");

/// A valid ad-authoritative config (no file it names needs to exist).
const GOOD: &str = r#"mode = "ad-authoritative"
state_dir = "state"

[jumpcloud]
base_url = "https://127.0.0.1:9"
api_key = "test-only-not-a-key"
burst = 5

[[domain]]
name = "alpha"
dcs = ["ldaps://127.0.0.2"]
bind_dn = "CN=svc-forestsync,CN=Users,DC=alpha,DC=test"
bind_password = "unused"
base_dn = "DC=alpha,DC=test"
root_group_dn = "CN=JumpCloud,OU=ADI,DC=alpha,DC=test"
on_leave_scope = "delete"

[safety]
max_removal_percent = 20
"#;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("FORESTSYNC_SEAL_KEY_FILE", config.with_extension("sealkey"))
        .output()
        .expect("forestsync runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_files_exit_2_naming_the_key_and_the_fix_without_panicking() {
    let dir = std::env::temp_dir().join(unique("forestsync-badconfig-"));
    std::fs::create_dir_all(&dir).unwrap();
    let _scratch = Scratch(dir.clone());
    let not_pem = dir.join("not-pem.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();

    // (what, config text, the key the message must name)
    let missing_ca = GOOD.replace(
        "burst = 5",
        &format!(
            "burst = 5\nca_file = \"{}\"",
            dir.join("nope.pem").display()
        ),
    );
    let not_pem_ca = GOOD.replace(
        "bind_dn =",
        &format!("ca_file = \"{}\"\nbind_dn =", not_pem.display()),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            GOOD.replace("burst = 5", "brust = 5"),
            "brust",
        ),
        (
            "wrong type",
            GOOD.replace("burst = 5", "burst = \"five\""),
            "jumpcloud.burst",
        ),
        (
            "missing required key",
            GOOD.replace(
                "bind_dn = \"CN=svc-forestsync,CN=Users,DC=alpha,DC=test\"\n",
                "",
            ),
            "bind_dn",
        ),
        (
            "missing mode",
            GOOD.replace("mode = \"ad-authoritative\"\n", ""),
            "mode",
        ),
        (
            "bad URL",
            GOOD.replace("https://127.0.0.1:9", "console.jumpcloud.com"),
            "base_url",
        ),
        (
            "bad DC URL",
            GOOD.replace("ldaps://127.0.0.2", "http://127.0.0.2"),
            "dcs",
        ),
        ("unreadable CA file", missing_ca, "jumpcloud.ca_file"),
        ("CA file not PEM", not_pem_ca, "ca_file"),
        (
            "bad enum value",
            GOOD.replace("on_leave_scope = \"delete\"", "on_leave_scope = \"remove\""),
            "on_leave_scope",
        ),
        (
            "out of range",
            GOOD.replace("max_removal_percent = 20", "max_removal_percent = 250"),
            "safety.max_removal_percent",
        ),
        (
            "negative",
            GOOD.replace("burst = 5", "burst = -5"),
            "jumpcloud.burst",
        ),
        (
            "secret from an unset variable",
            GOOD.replace(
                "api_key = \"test-only-not-a-key\"",
                "api_key_env = \"FORESTSYNC_TEST_SURELY_UNSET\"",
            ),
            "api_key_env",
        ),
        ("not TOML", GOOD.replace("[safety]", "[safety"), "fix:"),
    ];
    let mut tried = 0;
    for (i, (what, text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("case-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, stdout, stderr) = run(&["check"], &path);
        let all = format!("{stdout}{stderr}");
        assert_eq!(code, Some(2), "check, {what}: {all}");
        assert!(!all.contains("panicked"), "check, {what}: {all}");
        assert!(
            all.lines().any(|l| l.contains(key) && l.contains("fix:")),
            "check, {what}: no line names {key} with a fix:\n{all}"
        );
        assert!(all.contains("FAIL  config"), "check, {what}: {all}");
        tried += 1;
    }
    // Every other subcommand that reads the config: the same exit code, the message on stderr.
    let bad = dir.join("case-0.toml");
    for args in [
        &["plan"][..],
        &["status"],
        &["explain", "jdoe"],
        &["seal"],
        &["run"],
        &["register", "--domain", "alpha", "--connect-key", "x"],
    ] {
        let (code, _, stderr) = run(args, &bad);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("brust"), "{args:?}: {stderr}");
        tried += 1;
    }
    // Not a config file at all.
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, [0u8, 0xff, 0xfe, 0, 1, 2, 0x80]).unwrap();
    for path in [dir.join("no-such.toml"), dir.clone(), binary] {
        let (code, stdout, stderr) = run(&["check"], &path);
        assert_eq!(code, Some(2), "{}: {stdout}{stderr}", path.display());
        assert!(!stderr.contains("panicked"));
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        tried += 1;
    }
    // Usage errors are 2 as well (clap), and the help documents the codes.
    let out = Command::new(BIN)
        .args(["check", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Exit codes: 0 success"));
    tried += 1;
    eprintln!("config cases tried: {tried} (binary)");
}
