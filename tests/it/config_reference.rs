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

/// `forestsync config-reference | head -1`: the reader goes away; the command fails with a line on
/// stderr instead of panicking (`print!` panics on a broken pipe: exit 101, a backtrace hint).
#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::Stdio;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read); // the reader is gone before the command starts
    let out = Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .arg("config-reference")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output"),
        "{stderr}"
    );
}
