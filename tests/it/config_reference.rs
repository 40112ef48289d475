//! `forestsync config-reference` prints the checked-in reference. Needs no lab.

use std::process::Command;

#[test]
fn config_reference_command_prints_the_checked_in_reference() {
    let out = Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .arg("config-reference")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.starts_with("# forestsync configuration reference"));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config-reference.md");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        printed == checked_in,
        "docs/config-reference.md is stale; run: cargo run -q -- config-reference > docs/config-reference.md"
    );
}
