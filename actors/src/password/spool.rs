//! The encrypted spool: where a capture waits when the agent is not reachable, and where the agent
//! keeps every capture until it is acknowledged.
//!
//! - Directory: mode 0700, owned by the running user (created so; an existing one with group/other
//!   access is refused, never chmod-ed).
//! - File `<id>.spool`, mode 0600, written as `.tmp-<id>` (O_EXCL) + fsync + rename + directory
//!   fsync, so a reader never sees a partial file. Content: `FSPW\x01` ‖ 12-byte random nonce ‖
//!   ChaCha20-Poly1305(JSON message) ‖ 16-byte tag, with `FSPW\x01` ‖ id as associated data (a file
//!   renamed to another id does not open).
//! - Key: 32 random bytes in `key_file` (mode 0600, owned by the running user), created by whichever
//!   side needs it first: written to an O_EXCL temp file, then hard-linked into place, so two
//!   creators never both win and nobody reads a half-written key.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::wire::{decode_message, encode_json, is_valid_id, MAX_FRAME};
use super::{io_error, CapturedPassword, PasswordError};

const MAGIC: &[u8; 5] = b"FSPW\x01";
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const SPOOL_EXT: &str = "spool";
/// Temp files older than this are leftovers of a hook that died mid-write.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// The effective user id: spool, key and socket must belong to it (root in production).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A ChaCha20-Poly1305 key: the spool key (from `key_file`) or an ephemeral in-memory one.
pub struct CaptureKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for CaptureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptureKey(<redacted>)")
    }
}

impl CaptureKey {
    fn from_bytes(bytes: &[u8]) -> Self {
        // infallible: every caller passes a KEY_LEN (32) byte buffer (`load` checks the file's size).
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20-Poly1305 key");
        CaptureKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// A random key that lives only in this process (for holding captures encrypted in memory).
    pub fn ephemeral() -> Result<Self, PasswordError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| PasswordError::Random)?;
        Ok(Self::from_bytes(&bytes[..]))
    }

    /// Loads the spool key, creating it (random, 0600, O_EXCL) when the file does not exist yet.
    pub fn load_or_create(path: &Path) -> Result<Self, PasswordError> {
        match Self::load(path) {
            Err(PasswordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| PasswordError::Random)?;
        crate::sealed::create_private_once(path, &bytes[..])
            .map_err(io_error(path, "create the key file"))?;
        Self::load(path)
    }

    /// Loads an existing key file; refuses one that is not a 32-byte regular file of ours with mode 0600.
    pub fn load(path: &Path) -> Result<Self, PasswordError> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_error(path, "open the key file"))?;
        let meta = f.metadata().map_err(io_error(path, "stat the key file"))?;
        check_private(path, &meta, false)?;
        if meta.len() != KEY_LEN as u64 {
            return Err(PasswordError::Insecure {
                path: path.into(),
                reason: format!("the key file has {} bytes, expected {KEY_LEN}", meta.len()),
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        f.read_exact(&mut bytes[..])
            .map_err(io_error(path, "read the key file"))?;
        Ok(Self::from_bytes(&bytes[..]))
    }

    /// `MAGIC ‖ nonce ‖ ciphertext ‖ tag` of `plaintext`, bound to `aad_extra`.
    pub fn seal(&self, aad_extra: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PasswordError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PasswordError::Random)?;
        let head = MAGIC.len() + NONCE_LEN;
        let mut out = Zeroizing::new(Vec::with_capacity(head + plaintext.len() + TAG_LEN));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(aad_extra)),
                &mut out[head..],
            )
            .map_err(|_| PasswordError::Random)?;
        out.extend_from_slice(tag.as_ref());
        // Only ciphertext is left in the buffer: hand it out without zeroizing.
        Ok(std::mem::take(&mut *out))
    }

    /// The plaintext of [`CaptureKey::seal`]'s output, or `None` if it does not authenticate.
    pub fn open(&self, aad_extra: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let head = MAGIC.len() + NONCE_LEN;
        if sealed.len() < head + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[MAGIC.len()..head]).ok()?;
        let mut buf = Zeroizing::new(sealed[head..].to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad(aad_extra)), &mut buf[..])
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

fn aad(extra: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(MAGIC.len() + extra.len());
    a.extend_from_slice(MAGIC);
    a.extend_from_slice(extra);
    a
}

/// Refuses files and directories not owned by us or open to group/other.
fn check_private(path: &Path, meta: &fs::Metadata, want_dir: bool) -> Result<(), PasswordError> {
    let insecure = |reason: String| {
        Err(PasswordError::Insecure {
            path: path.into(),
            reason,
        })
    };
    if want_dir && !meta.is_dir() {
        return insecure("not a directory".into());
    }
    if !want_dir && !meta.is_file() {
        return insecure("not a regular file".into());
    }
    let me = effective_uid();
    if meta.uid() != me {
        return insecure(format!("owned by uid {}, expected uid {me}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return insecure(format!(
            "mode {:o} gives group/other access; fix: chmod {} it",
            meta.mode() & 0o7777,
            if want_dir { "700" } else { "600" }
        ));
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that the existing one is ours and
/// private.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PasswordError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => check_private(dir, &meta, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir, "create the directory")),
        Err(e) => Err(io_error(dir, "stat the directory")(e)),
    }
}

/// The spool file of capture `id`.
pub fn spool_path(spool_dir: &Path, id: &str) -> PathBuf {
    spool_dir.join(format!("{id}.{SPOOL_EXT}"))
}

/// Writes one capture, encrypted, atomically. Returns the file's path.
pub fn write(
    spool_dir: &Path,
    key: &CaptureKey,
    msg: &CapturedPassword,
) -> Result<PathBuf, PasswordError> {
    if !is_valid_id(&msg.id) {
        return Err(PasswordError::Malformed {
            detail: "id is not 32 lower-case hex characters".into(),
        });
    }
    ensure_private_dir(spool_dir)?;
    let json = encode_json(msg, 0, 0);
    let sealed = key.seal(msg.id.as_bytes(), &json)?;
    drop(json);
    let temp = spool_dir.join(format!(".tmp-{}", msg.id));
    let target = spool_path(spool_dir, &msg.id);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        f.write_all(&sealed)?;
        f.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_error(&target, "write the spool file"))?;
    crate::sealed::sync_dir(Some(spool_dir));
    Ok(target)
}

/// Reads and decrypts one spool file.
pub fn read(path: &Path, key: &CaptureKey) -> Result<CapturedPassword, PasswordError> {
    let id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| is_valid_id(s))
        .ok_or_else(|| PasswordError::Malformed {
            detail: format!("{} is not named <id>.{SPOOL_EXT}", path.display()),
        })?;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_error(path, "open the spool file"))?;
    let meta = f
        .metadata()
        .map_err(io_error(path, "stat the spool file"))?;
    check_private(path, &meta, false)?;
    let limit = (MAX_FRAME + MAGIC.len() + NONCE_LEN + TAG_LEN) as u64;
    if meta.len() > limit {
        return Err(PasswordError::Malformed {
            detail: format!(
                "{}: {} bytes, more than {limit}",
                path.display(),
                meta.len()
            ),
        });
    }
    let mut sealed = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut sealed)
        .map_err(io_error(path, "read the spool file"))?;
    let plain = key
        .open(id.as_bytes(), &sealed)
        .ok_or_else(|| PasswordError::Decrypt { path: path.into() })?;
    let msg = decode_message(&plain)?;
    if msg.id != id {
        return Err(PasswordError::Malformed {
            detail: format!(
                "{}: the message id does not match the file name",
                path.display()
            ),
        });
    }
    Ok(msg)
}

/// The ids of the spool files present, oldest file first; removes temp files left by dead writers.
pub fn list(spool_dir: &Path) -> Result<Vec<String>, PasswordError> {
    let entries = match fs::read_dir(spool_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(spool_dir, "list the spool directory")(e)),
    };
    let now = SystemTime::now();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
        if name.starts_with(".tmp-") {
            if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        if let Some(id) = name.strip_suffix(".spool").filter(|id| is_valid_id(id)) {
            found.push((modified, id.to_owned()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Deletes capture `id`'s spool file (absent is fine).
pub fn remove(spool_dir: &Path, id: &str) -> Result<(), PasswordError> {
    let path = spool_path(spool_dir, id);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, "delete the spool file")(e)),
    }
}

/// Moves an unreadable spool file aside (`<id>.bad`) so scans stop retrying it; an operator decides.
pub(crate) fn quarantine(spool_dir: &Path, id: &str) {
    let _ = fs::rename(
        spool_path(spool_dir, id),
        spool_dir.join(format!("{id}.bad")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::new_capture_id;
    use crate::secret::Secret;
    use std::time::UNIX_EPOCH;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fs-spool-{tag}-{}-{}",
            std::process::id(),
            new_capture_id().unwrap()
        ));
        fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        d
    }

    fn capture(password: &str) -> CapturedPassword {
        CapturedPassword {
            id: new_capture_id().unwrap(),
            domain: "alpha".into(),
            account: "jdoe".into(),
            upn: None,
            captured_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            password: Secret::new(password),
        }
    }

    #[test]
    fn spool_round_trip_is_encrypted_private_and_atomic() {
        let root = temp_dir("rt");
        let key_path = root.join("state/password.key");
        let spool = root.join("state/password-spool");
        let key = CaptureKey::load_or_create(&key_path).unwrap();
        let pw = "Spool-Me-Passw0rd!";
        let msg = capture(pw);
        let path = write(&spool, &key, &msg).unwrap();

        let bytes = fs::read(&path).unwrap();
        assert!(
            !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
            "clear password in the spool"
        );
        assert!(
            !bytes.windows(4).any(|w| w == b"jdoe"),
            "metadata is encrypted too"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(list(&spool).unwrap(), vec![msg.id.clone()]);

        // A second load (the other side) reads the same key and decrypts.
        let again = CaptureKey::load_or_create(&key_path).unwrap();
        let back = read(&path, &again).unwrap();
        assert_eq!(back.password.expose(), pw);
        assert_eq!(back.account, "jdoe");
        assert_eq!(back.captured_at, msg.captured_at);

        // Renamed to another id: does not open (the id is authenticated).
        let other = spool_path(&spool, &new_capture_id().unwrap());
        fs::rename(&path, &other).unwrap();
        assert!(matches!(
            read(&other, &again),
            Err(PasswordError::Decrypt { .. })
        ));

        // Another key: does not open.
        let wrong = CaptureKey::ephemeral().unwrap();
        let path = write(&spool, &key, &capture(pw)).unwrap();
        assert!(matches!(
            read(&path, &wrong),
            Err(PasswordError::Decrypt { .. })
        ));

        remove(&spool, &msg.id).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn insecure_key_files_and_directories_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir("perm");
        let key_path = root.join("password.key");
        CaptureKey::load_or_create(&key_path).unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            CaptureKey::load(&key_path),
            Err(PasswordError::Insecure { .. })
        ));
        let open_dir = root.join("open");
        fs::create_dir(&open_dir).unwrap();
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let key = CaptureKey::ephemeral().unwrap();
        assert!(matches!(
            write(&open_dir, &key, &capture("x")),
            Err(PasswordError::Insecure { .. })
        ));
        let short = root.join("short.key");
        fs::write(&short, b"too short").unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            CaptureKey::load(&short),
            Err(PasswordError::Insecure { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn concurrent_key_creation_yields_one_key() {
        let root = temp_dir("race");
        let key_path = root.join("password.key");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = key_path.clone();
                std::thread::spawn(move || CaptureKey::load_or_create(&p).unwrap())
            })
            .collect();
        let keys: Vec<CaptureKey> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let sealed = keys[0].seal(b"x", b"same key?").unwrap();
        for k in &keys {
            assert_eq!(&k.open(b"x", &sealed).unwrap()[..], b"same key?");
        }
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "temp files left behind");
        fs::remove_dir_all(&root).unwrap();
    }
}
