//! `forestsync check` run as the admin runs it: the real binary, a config file, the lab DCs and the
//! emulator. One line per item; a broken item says what to fix; the exit code tells scripts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, unique, Lab, LabDomain};

pub(crate) const API_KEY: &str = "check-test-key-0123456789";

pub(crate) fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("forestsync-check-"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn domain_section(
    name: &str,
    d: &LabDomain,
    ca: &Path,
    password: &str,
    dcs: &[String],
    root_group: &str,
) -> String {
    format!(
        r#"
[[domain]]
name = "{name}"
dcs = [{dcs}]
ca_file = "{ca}"
bind_dn = "{bind}"
bind_password = "{password}"
base_dn = "{base}"
root_group_dn = "{root_group}"
"#,
        dcs = dcs
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", "),
        ca = ca.display(),
        bind = d.bind_dn,
        base = d.base_dn,
    )
}

pub(crate) fn jumpcloud_section(base_url: &str, ca: &Path, key: &str) -> String {
    format!("mode = \"ad-authoritative\"\n[jumpcloud]\nbase_url = \"{base_url}\"\napi_key = \"{key}\"\nca_file = \"{}\"\n", ca.display())
}

pub(crate) fn run_check(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("forestsync runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub(crate) async fn emulator() -> (jcemu::Emulator, PathBuf) {
    let emu = jcemu::Emulator::start(jcemu::Config {
        api_keys: vec![API_KEY.into()],
        ..jcemu::Config::default()
    })
    .await
    .expect("emulator starts");
    let dir = scratch_dir();
    let ca = dir.join("jcemu-ca.pem");
    std::fs::write(&ca, emu.ca_pem().expect("HTTPS emulator has a CA")).unwrap();
    (emu, ca)
}

fn good_config(lab: &Lab, base_url: &str, jc_ca: &Path) -> String {
    let mut text = jumpcloud_section(base_url, jc_ca, API_KEY);
    text += &domain_section(
        "alpha",
        &lab.alpha,
        &lab.ca_file,
        lab.alpha.bind_password.expose(),
        &lab.alpha.dc_urls,
        &lab.alpha.root_group_dn,
    );
    text += &domain_section(
        "beta",
        &lab.beta,
        &lab.ca_file,
        lab.beta.bind_password.expose(),
        &lab.beta.dc_urls,
        &lab.beta.root_group_dn,
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_every_dc_and_the_api_key() {
    let Some(lab) = support::lab() else { return };
    let (emu, jc_ca) = emulator().await;
    let config = jc_ca.with_file_name("forestsync.toml");
    std::fs::write(&config, good_config(lab, &emu.base_url(), &jc_ca)).unwrap();

    let (ok, out) = tokio::task::spawn_blocking(move || run_check(&config))
        .await
        .unwrap();
    assert!(ok, "check failed:\n{out}");
    for url in lab.alpha.dc_urls.iter().chain(&lab.beta.dc_urls) {
        for item in [
            "tcp",
            "tls",
            "bind",
            "rootDSE",
            "change tracking",
            "root group",
        ] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("ok") && l.contains(url.as_str()) && l.contains(item)),
                "no ok line for {item} on {url}:\n{out}"
            );
        }
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("key accepted")),
        "{out}"
    );
    assert!(
        !out.contains(lab.alpha.bind_password.expose()),
        "check printed a bind password"
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_each_broken_item_with_its_fix_and_exits_non_zero() {
    let Some(lab) = support::lab() else { return };
    let (emu, jc_ca) = emulator().await;
    let config = jc_ca.with_file_name("forestsync.toml");
    // alpha: DC1 with a wrong password; a DC address where nothing listens; beta: a root group that does not exist.
    let dead_dc = "ldaps://127.0.0.99:636".to_owned();
    let mut text = jumpcloud_section(&emu.base_url(), &jc_ca, "not-the-key");
    text += &domain_section(
        "alpha",
        &lab.alpha,
        &lab.ca_file,
        "Wrong-Passw0rd!",
        &[lab.alpha.dc_urls[0].clone(), dead_dc.clone()],
        &lab.alpha.root_group_dn,
    );
    let missing_group = format!("CN=NoSuchGroup,OU=ADI,{}", lab.beta.base_dn);
    text += &domain_section(
        "beta",
        &lab.beta,
        &lab.ca_file,
        lab.beta.bind_password.expose(),
        &lab.beta.dc_urls,
        &missing_group,
    );
    std::fs::write(&config, text).unwrap();

    let (ok, out) = tokio::task::spawn_blocking(move || run_check(&config))
        .await
        .unwrap();
    assert!(!ok, "check must exit non-zero:\n{out}");
    let fail = |needle: &str, fix: &str| {
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL") && l.contains(needle) && l.contains(fix)),
            "expected a FAIL line with {needle:?} and {fix:?}:\n{out}"
        );
    };
    fail("bind", "wrong password");
    fail(&dead_dc, "cannot connect");
    fail("root group", "NoSuchGroup");
    fail("api key", "check the API key");
    assert!(
        !out.contains("Wrong-Passw0rd!"),
        "check printed the bind password"
    );
    assert!(!out.contains("not-the-key"), "check printed the API key");
    emu.shutdown().await;
}

#[test]
fn check_rejects_an_invalid_config_file_naming_the_key() {
    let dir = scratch_dir();
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "mode = \"ad-authoritative\"\n[jumpcloud]\napi_key = \"k\"\nratelimit = 5\n",
    )
    .unwrap();
    let (ok, out) = run_check(&config);
    assert!(!ok);
    assert!(out.contains("ratelimit"), "{out}");
}
