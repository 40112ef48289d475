//! The agent's side: the capture socket and the spool, merged into one stream of captures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::spool::{self, effective_uid, CaptureKey};
use super::wire::decode_message;
use super::{io_error, CapturedPassword, PasswordError, ACK, MAX_FRAME};
use crate::secret::Secret;

/// How often the spool is scanned for files written while the socket was unreachable.
const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// A hook gets this long to send its frame.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);
/// How long an acknowledged id is remembered, so a late duplicate of it (the hook gave up waiting
/// for the ACK and spooled the same capture too) is discarded instead of delivered again.
const ACKED_MEMORY: Duration = Duration::from_secs(600);

/// A capture held in memory, its password encrypted under a key that never leaves this process.
struct Held {
    id: String,
    domain: String,
    account: String,
    upn: Option<String>,
    captured_at: SystemTime,
    sealed: Vec<u8>,
}

impl Held {
    fn seal(c: CapturedPassword, key: &CaptureKey) -> Result<Held, PasswordError> {
        let sealed = key.seal(c.id.as_bytes(), c.password.expose().as_bytes())?;
        Ok(Held {
            id: c.id,
            domain: c.domain,
            account: c.account,
            upn: c.upn,
            captured_at: c.captured_at,
            sealed,
        })
    }

    fn open(self, key: &CaptureKey) -> Option<CapturedPassword> {
        let plain = key.open(self.id.as_bytes(), &self.sealed)?;
        let password = String::from_utf8(plain.to_vec()).ok()?;
        Some(CapturedPassword {
            id: self.id,
            domain: self.domain,
            account: self.account,
            upn: self.upn,
            captured_at: self.captured_at,
            password: Secret::new(password),
        })
    }
}

/// Receives captured passwords from the hook's socket and from the spool.
///
/// Every capture is persisted in the spool (encrypted) and its file deleted only by
/// [`PasswordInbox::ack`]: a crash before forwarding loses nothing; after a restart the next `bind`
/// delivers it again. A capture arriving by both routes (the hook timed out waiting for the ACK and
/// spooled too) is handed out once.
pub struct PasswordInbox {
    socket_path: PathBuf,
    socket_identity: (u64, u64),
    spool_dir: PathBuf,
    spool_key: Arc<CaptureKey>,
    memory_key: Arc<CaptureKey>,
    incoming: mpsc::Receiver<Held>,
    wake: Arc<Notify>,
    accept_task: JoinHandle<()>,
    ready: VecDeque<Held>,
    /// Ids queued in `ready` or handed out and not yet acknowledged.
    known: HashSet<String>,
    /// Ids acknowledged recently, with when.
    acked: HashMap<String, Instant>,
    scan: tokio::time::Interval,
}

impl std::fmt::Debug for PasswordInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordInbox")
            .field("socket", &self.socket_path)
            .field("spool_dir", &self.spool_dir)
            .field("queued", &self.ready.len())
            .field("unacknowledged", &self.known.len())
            .finish()
    }
}

impl PasswordInbox {
    /// Listens on `socket_path` (its directory is created 0700 when missing; the socket is made 0600;
    /// a stale socket file is replaced, a live one is an error), opens the spool (`spool_dir`, 0700)
    /// and its key (`key_file`, created when missing) and queues what the spool already holds.
    /// Must be called inside a Tokio runtime.
    pub fn bind(
        socket_path: &Path,
        spool_dir: &Path,
        key_file: &Path,
    ) -> Result<PasswordInbox, PasswordError> {
        let spool_key = Arc::new(CaptureKey::load_or_create(key_file)?);
        spool::ensure_private_dir(spool_dir)?;
        prepare_socket_path(socket_path)?;
        let listener = UnixListener::bind(socket_path)
            .map_err(io_error(socket_path, "listen on the socket"))?;
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(socket_path, "chmod 600 the socket"))?;
        let meta = std::fs::symlink_metadata(socket_path)
            .map_err(io_error(socket_path, "stat the socket"))?;

        let memory_key = Arc::new(CaptureKey::ephemeral()?);
        let wake = Arc::new(Notify::new());
        let (tx, incoming) = mpsc::channel(256);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            tx,
            wake.clone(),
            spool_dir.to_path_buf(),
            spool_key.clone(),
            memory_key.clone(),
        ));
        let mut scan = tokio::time::interval(DEFAULT_SCAN_INTERVAL);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inbox = PasswordInbox {
            socket_path: socket_path.to_path_buf(),
            socket_identity: (meta.dev(), meta.ino()),
            spool_dir: spool_dir.to_path_buf(),
            spool_key,
            memory_key,
            incoming,
            wake,
            accept_task,
            ready: VecDeque::new(),
            known: HashSet::new(),
            acked: HashMap::new(),
            scan,
        };
        inbox.scan_spool();
        Ok(inbox)
    }

    /// Changes how often the spool is scanned (default 5 s).
    pub fn set_scan_interval(&mut self, every: Duration) {
        self.scan = tokio::time::interval(every.max(Duration::from_millis(10)));
        self.scan
            .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The next capture (spooled ones oldest first). `None` only when the listener has failed.
    /// Cancel-safe: a capture is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<CapturedPassword> {
        loop {
            while let Some(held) = self.ready.pop_front() {
                let id = held.id.clone();
                match held.open(&self.memory_key) {
                    Some(c) => return Some(c),
                    None => {
                        // Cannot happen short of memory corruption; keep the spool file for a rescan.
                        tracing::error!(id = %id, "a held capture no longer decrypts");
                        self.known.remove(&id);
                    }
                }
            }
            tokio::select! {
                held = self.incoming.recv() => match held {
                    Some(held) => self.enqueue(held),
                    None => return None,
                },
                _ = self.scan.tick() => self.scan_spool(),
                _ = self.wake.notified() => self.scan_spool(),
            }
        }
    }

    /// The consumer is done with capture `id` (forwarded, or dropped as not committed): deletes its
    /// spool file. Until then a restart delivers it again.
    pub fn ack(&mut self, id: &str) -> Result<(), PasswordError> {
        self.known.remove(id);
        self.ready.retain(|h| h.id != id);
        let now = Instant::now();
        self.acked
            .retain(|_, at| now.duration_since(*at) < ACKED_MEMORY);
        self.acked.insert(id.to_owned(), now);
        spool::remove(&self.spool_dir, id)
    }

    /// Captures received but not yet acknowledged (queued or handed out).
    pub fn unacknowledged(&self) -> usize {
        self.known.len()
    }

    fn enqueue(&mut self, held: Held) {
        if self.acked.contains_key(&held.id) {
            // A late duplicate of an acknowledged capture: its spool copy goes too.
            let _ = spool::remove(&self.spool_dir, &held.id);
            return;
        }
        if self.known.insert(held.id.clone()) {
            self.ready.push_back(held);
        }
    }

    /// Queues spool files not yet known, oldest capture first. Unreadable files are moved aside.
    fn scan_spool(&mut self) {
        let ids = match spool::list(&self.spool_dir) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan the password spool");
                return;
            }
        };
        let mut found = Vec::new();
        for id in ids.into_iter().filter(|id| !self.known.contains(id)) {
            if self.acked.contains_key(&id) {
                let _ = spool::remove(&self.spool_dir, &id);
                continue;
            }
            let path = spool::spool_path(&self.spool_dir, &id);
            match spool::read(&path, &self.spool_key) {
                Ok(c) => match Held::seal(c, &self.memory_key) {
                    Ok(h) => found.push(h),
                    Err(e) => tracing::warn!(error = %e, "cannot hold a spooled capture"),
                },
                Err(PasswordError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "unreadable spool file moved aside as .bad");
                    spool::quarantine(&self.spool_dir, &id);
                }
            }
        }
        found.sort_by_key(|h| h.captured_at);
        for h in found {
            self.enqueue(h);
        }
    }
}

impl Drop for PasswordInbox {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Remove the socket (only if it is still ours) so hooks fall back to the spool at once.
        if let Ok(meta) = std::fs::symlink_metadata(&self.socket_path) {
            if (meta.dev(), meta.ino()) == self.socket_identity {
                let _ = std::fs::remove_file(&self.socket_path);
            }
        }
    }
}

/// Creates the socket's directory (0700) when missing, refuses a group/other-writable one, and
/// removes a stale socket file (one nobody listens on).
fn prepare_socket_path(socket: &Path) -> Result<(), PasswordError> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) => {
                if meta.mode() & 0o022 != 0 {
                    return Err(PasswordError::Insecure {
                        path: dir.into(),
                        reason: "the socket's directory is writable by group/other".into(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error(dir, "create the socket's directory"))?,
            Err(e) => return Err(io_error(dir, "stat the socket's directory")(e)),
        }
    }
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(socket, "stat the socket")(e)),
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(PasswordError::AlreadyListening {
                    path: socket.into(),
                });
            }
            std::fs::remove_file(socket).map_err(io_error(socket, "remove the stale socket"))
        }
        Ok(_) => Err(PasswordError::Insecure {
            path: socket.into(),
            reason: "exists and is not a socket (not removing it)".into(),
        }),
    }
}

async fn accept_loop(
    listener: UnixListener,
    tx: mpsc::Sender<Held>,
    wake: Arc<Notify>,
    spool_dir: PathBuf,
    spool_key: Arc<CaptureKey>,
    memory_key: Arc<CaptureKey>,
) {
    let me = effective_uid();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "capture socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "capture socket: connection from a foreign user refused"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "capture socket: cannot read the peer's credentials");
                continue;
            }
        }
        let (tx, wake, spool_dir, spool_key, memory_key) = (
            tx.clone(),
            wake.clone(),
            spool_dir.clone(),
            spool_key.clone(),
            memory_key.clone(),
        );
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                CONNECTION_DEADLINE,
                serve(stream, &tx, &spool_dir, spool_key, &memory_key),
            )
            .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "capture socket: message refused"),
                Err(_) => tracing::warn!("capture socket: a client did not finish in time"),
            }
            // Any socket activity is also a cue to look at the spool.
            wake.notify_one();
        });
    }
}

/// Reads one frame, persists it in the spool, answers ACK, passes it on (encrypted in memory).
async fn serve(
    mut stream: UnixStream,
    tx: &mpsc::Sender<Held>,
    spool_dir: &Path,
    spool_key: Arc<CaptureKey>,
    memory_key: &CaptureKey,
) -> Result<(), PasswordError> {
    let io = |action| io_error("capture socket", action);
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(io("read the frame length"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(PasswordError::Malformed {
            detail: format!("frame length {len}"),
        });
    }
    let mut body = Zeroizing::new(vec![0u8; len]);
    stream
        .read_exact(&mut body[..])
        .await
        .map_err(io("read the frame"))?;
    let capture = decode_message(&body)?;
    drop(body);

    // Answer at once: the hook waits for this (300 ms at most) while the password change waits for
    // the hook. Then persist, so the capture survives an agent crash until it is acknowledged (a
    // crash in the few milliseconds in between loses it). Failing to persist still delivers it.
    let held = Held::seal(capture.clone(), memory_key)?;
    let _ = stream.write_all(&[ACK]).await;
    let _ = stream.shutdown().await;
    let id = capture.id.clone();
    let dir = spool_dir.to_path_buf();
    let persisted = tokio::task::spawn_blocking(move || spool::write(&dir, &spool_key, &capture))
        .await
        .unwrap_or_else(|_| {
            Err(PasswordError::Malformed {
                detail: "the spool writer panicked".into(),
            })
        });
    if let Err(e) = persisted {
        tracing::warn!(id = %id, error = %e, "capture kept in memory only: cannot write it to the spool");
    }
    tx.send(held).await.map_err(|_| PasswordError::Malformed {
        detail: "the inbox is closed".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::{client, new_capture_id};
    use std::os::unix::fs::PermissionsExt;

    struct Dirs {
        root: PathBuf,
        socket: PathBuf,
        spool: PathBuf,
        key: PathBuf,
    }

    impl Dirs {
        fn new(tag: &str) -> Dirs {
            let root = std::env::temp_dir().join(format!(
                "fs-inbox-{tag}-{}",
                &new_capture_id().unwrap()[..12]
            ));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&root)
                .unwrap();
            Dirs {
                socket: root.join("run/capture.sock"),
                spool: root.join("state/password-spool"),
                key: root.join("state/password.key"),
                root,
            }
        }
        fn bind(&self) -> PasswordInbox {
            PasswordInbox::bind(&self.socket, &self.spool, &self.key).unwrap()
        }
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn capture(account: &str, password: &str) -> CapturedPassword {
        CapturedPassword {
            id: new_capture_id().unwrap(),
            domain: "alpha".into(),
            account: account.into(),
            upn: Some(format!("{account}@alpha.test")),
            captured_at: SystemTime::now(),
            password: Secret::new(password),
        }
    }

    async fn recv_within(inbox: &mut PasswordInbox, limit: Duration) -> Option<CapturedPassword> {
        tokio::time::timeout(limit, inbox.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn a_capture_sent_over_the_socket_is_received_persisted_and_acked() {
        let d = Dirs::new("socket");
        let mut inbox = d.bind();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&d.socket), 0o600);
        assert_eq!(mode(d.socket.parent().unwrap()), 0o700);

        let sent = capture("jdoe", "Socket-Passw0rd!");
        client::deliver(&d.socket, &sent, Duration::from_secs(2))
            .await
            .unwrap();
        let got = recv_within(&mut inbox, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.id, sent.id);
        assert_eq!(got.account, "jdoe");
        assert_eq!(got.upn.as_deref(), Some("jdoe@alpha.test"));
        assert_eq!(got.password.expose(), "Socket-Passw0rd!");
        // Kept in the spool until acknowledged; handed out once even though a scan sees the file.
        let file = spool::spool_path(&d.spool, &sent.id);
        assert!(file.exists());
        inbox.set_scan_interval(Duration::from_millis(20));
        assert!(recv_within(&mut inbox, Duration::from_millis(300))
            .await
            .is_none());
        inbox.ack(&sent.id).unwrap();
        assert!(!file.exists());
        assert_eq!(inbox.unacknowledged(), 0);
    }

    #[tokio::test]
    async fn spooled_captures_are_delivered_at_bind_oldest_first_until_acked() {
        let d = Dirs::new("spool");
        let key = CaptureKey::load_or_create(&d.key).unwrap();
        let mut first = capture("u1", "First-Passw0rd!");
        first.captured_at -= Duration::from_secs(10);
        let second = capture("u2", "Second-Passw0rd!");
        spool::write(&d.spool, &key, &second).unwrap();
        spool::write(&d.spool, &key, &first).unwrap();

        let mut inbox = d.bind();
        let a = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        let b = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!((a.account.as_str(), b.account.as_str()), ("u1", "u2"));
        assert_eq!(b.password.expose(), "Second-Passw0rd!");
        inbox.ack(&a.id).unwrap();
        drop(inbox);
        assert!(!d.socket.exists(), "the socket is removed on drop");

        // Not acknowledged before the "crash": delivered again by the next bind.
        let mut inbox = d.bind();
        let again = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(again.id, b.id);
        inbox.ack(&again.id).unwrap();
        assert!(spool::list(&d.spool).unwrap().is_empty());
    }

    #[tokio::test]
    async fn files_spooled_while_bound_are_found_by_the_periodic_scan() {
        let d = Dirs::new("scan");
        let mut inbox = d.bind();
        inbox.set_scan_interval(Duration::from_millis(50));
        let key = CaptureKey::load_or_create(&d.key).unwrap();
        let c = capture("late", "Late-Passw0rd!");
        spool::write(&d.spool, &key, &c).unwrap();
        let got = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got.id, c.id);
        // A file that does not decrypt is moved aside, not retried forever.
        let bogus = spool::spool_path(&d.spool, &new_capture_id().unwrap());
        std::fs::write(&bogus, b"FSPW\x01garbage-garbage-garbage-garbage").unwrap();
        std::fs::set_permissions(&bogus, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(recv_within(&mut inbox, Duration::from_millis(300))
            .await
            .is_none());
        assert!(!bogus.exists());
        assert!(bogus.with_extension("bad").exists());
    }

    #[tokio::test]
    async fn a_late_spooled_duplicate_of_an_acked_capture_is_discarded() {
        let d = Dirs::new("dup");
        let mut inbox = d.bind();
        inbox.set_scan_interval(Duration::from_millis(20));
        let sent = capture("jdoe", "Dup-Passw0rd!");
        client::deliver(&d.socket, &sent, Duration::from_secs(2))
            .await
            .unwrap();
        let got = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        inbox.ack(&got.id).unwrap();
        // The hook gave up waiting for the ACK and spooled the same capture as well.
        let key = CaptureKey::load_or_create(&d.key).unwrap();
        let late = spool::write(&d.spool, &key, &sent).unwrap();
        assert!(recv_within(&mut inbox, Duration::from_millis(300))
            .await
            .is_none());
        assert!(!late.exists(), "the duplicate's spool file is deleted");
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_and_live_ones_refused() {
        let d = Dirs::new("stale");
        let inbox = d.bind();
        assert!(matches!(
            PasswordInbox::bind(&d.socket, &d.spool, &d.key),
            Err(PasswordError::AlreadyListening { .. })
        ));
        drop(inbox);
        // A crashed agent's socket: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(&d.socket).unwrap());
        assert!(d.socket.exists());
        let _inbox = d.bind();
        // A regular file where the socket should be is left alone.
        let other = Dirs::new("notsock");
        std::fs::create_dir_all(other.socket.parent().unwrap()).unwrap();
        std::fs::write(&other.socket, b"x").unwrap();
        assert!(matches!(
            PasswordInbox::bind(&other.socket, &other.spool, &other.key),
            Err(PasswordError::Insecure { .. })
        ));
    }

    #[tokio::test]
    async fn the_client_fails_fast_and_refuses_unsafe_sockets() {
        let d = Dirs::new("client");
        let c = capture("jdoe", "Client-Passw0rd!");
        // No socket at all.
        let e = client::deliver(&d.socket, &c, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, PasswordError::Io { .. }), "{e}");
        // A socket nobody answers on: times out within the budget.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d.socket.parent().unwrap())
            .unwrap();
        let silent = UnixListener::bind(&d.socket).unwrap();
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
        let started = std::time::Instant::now();
        let e = client::deliver(&d.socket, &c, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, PasswordError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_millis(800));
        // A socket open to group/other is never used.
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = client::deliver(&d.socket, &c, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, PasswordError::Insecure { .. }), "{e}");
        assert!(!e.to_string().contains("Client-Passw0rd"));
        drop(silent);
    }

    #[tokio::test]
    async fn garbage_on_the_socket_is_dropped_and_the_inbox_keeps_working() {
        let d = Dirs::new("garbage");
        let mut inbox = d.bind();
        let mut s = UnixStream::connect(&d.socket).await.unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut s2 = UnixStream::connect(&d.socket).await.unwrap();
        s2.write_all(&[0, 0, 0, 5, b'{', b'}', b'x', b'y', b'z'])
            .await
            .unwrap();
        let c = capture("jdoe", "After-Garbage-1!");
        client::deliver(&d.socket, &c, Duration::from_secs(2))
            .await
            .unwrap();
        let got = recv_within(&mut inbox, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got.id, c.id);
    }
}
