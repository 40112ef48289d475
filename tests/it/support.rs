//! Shared test plumbing: the lab's coordinates, LDAP sessions against the lab DCs, unique names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use forestsync_actors::directory::LdapMod;
use forestsync_actors::directory::{DcEndpoint, DcSession, Timeouts};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One lab domain as the lab script describes it.
#[derive(Clone, Debug)]
pub struct LabDomain {
    pub dc_urls: Vec<String>,
    pub base_dn: String,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub admin_dn: String,
    pub root_group_dn: String,
}

#[derive(Clone, Debug)]
pub struct Lab {
    pub ca_file: PathBuf,
    pub admin_password: Secret,
    pub alpha: LabDomain,
    pub beta: LabDomain,
}

/// The lab, or `None` (after printing why) when it is not up and not required.
pub fn lab() -> Option<&'static Lab> {
    static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
    match LAB.get_or_init(load_lab) {
        Ok(lab) => Some(lab),
        Err(why) => {
            if std::env::var("FORESTSYNC_REQUIRE_LAB").is_ok_and(|v| v == "1") {
                panic!("the lab is required (FORESTSYNC_REQUIRE_LAB=1) but not usable: {why}");
            }
            eprintln!("skipping: no lab ({why}); run `deploy/lab/lab up` first");
            None
        }
    }
}

fn load_lab() -> Result<Lab, String> {
    let mut vars: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("LAB_"))
        .collect();
    if !vars.contains_key("LAB_CA_FILE") {
        let env_file = std::env::var("LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("lab-state"))
            .join("env.sh");
        let text = std::fs::read_to_string(&env_file)
            .map_err(|e| format!("no LAB_* variables and {}: {e}", env_file.display()))?;
        vars.extend(parse_exports(&text));
    }
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| format!("{k} is not set"))
    };
    let domain = |d: &str, urls: &[&str]| -> Result<LabDomain, String> {
        Ok(LabDomain {
            dc_urls: urls.iter().map(|u| get(u)).collect::<Result<_, _>>()?,
            base_dn: get(&format!("LAB_{d}_BASE_DN"))?,
            bind_dn: get(&format!("LAB_{d}_BIND_DN"))?,
            bind_password: Secret::new(get(&format!("LAB_{d}_BIND_PASSWORD"))?),
            admin_dn: get(&format!("LAB_ADMIN_DN_{d}"))?,
            root_group_dn: get(&format!("LAB_{d}_ROOT_GROUP_DN"))?,
        })
    };
    Ok(Lab {
        ca_file: PathBuf::from(get("LAB_CA_FILE")?),
        admin_password: Secret::new(get("LAB_ADMIN_PASSWORD")?),
        alpha: domain("ALPHA", &["LAB_ALPHA_DC1_URL", "LAB_ALPHA_DC2_URL"])?,
        beta: domain("BETA", &["LAB_BETA_DC1_URL"])?,
    })
}

/// Reads `export NAME='value'` / `export NAME="value"` / `export NAME=value` lines.
fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|rest| rest.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('\'') && v.ends_with('\''))
                    || (v.starts_with('"') && v.ends_with('"')))
            {
                v[1..v.len() - 1].replace("'\\''", "'")
            } else {
                v.to_owned()
            };
            (k.trim().to_owned(), v)
        })
        .collect()
}

/// Generous: the suite runs many tests against the same DCs at once (2,000-user loads included).
pub const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    operation: Duration::from_secs(60),
};

/// A verified, bound session on `url`.
pub async fn bound_session(lab: &Lab, url: &str, dn: &str, password: &Secret) -> DcSession {
    let tls = trust::client_config(Some(&lab.ca_file)).expect("lab CA loads");
    let endpoint = DcEndpoint::parse(url).expect("lab URL parses");
    let mut s = DcSession::connect(&endpoint, tls, TIMEOUTS)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    s.bind(dn, password)
        .await
        .unwrap_or_else(|e| panic!("bind {dn} on {url}: {e}"));
    s
}

pub async fn admin_session(lab: &Lab, domain: &LabDomain, url: &str) -> DcSession {
    bound_session(lab, url, &domain.admin_dn, &lab.admin_password).await
}

/// An HTTPS client that trusts only the emulator's CA (its admin API, `/__emulator/…`).
pub fn emulator_http(emu: &jcemu::Emulator) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(emu.ca_pem().unwrap().as_bytes()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

/// A name no other test (or earlier run) uses: tests share the lab DCs and isolate by data.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{:x}{:x}{}",
        std::process::id() % 0xfff,
        nanos % 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn attr(name: &str, values: &[&str]) -> (Vec<u8>, std::collections::HashSet<Vec<u8>>) {
    (
        name.as_bytes().to_vec(),
        values.iter().map(|v| v.as_bytes().to_vec()).collect(),
    )
}

// ---- admin writes the tests make (each panics with the DN on failure) ----

/// Creates a global security group `dn` with sAMAccountName `sam`.
pub async fn group_at(admin: &mut DcSession, dn: &str, sam: &str) {
    admin
        .add(
            dn,
            vec![
                attr("objectClass", &["top", "group"]),
                attr("sAMAccountName", &[sam]),
                attr("groupType", &["-2147483646"]),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create group {dn}: {e}"));
}

/// Adds `member` (a DN) to `group`.
pub async fn add_member(admin: &mut DcSession, group: &str, member: &str) {
    admin
        .modify(
            group,
            vec![LdapMod::Add(
                b"member".to_vec(),
                [member.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap_or_else(|e| panic!("add {member} to {group}: {e}"));
}

/// Replaces attribute `name` of `dn` with one value.
pub async fn set_attr(admin: &mut DcSession, dn: &str, name: &str, value: &str) {
    admin
        .modify(
            dn,
            vec![LdapMod::Replace(
                name.as_bytes().to_vec(),
                [value.as_bytes().to_vec()].into(),
            )],
        )
        .await
        .unwrap_or_else(|e| panic!("set {name} on {dn}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::parse_exports;

    #[test]
    fn env_file_exports_are_read_with_quotes() {
        let got = parse_exports(
            "export A='x y'\nexport B=\"DC=a,DC=b\"\n# c\nexport C=plain\nexport D='it'\\''s'\n",
        );
        assert_eq!(got[0], ("A".into(), "x y".into()));
        assert_eq!(got[1], ("B".into(), "DC=a,DC=b".into()));
        assert_eq!(got[2], ("C".into(), "plain".into()));
        assert_eq!(got[3], ("D".into(), "it's".into()));
    }
}
