//! Security (issue #8): verified TLS by default (LDAPS, StartTLS, the JumpCloud API) as `forestsync
//! check` reports it; no clear-text LDAP, ever; the least-privilege rights `check` names; secrets
//! never leaking into logs, exports, files or command output; private files and a password socket
//! only the agent's user (or root) can use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::check_command::{
    domain_section, emulator, jumpcloud_section, run_check, scratch_dir, API_KEY,
};
use crate::support::{self, Lab};

/// `check` on a config with ALPHA's DC1 only (`dc`, `dc_ca`) and the emulator (`jc_ca`).
async fn check_alpha(
    lab: &'static Lab,
    dc: &str,
    dc_ca: &Path,
    jc_ca: Option<&Path>,
) -> (bool, String) {
    let (emu, emu_ca) = emulator().await;
    let config = emu_ca.with_file_name("forestsync.toml");
    let mut text = jumpcloud_section(&emu.base_url(), jc_ca.unwrap_or(&emu_ca), API_KEY);
    text += &domain_section(
        "alpha",
        &lab.alpha,
        dc_ca,
        lab.alpha.bind_password.expose(),
        &[dc.to_owned()],
        &lab.alpha.root_group_dn,
    );
    std::fs::write(&config, text).unwrap();
    let out = tokio::task::spawn_blocking(move || run_check(&config))
        .await
        .unwrap();
    emu.shutdown().await;
    out
}

/// Asserts a FAIL line holding every one of `needles`.
fn assert_fail_line(out: &str, needles: &[&str]) {
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && needles.iter().all(|n| l.contains(n))),
        "expected a FAIL line with {needles:?}:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_dc_certificate_from_another_ca_and_names_ca_file() {
    let Some(lab) = support::lab() else { return };
    // The emulator's CA is a real CA, just not the one that issued the DC's certificate.
    let (emu, other_ca) = emulator().await;
    emu.shutdown().await;
    let dc = lab.alpha.dc_urls[0].clone();
    let (ok, out) = check_alpha(lab, &dc, &other_ca, None).await;
    assert!(!ok, "check must exit non-zero:\n{out}");
    assert_fail_line(&out, &[&dc, "tls", "not trusted", "fix: set ca_file"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("skip") && l.contains("bind")),
        "no bind after a failed handshake:\n{out}"
    );
    // The same DC over StartTLS is verified the same way.
    let starttls = dc.replace("ldaps://", "ldap://").replace(":636", ":389");
    let (ok, out) = check_alpha(lab, &starttls, &other_ca, None).await;
    assert!(!ok, "{out}");
    assert_fail_line(&out, &[&starttls, "tls", "not trusted", "ca_file"]);
}

/// A TCP relay from 127.0.0.1:<port> to `target`: the DC answers, under a name its certificate
/// does not list (the lab's certificates name the DC's own address, FQDN and domain only).
async fn relay_to(target: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

fn dc_socket(url: &str, default_port: u16) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port().unwrap_or(default_port)
    )
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_dc_reached_by_a_name_its_certificate_does_not_list() {
    let Some(lab) = support::lab() else { return };
    let relay = relay_to(dc_socket(&lab.alpha.dc_urls[0], 636)).await;
    let url = format!("ldaps://{relay}");
    let (ok, out) = check_alpha(lab, &url, &lab.ca_file, None).await;
    assert!(!ok, "check must exit non-zero:\n{out}");
    assert_fail_line(
        &out,
        &[
            &url,
            "tls",
            "name mismatch",
            "does not name \"127.0.0.1\"",
            "fix:",
            "subjectAltName",
        ],
    );
    assert!(
        !out.lines().any(|l| l.contains("not trusted")),
        "a name mismatch is not reported as an untrusted CA:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_the_api_certificate_without_its_ca() {
    let Some(lab) = support::lab() else { return };
    // The lab CA did not sign the emulator's certificate.
    let dc = lab.alpha.dc_urls[0].clone();
    let (ok, out) = check_alpha(lab, &dc, &lab.ca_file, Some(&lab.ca_file)).await;
    assert!(!ok, "check must exit non-zero:\n{out}");
    assert_fail_line(
        &out,
        &["jumpcloud", "tls", "not trusted", "ca_file in [jumpcloud]"],
    );
    assert!(!out.contains(API_KEY), "check printed the API key:\n{out}");
    // The DC part is unaffected.
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains(&dc) && l.contains("bind")),
        "{out}"
    );
}

/// How the fake DC answers the StartTLS request.
#[derive(Clone, Copy, Debug)]
enum NoStartTls {
    /// An ExtendedResponse with resultCode unavailable (52).
    Refuse,
    /// Reads the request and closes the connection.
    Close,
}

/// A plain-LDAP "DC" on 127.0.0.1 without StartTLS; keeps every byte any client sent it.
async fn no_starttls_dc(mode: NoStartTls) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return,
                    };
                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                    if answered {
                        continue;
                    }
                    answered = true;
                    match mode {
                        NoStartTls::Close => return,
                        NoStartTls::Refuse => {
                            // LDAPMessage { messageID (echoed), ExtendedResponse { unavailable, "", text } }
                            let id = message_id(&buf[..n]).unwrap_or(1);
                            let text = b"StartTLS is not supported here";
                            let mut op = vec![0x0a, 0x01, 52, 0x04, 0x00, 0x04, text.len() as u8];
                            op.extend_from_slice(text);
                            let mut body = vec![0x02, 0x01, id, 0x78, op.len() as u8];
                            body.extend_from_slice(&op);
                            let mut msg = vec![0x30, body.len() as u8];
                            msg.extend_from_slice(&body);
                            let _ = stream.write_all(&msg).await;
                        }
                    }
                }
            });
        }
    });
    (addr, got)
}

/// The messageID of a BER LDAPMessage (one-byte id, the only kind a fresh connection sends).
fn message_id(msg: &[u8]) -> Option<u8> {
    if msg.first() != Some(&0x30) {
        return None;
    }
    let mut i = 1;
    let first = *msg.get(i)?;
    i += 1;
    if first & 0x80 != 0 {
        i += (first & 0x7f) as usize;
    }
    (msg.get(i) == Some(&0x02) && msg.get(i + 1) == Some(&0x01)).then(|| msg[i + 2])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dc_without_starttls_fails_check_and_never_receives_the_bind() {
    let Some(lab) = support::lab() else { return };
    for mode in [NoStartTls::Refuse, NoStartTls::Close] {
        let (addr, got) = no_starttls_dc(mode).await;
        let url = format!("ldap://{addr}");
        let (ok, out) = check_alpha(lab, &url, &lab.ca_file, None).await;
        assert!(!ok, "{mode:?}: check must exit non-zero:\n{out}");
        assert_fail_line(
            &out,
            &[
                &url,
                "tls",
                "StartTLS is required",
                "nothing was sent in clear",
            ],
        );
        if matches!(mode, NoStartTls::Refuse) {
            assert_fail_line(&out, &[&url, "refused StartTLS", "unavailable"]);
        }
        assert!(
            out.lines()
                .any(|l| l.starts_with("skip") && l.contains(&url) && l.contains("bind")),
            "{mode:?}: no bind may follow:\n{out}"
        );
        let bytes = got.lock().unwrap().clone();
        assert!(
            contains(&bytes, b"1.3.6.1.4.1.1466.20037"),
            "{mode:?}: the client asked for StartTLS first ({} bytes seen)",
            bytes.len()
        );
        let password = lab.alpha.bind_password.expose();
        for needle in [
            password.as_bytes(),
            &utf16le(password),
            lab.alpha.bind_dn.as_bytes(),
        ] {
            assert!(
                !contains(&bytes, needle),
                "{mode:?}: the fake DC received the bind (DN or password) in clear"
            );
        }
    }
}

/// Every file below `dir`, recursively (the directory itself excluded).
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        out.push(p.clone());
        if ft.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}
