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
use crate::import_mode::API_KEY as API_KEY_IMPORT;
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

/// One secret and the byte strings that would betray it.
struct Needle {
    what: String,
    forms: Vec<Vec<u8>>,
    /// The one file allowed to hold it (its own key file).
    home: Option<PathBuf>,
}

impl Needle {
    fn text(what: impl Into<String>, value: &str) -> Needle {
        Needle {
            what: what.into(),
            forms: vec![value.as_bytes().to_vec()],
            home: None,
        }
    }
    /// A password: as typed and as AD's unicodePwd carries it (UTF-16LE).
    fn password(what: impl Into<String>, value: &str) -> Needle {
        Needle {
            what: what.into(),
            forms: vec![value.as_bytes().to_vec(), utf16le(value)],
            home: None,
        }
    }
    /// A raw key file: its bytes, and their hex (both cases).
    fn key_file(what: impl Into<String>, path: &Path) -> Needle {
        let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(raw.len(), 32, "{} holds a 32-byte key", path.display());
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Needle {
            what: what.into(),
            forms: vec![
                raw,
                hex.clone().into_bytes(),
                hex.to_uppercase().into_bytes(),
            ],
            home: Some(path.to_path_buf()),
        }
    }
}

/// The hook program run as user `nobody` (uid/gid 65534, no groups), `password` on stdin.
async fn hook_as_nobody(config: &Path, account: &str, password: &str) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        env!("CARGO_BIN_EXE_forestsync"),
        "capture-password",
        "--config",
    ])
    .arg(config)
    .args(["--domain", "alpha"])
    .env("SAMBA_CPS_ACCOUNT_NAME", account);
    crate::password_capture::run_with_timeout(cmd, &format!("{password}\n")).await
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn forestsync(args: &[&str], config: &Path) -> Vec<u8> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .expect("forestsync runs");
    let mut all = out.stdout;
    all.extend_from_slice(&out.stderr);
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_logs_exports_files_or_output_and_private_files_stay_private() {
    use crate::import_mode::{self, user, wait_for, Agent, Corner};
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::time::Duration;

    let Some(lab) = support::lab() else { return };
    let _one_hook_at_a_time = crate::password_capture::HOOK_LOCK.lock().await;
    let mut c = Corner::new(lab, &lab.alpha, "sec").await;
    let sam = support::unique("sec");
    let dn = c.person(&sam).await;
    let root = c.root.clone();
    c.add_member(&root, &dn).await;

    // JumpCloud asks for 20 characters, more than AD and the hook: a shorter password is accepted
    // in AD, forwarded, and refused by JumpCloud (the error path).
    let emu = import_mode::emulator(jcemu::Config {
        password_policy: jcemu::PasswordPolicy {
            min_length: 20,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (otlp, received) = crate::telemetry::otlp_receiver().await;
    let dir = import_mode::scratch("sec");
    std::fs::create_dir_all(&dir).unwrap();
    let ops = crate::telemetry::free_port();
    let mut text = Agent::config_text(lab, &emu, &dir, &[("alpha", &lab.alpha, &c.root)], "");
    text += &format!(
        "\n[telemetry]\nlisten = \"127.0.0.1:{ops}\"\notlp_endpoint = \"http://{otlp}\"\nexport_interval_seconds = 1\n"
    );
    let mut agent = Agent::start_json(dir.clone(), &text);
    const SYNC: Duration = Duration::from_secs(90);
    wait_for(&emu, &agent, SYNC, "the user in JumpCloud", |s| {
        user(s, &sam).is_some()
    })
    .await;
    let id = user(&emu.state(), &sam).unwrap()["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let password_date = |s: &serde_json::Value| -> Option<String> {
        s["passwords"]
            .as_array()?
            .iter()
            .find(|p| p["user_id"] == id.as_str())
            .and_then(|p| p["password_date"].as_str().map(str::to_owned))
    };

    let passthrough = dir.join("passthrough.toml");
    std::fs::write(&passthrough, "[passwords]\nenforce_jumpcloud_policy = false\nsocket = \"passthrough/none.sock\"\nspool_dir = \"passthrough/spool\"\nkey_file = \"passthrough/password.key\"\n").unwrap();
    let hook =
        crate::password_capture::HookGuard::install_routing(&sam, &agent.config, &passthrough)
            .await;

    // 1. A password that flows: AD → hook → socket → agent → JumpCloud.
    let tag = &support::unique("")[..8];
    let good = format!("Flow-Passw0rd-{tag}-long!");
    crate::import_mode::set_password(&mut c.admin, &dn, &good)
        .await
        .expect("AD accepts a strong password");
    wait_for(&emu, &agent, SYNC, "the password in JumpCloud", |s| {
        password_date(s).is_some()
    })
    .await;
    let set_once = password_date(&emu.state());

    // 2. One JumpCloud refuses (too short for it): the agent reports the violation.
    let short = format!("Sh0rt!{tag}");
    crate::import_mode::set_password(&mut c.admin, &dn, &short)
        .await
        .expect("AD accepts it");
    let started = std::time::Instant::now();
    while !agent.log().contains("minLength") {
        assert!(
            started.elapsed() < SYNC,
            "JumpCloud's refusal never reached the log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(hook);

    // 3. The hook program itself refusing one (its one line), and as user nobody.
    let refused = format!("weak{}", tag.to_lowercase());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"));
    cmd.args(["capture-password", "--config"])
        .arg(&agent.config)
        .args(["--domain", "alpha"])
        .env("SAMBA_CPS_ACCOUNT_NAME", &sam);
    let refused_out = crate::password_capture::run_with_timeout(cmd, &refused).await;
    assert_eq!(
        refused_out.status.code(),
        Some(1),
        "{}",
        output_text(&refused_out)
    );

    // Files: the password socket is 0600 and ours; nobody cannot connect to it.
    let socket = dir.join("capture.sock");
    let meta = std::fs::symlink_metadata(&socket).expect("the password socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "password socket mode");
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(
        meta.uid(),
        me,
        "the password socket belongs to the agent's user"
    );
    let connect = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES'); sys.exit(3)\nprint('connected')",
        ])
        .arg(&socket)
        .output()
        .await
        .unwrap();
    assert_eq!(
        connect.status.code(),
        Some(3),
        "nobody must get EACCES on the password socket: {}",
        output_text(&connect)
    );
    let as_nobody = format!("N0body-Passw0rd-{tag}-long!");
    let nobody_out = hook_as_nobody(&agent.config, &sam, &as_nobody).await;
    let nobody_text = output_text(&nobody_out);
    assert!(
        nobody_text.contains("NOT captured"),
        "the hook run as nobody must not deliver: {nobody_text}"
    );

    // The socket opened to everyone by mistake (the hook itself refuses such a socket, so a raw
    // client): the agent still refuses nobody by its credentials (SO_PEERCRED), before reading.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let by_peer = format!("P33r-Passw0rd-{tag}-long!");
    let peer = tokio::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            "import socket,struct,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nbody=sys.argv[2].encode()\ns.settimeout(5)\ntry:\n s.sendall(struct.pack('>I',len(body))+body)\n a=s.recv(1)\nexcept (BrokenPipeError, ConnectionResetError):\n a=b''\nprint('answer', a.hex() or 'none')\nsys.exit(4 if a==b'' else 5)",
        ])
        .arg(&socket)
        .arg(&by_peer)
        .output()
        .await
        .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let peer_text = output_text(&peer);
    assert_eq!(
        peer.status.code(),
        Some(4),
        "a foreign peer must be dropped without an answer: {peer_text}"
    );
    let started = std::time::Instant::now();
    while !agent
        .log()
        .lines()
        .any(|l| l.contains("foreign user refused") && l.contains("65534"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the refused peer was not logged:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        password_date(&emu.state()),
        set_once,
        "a password from nobody (or one JumpCloud refused) was set"
    );

    // Every output a user or a collector sees.
    let config = agent.config.clone();
    let status = forestsync(&["status", "--json"], &config).await;
    let explain = forestsync(&["explain", &sam], &config).await;
    let explain_json = forestsync(&["explain", &sam, "--json"], &config).await;
    let check = forestsync(&["check"], &config).await;
    let (code, metrics) = crate::telemetry::get(&format!("http://127.0.0.1:{ops}/metrics")).await;
    assert_eq!(code, 200);
    let started = std::time::Instant::now();
    while received.all_bytes().is_empty() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // one more export round after the errors
    let log = agent.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a log line that is not JSON: {line}"
        );
    }

    // The agent down: the hook spools the next one, encrypted, below the state directory.
    agent.kill();
    let spooled = format!("Sp00led-Passw0rd-{tag}-long!");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"));
    cmd.args(["capture-password", "--config"])
        .arg(&agent.config)
        .args(["--domain", "alpha"])
        .env("SAMBA_CPS_ACCOUNT_NAME", &sam);
    let spool_out = crate::password_capture::run_with_timeout(cmd, &spooled).await;
    assert!(
        output_text(&spool_out).contains("queued encrypted"),
        "{}",
        output_text(&spool_out)
    );

    let state_dir = dir.join("state");
    let seal_key = state_dir.join("seal.key");
    let pw_key = state_dir.join("password.key");
    let secrets = vec![
        Needle::text("API key", API_KEY_IMPORT),
        Needle::text("bind password", lab.alpha.bind_password.expose()),
        Needle::text("lab admin password", lab.admin_password.expose()),
        Needle::key_file("seal key", &seal_key),
        Needle::key_file("password spool key", &pw_key),
        Needle::password("password set in JumpCloud", &good),
        Needle::password("password JumpCloud refused", &short),
        Needle::password("password the hook refused", &refused),
        Needle::password("password of the hook run as nobody", &as_nobody),
        Needle::password("password sent by a foreign peer", &by_peer),
        Needle::password("password spooled while the agent was down", &spooled),
    ];
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("agent log (JSON)".into(), log.into_bytes()),
        ("OTLP export bodies".into(), received.all_bytes()),
        ("/metrics".into(), metrics.into_bytes()),
        ("status --json".into(), status),
        ("explain".into(), explain),
        ("explain --json".into(), explain_json),
        ("check".into(), check),
        (
            "hook refusing".into(),
            output_text(&refused_out).into_bytes(),
        ),
        ("hook as nobody".into(), nobody_text.into_bytes()),
        ("raw client as foreign peer".into(), peer_text.into_bytes()),
        ("hook spooling".into(), output_text(&spool_out).into_bytes()),
        (
            "config file (sealed at start)".into(),
            std::fs::read(&config).unwrap(),
        ),
    ];
    let files: Vec<PathBuf> = walk(&state_dir)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("seal.key"))
            && files.iter().any(|f| f.ends_with("password.key"))
            && files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "redb"))
            && files
                .iter()
                .any(|f| f.starts_with(state_dir.join("password-spool"))),
        "the keys and the store are among the files grepped: {files:?}"
    );
    for f in &files {
        places.push((f.display().to_string(), std::fs::read(f).unwrap()));
    }
    let mut hits = Vec::new();
    let mut checks = 0;
    for (place, bytes) in &places {
        for s in &secrets {
            if s.home
                .as_deref()
                .is_some_and(|h| place == &h.display().to_string())
            {
                continue;
            }
            checks += 1;
            if s.forms.iter().any(|f| contains(bytes, f)) {
                hits.push(format!("{} in {place}", s.what));
            }
        }
    }
    eprintln!("state files: {files:?}");
    eprintln!(
        "grepped {} secrets ({} byte forms) in {} places ({} state files): {checks} checks",
        secrets.len(),
        secrets.iter().map(|s| s.forms.len()).sum::<usize>(),
        places.len(),
        files.len()
    );
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");
    assert!(
        String::from_utf8_lossy(&std::fs::read(&config).unwrap()).contains("fs1:"),
        "run sealed the config's secrets"
    );

    // Modes: every file below the state directory 0600, every directory 0700 (the seal key is one
    // of them), the state directory itself too.
    let mut loose = Vec::new();
    for p in std::iter::once(state_dir.clone()).chain(walk(&state_dir)) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if mode != want || m.uid() != me {
            loose.push(format!("{} {mode:o} uid {}", p.display(), m.uid()));
        }
    }
    assert!(loose.is_empty(), "not private: {loose:#?}");

    drop(agent);
    emu.shutdown().await;
    c.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lab's service account holds no administrative group: the rights it has are the delegated
/// ones `check` lists (see deploy/lab/labctl.py: domain_root_aces, managed_ou_aces, Deleted Objects).
async fn assert_not_admin(admin: &mut forestsync_actors::directory::DcSession, dn: &str) {
    let entry = admin
        .read_entry(dn, &["memberOf", "primaryGroupID", "adminCount"])
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{dn} not found"));
    let member_of = entry.attrs.get("memberOf").cloned().unwrap_or_default();
    for admin_group in [
        "CN=Domain Admins,",
        "CN=Enterprise Admins,",
        "CN=Schema Admins,",
        "CN=Administrators,",
        "CN=Account Operators,",
        "CN=Backup Operators,",
    ] {
        assert!(
            !member_of.iter().any(|g| g.starts_with(admin_group)),
            "{dn} is in {admin_group}: {member_of:?}"
        );
    }
    assert_eq!(
        entry
            .attrs
            .get("primaryGroupID")
            .and_then(|v| v.first())
            .map(String::as_str),
        Some("513"),
        "{dn}'s primary group is Domain Users"
    );
    assert!(
        !entry.attrs.contains_key("adminCount"),
        "{dn} is a protected (adminCount) account"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_each_right_an_ordinary_account_lacks_with_the_grant() {
    let Some(lab) = support::lab() else { return };
    let dc = lab.alpha.dc_urls[0].clone();
    let mut admin = support::admin_session(lab, &lab.alpha, &dc).await;
    assert_not_admin(&mut admin, &lab.alpha.bind_dn).await;
    let mut beta = support::admin_session(lab, &lab.beta, &lab.beta.dc_urls[0]).await;
    assert_not_admin(&mut beta, &lab.beta.bind_dn).await;

    // A fresh, ordinary user: Domain Users, no delegated right.
    let name = support::unique("secnp");
    let dn = format!("CN={name},CN=Users,{}", lab.alpha.base_dn);
    let password = format!("Np7-{}-Zq!", support::unique(""));
    admin
        .add(
            &dn,
            vec![
                support::attr(
                    "objectClass",
                    &["top", "person", "organizationalPerson", "user"],
                ),
                support::attr("sAMAccountName", &[&name]),
                support::attr("userAccountControl", &["512"]),
                (
                    b"unicodePwd".to_vec(),
                    [crate::password_capture::unicode_pwd(&password)].into(),
                ),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create {dn}: {e}"));
    let target_ou = format!("OU=ForestSync,{}", lab.alpha.base_dn);
    let run = |bind_dn: String, bind_password: String| {
        let target_ou = target_ou.clone();
        async move {
            let (emu, emu_ca) = emulator().await;
            let config = emu_ca.with_file_name("forestsync.toml");
            let text = format!(
                "mode = \"two-way\"\n[jumpcloud]\nbase_url = \"{url}\"\napi_key = \"{API_KEY}\"\nca_file = \"{jc_ca}\"\n\n\
                 [[domain]]\nname = \"alpha\"\ndcs = [\"{dc}\"]\nca_file = \"{ca}\"\nbind_dn = \"{bind_dn}\"\nbind_password = \"{bind_password}\"\n\
                 base_dn = \"{base}\"\nroot_group_dn = \"{root}\"\nad_instance_id = \"0123456789abcdef01234567\"\ntarget_ou = \"{target_ou}\"\n",
                url = emu.base_url(),
                jc_ca = emu_ca.display(),
                dc = lab.alpha.dc_urls[0],
                ca = lab.ca_file.display(),
                base = lab.alpha.base_dn,
                root = lab.alpha.root_group_dn,
            );
            std::fs::write(&config, text).unwrap();
            let out = tokio::task::spawn_blocking(move || run_check(&config))
                .await
                .unwrap();
            emu.shutdown().await;
            out
        }
    };
    let (ok, out) = run(dn.clone(), password.clone()).await;
    eprintln!("{out}");
    let _ = admin.delete(&dn).await;
    assert!(!ok, "check must fail for an account without rights:\n{out}");
    let base = lab.alpha.base_dn.as_str();
    // DirSync: Replicating Directory Changes on the domain head, with the grant for Windows and Samba.
    assert_fail_line(
        &out,
        &[
            "change tracking",
            "Replicating Directory Changes",
            "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2",
            base,
            "dsacls",
            "samba-tool dsacl set",
        ],
    );
    // Tombstones: read on CN=Deleted Objects.
    assert_fail_line(
        &out,
        &[
            "deletions visible",
            "CN=Deleted Objects",
            "LCRP",
            "(A;CI;LCRPRC;;;S-1-5-21-",
        ],
    );
    // Writes into the target OU (two-way writes JumpCloud's objects there).
    for (right, grant) in [
        ("create users", "CC"),
        ("create groups", "CC"),
        ("delete users", "DC"),
        ("delete groups", "DC"),
        ("write user properties", "WP"),
        ("write group properties", "WP"),
        (
            "reset user passwords",
            "00299570-246d-11d0-a768-00aa006e0529",
        ),
    ] {
        assert_fail_line(
            &out,
            &[
                right,
                &target_ou,
                "fix:",
                "dsacls",
                "samba-tool dsacl set",
                grant,
            ],
        );
    }
    assert!(!out.contains(&password), "check printed the bind password");

    // The lab's service account has each of them.
    let (_, out) = run(
        lab.alpha.bind_dn.clone(),
        lab.alpha.bind_password.expose().to_owned(),
    )
    .await;
    for item in [
        "change tracking",
        "deletions visible",
        "create users",
        "create groups",
        "delete users",
        "delete groups",
        "write user properties",
        "write group properties",
        "reset user passwords",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(item)),
            "the service account should pass {item}:\n{out}"
        );
    }
}

/// Autoref probe: `Probe::<T>::display()` is true when `T: Display` (the inherent method wins),
/// false otherwise (the trait method).
struct Probe<T>(std::marker::PhantomData<T>);
trait NoDisplay {
    fn display(&self) -> bool {
        false
    }
}
impl<T> NoDisplay for Probe<T> {}
impl<T: std::fmt::Display> Probe<T> {
    #[allow(dead_code)]
    fn display(&self) -> bool {
        true
    }
}
macro_rules! has_display {
    ($t:ty) => {
        Probe::<$t>(std::marker::PhantomData).display()
    };
}

/// Every type that carries a secret prints it redacted in `Debug`, and none but `Secret` (which
/// redacts) has a `Display`.
#[test]
fn secret_carrying_types_print_redacted() {
    use forestsync::config::{Config, HookConfig};
    use forestsync::register::RegisterArgs;
    use forestsync_actors::channel::{AgentCredentials, PayloadKey};
    use forestsync_actors::cloud::CloudEndpoint;
    use forestsync_actors::dc::{AttrChange, DirRequest};
    use forestsync_actors::password::spool::CaptureKey;
    use forestsync_actors::password::CapturedPassword;
    use forestsync_actors::sealed::SealKey;
    use forestsync_actors::secret::Secret;

    const API: &str = "api-key-Zx81QpLm";
    const BIND: &str = "bind-Pw-7Hq2Vr";
    const CAPTURED: &str = "Captured-Pw-4Kd9";
    const AGENT: &str = "agent-secret-R3vT";
    const CONNECT: &str = "connect-key-9Wm2";
    let key_bytes = [0xa7u8; 32];
    let key_hex: String = key_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let shows_secret = |text: &str| {
        [API, BIND, CAPTURED, AGENT, CONNECT, key_hex.as_str()]
            .iter()
            .find(|s| text.contains(*s))
            .map(|s| s.to_string())
            .or_else(|| {
                text.contains("167, 167, 167")
                    .then(|| "key bytes".to_string())
            })
    };

    // The config, loaded with plaintext secrets (what `check` and `run` hold).
    let dir = scratch_dir();
    let config_path = dir.join("forestsync.toml");
    std::fs::write(
        &config_path,
        format!(
            "mode = \"ad-authoritative\"\nstate_dir = \"state\"\n[jumpcloud]\napi_key = \"{API}\"\n\
             [[domain]]\nname = \"alpha\"\ndcs = [\"ldaps://127.0.0.2\"]\nbind_dn = \"CN=svc,DC=alpha,DC=test\"\n\
             bind_password = \"{BIND}\"\nbase_dn = \"DC=alpha,DC=test\"\nroot_group_dn = \"CN=JumpCloud,OU=ADI,DC=alpha,DC=test\"\n"
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).expect("the config loads");
    assert_eq!(config.jumpcloud.api_key.expose(), API);
    assert_eq!(config.domains[0].bind_password.expose(), BIND);
    let hook = HookConfig::load(&config_path).expect("the hook's view loads");

    let secret = Secret::new(CAPTURED);
    let captured = CapturedPassword {
        id: "0123456789abcdef0123456789abcdef".into(),
        domain: "alpha".into(),
        account: "jdoe".into(),
        upn: None,
        captured_at: std::time::SystemTime::now(),
        password: Secret::new(CAPTURED),
    };
    let endpoint = CloudEndpoint {
        base_url: "https://console.jumpcloud.com".into(),
        api_key: Secret::new(API),
        org_id: None,
        timeout: std::time::Duration::from_secs(1),
    };
    let credentials = AgentCredentials {
        agent_id: "a1".into(),
        activedirectory_id: "ad1".into(),
        domain: "alpha.test".into(),
        agent_secret: Secret::new(AGENT),
        payload_key: PayloadKey::from_bytes(key_bytes),
    };
    let set_password = DirRequest::SetPassword {
        dn: "CN=jdoe,OU=ForestSync,DC=alpha,DC=test".into(),
        password: Secret::new(CAPTURED),
        enforce_history: true,
        also: vec![],
    };
    let unicode_pwd = crate::password_capture::unicode_pwd(CAPTURED);
    let modify = DirRequest::Modify {
        dn: "CN=jdoe,OU=ForestSync,DC=alpha,DC=test".into(),
        mods: vec![AttrChange::Replace(
            "unicodePwd".into(),
            vec![unicode_pwd.clone()],
        )],
    };
    let add = DirRequest::Add {
        dn: "CN=jdoe,OU=ForestSync,DC=alpha,DC=test".into(),
        attrs: vec![("unicodePwd".into(), vec![unicode_pwd])],
    };
    let register = {
        use clap::FromArgMatches;
        let cmd = <RegisterArgs as clap::Args>::augment_args(clap::Command::new("register"));
        let m = cmd
            .try_get_matches_from(["register", "--domain", "alpha", "--connect-key", CONNECT])
            .unwrap();
        RegisterArgs::from_arg_matches(&m).unwrap()
    };
    assert_eq!(register.connect_key.as_deref(), Some(CONNECT));

    let debug: Vec<(&str, String)> = vec![
        ("Secret", format!("{secret:?} {secret:#?}")),
        ("Config", format!("{config:?} {config:#?}")),
        ("HookConfig", format!("{hook:?}")),
        ("CapturedPassword", format!("{captured:?}")),
        ("CloudEndpoint", format!("{endpoint:?}")),
        ("AgentCredentials", format!("{credentials:?}")),
        ("PayloadKey", format!("{:?}", credentials.payload_key)),
        ("SealKey", format!("{:?}", SealKey::from_bytes(key_bytes))),
        (
            "CaptureKey",
            format!("{:?}", CaptureKey::ephemeral().unwrap()),
        ),
        ("DirRequest::SetPassword", format!("{set_password:?}")),
        ("DirRequest::Modify(unicodePwd)", format!("{modify:?}")),
        ("DirRequest::Add(unicodePwd)", format!("{add:?}")),
        ("RegisterArgs", format!("{register:?}")),
    ];
    let leaks: Vec<String> = debug
        .iter()
        .filter_map(|(what, text)| {
            shows_secret(text).map(|s| format!("{what} Debug shows {s}: {text}"))
        })
        .collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
    // The unicodePwd value as the LDAP layer would carry it must not show up as bytes either.
    for (what, text) in &debug {
        assert!(
            !text.contains(&format!(
                "{:?}",
                crate::password_capture::unicode_pwd(CAPTURED)
            )),
            "{what}: {text}"
        );
    }

    assert_eq!(format!("{secret}"), "<redacted>");
    let display = [
        ("Config", has_display!(Config)),
        ("HookConfig", has_display!(HookConfig)),
        ("CapturedPassword", has_display!(CapturedPassword)),
        ("CloudEndpoint", has_display!(CloudEndpoint)),
        ("AgentCredentials", has_display!(AgentCredentials)),
        ("PayloadKey", has_display!(PayloadKey)),
        ("SealKey", has_display!(SealKey)),
        ("CaptureKey", has_display!(CaptureKey)),
        ("DirRequest", has_display!(DirRequest)),
        ("RegisterArgs", has_display!(RegisterArgs)),
    ];
    assert!(has_display!(Secret), "the probe sees Display");
    let with_display: Vec<_> = display.iter().filter(|(_, d)| *d).collect();
    assert!(with_display.is_empty(), "{with_display:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// jumpcloud-authoritative: the connect key, the agent credentials it yields, and a password from
/// JumpCloud (set in AD, then one AD refuses) never appear in the register/check/status output,
/// the JSON log, the sealed config or any state file; the state files (sealed credentials included)
/// are private.
#[tokio::test(flavor = "multi_thread")]
async fn the_connect_key_and_jumpcloud_passwords_never_leak() {
    use crate::import_mode::{self, Agent};
    use crate::sync_mode::{self, JcAdmin, TargetOu};
    use std::os::unix::fs::MetadataExt;

    let Some(lab) = support::lab() else { return };
    let emu = import_mode::emulator(jcemu::Config {
        // Lax: passwords AD's complexity refuses get through JumpCloud.
        password_policy: jcemu::PasswordPolicy {
            min_length: 8,
            require_lowercase: false,
            require_uppercase: false,
            require_number: false,
            require_special: false,
            disallow_username: false,
            history: 0,
        },
        ..Default::default()
    })
    .await;
    let jc = JcAdmin::new(&emu);
    let ad = jc.ad_instance(&lab.alpha.base_dn).await;
    let mut ou = TargetOu::new(lab, &lab.alpha, "sec-jc").await;
    let dir = import_mode::scratch("sec-jc");
    let text = sync_mode::sync_config(lab, &emu, &dir, &lab.alpha, &ad, &ou.dn, "");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("forestsync.toml");
    std::fs::write(&config, &text).unwrap();

    // Register the recommended way: the key in the environment, not on the command line.
    let connect_key = jc.connect_key(&ad).await;
    let register = tokio::process::Command::new(env!("CARGO_BIN_EXE_forestsync"))
        .args(["register", "--domain", "alpha", "--config"])
        .arg(&config)
        .env("FORESTSYNC_CONNECT_KEY", &connect_key)
        .output()
        .await
        .unwrap();
    assert!(register.status.success(), "{}", output_text(&register));

    let name = format!("{}p", sync_mode::short_tag("s"));
    let uid = jc.user(&name, serde_json::json!({})).await;
    jc.bind(&ad, "user", &uid, "add").await;
    let mut agent = Agent::start_json(dir.clone(), &text);
    sync_mode::wait_enabled(&mut ou, &agent, &name, true, "user created").await;
    sync_mode::wait_caught_up(&emu, &agent, &ad).await;
    let good = format!("Tr4in-{}-Station", &support::unique("")[..6]);
    jc.set_password(&uid, &good).await;
    sync_mode::wait_status(&jc, &agent, &ad, &uid, 200, "").await;
    sync_mode::try_bind(lab, &format!("CN={name},{}", ou.dn), &good)
        .await
        .expect("the password from JumpCloud works in AD");
    // JumpCloud takes it, AD's complexity refuses it (two character classes).
    let refused = format!("abcdefgh{}", &support::unique("")[..4]).to_lowercase();
    jc.set_password(&uid, &refused).await;
    sync_mode::wait_status(&jc, &agent, &ad, &uid, 422, "").await;

    let status = forestsync(&["status", "--json"], &config).await;
    let check = forestsync(&["check"], &config).await;
    let explain = forestsync(&["explain", &name], &config).await;
    let log = agent.log();
    agent.kill();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a log line that is not JSON: {line}"
        );
    }

    let state_dir = dir.join("state");
    let issued = emu.channel_credentials();
    assert_eq!(issued.len(), 1, "one agent registered");
    let (agent_secret, payload_key) = issued[0].clone();
    let payload_hex: String = payload_key.iter().map(|b| format!("{b:02x}")).collect();
    let secrets = vec![
        Needle::text("agent secret", &agent_secret),
        Needle {
            what: "payload key".into(),
            forms: vec![
                payload_key.to_vec(),
                payload_hex.clone().into_bytes(),
                payload_hex.to_uppercase().into_bytes(),
            ],
            home: None,
        },
        Needle::text("connect key", &connect_key),
        Needle::text("API key", API_KEY_IMPORT),
        Needle::text("bind password", lab.alpha.bind_password.expose()),
        Needle::key_file("seal key", &state_dir.join("seal.key")),
        Needle::password("password from JumpCloud", &good),
        Needle::password("password AD refused", &refused),
    ];
    let mut places: Vec<(String, Vec<u8>)> = vec![
        (
            "register output".into(),
            output_text(&register).into_bytes(),
        ),
        ("agent log (JSON)".into(), log.into_bytes()),
        ("status --json".into(), status),
        ("check".into(), check),
        ("explain".into(), explain),
        (
            "config file (sealed)".into(),
            std::fs::read(&config).unwrap(),
        ),
    ];
    let files: Vec<PathBuf> = walk(&state_dir)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).unwrap().is_file())
        .collect();
    assert!(
        files.len() >= 3,
        "seal key, sealed credentials and store expected: {files:?}"
    );
    for f in &files {
        places.push((f.display().to_string(), std::fs::read(f).unwrap()));
    }
    let mut hits = Vec::new();
    let mut checks = 0;
    for (place, bytes) in &places {
        for s in &secrets {
            if s.home
                .as_deref()
                .is_some_and(|h| place == &h.display().to_string())
            {
                continue;
            }
            checks += 1;
            if s.forms.iter().any(|f| contains(bytes, f)) {
                hits.push(format!("{} in {place}", s.what));
            }
        }
    }
    eprintln!(
        "jumpcloud-authoritative: {} secrets in {} places ({files:?}): {checks} checks",
        secrets.len(),
        places.len()
    );
    assert!(hits.is_empty(), "secrets leaked: {hits:#?}");

    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut loose = Vec::new();
    for p in std::iter::once(state_dir.clone()).chain(walk(&state_dir)) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if mode != want || m.uid() != me {
            loose.push(format!("{} {mode:o} uid {}", p.display(), m.uid()));
        }
    }
    assert!(loose.is_empty(), "not private: {loose:#?}");
    emu.shutdown().await;
    ou.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
