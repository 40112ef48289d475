//! Sealing secrets at rest: one 32-byte key file per installation, values sealed with
//! ChaCha20-Poly1305 and bound to what they are for.
//!
//! - Key file (`<state_dir>/seal.key` by convention): 32 random bytes, mode 0600, owned by the
//!   running user. Created by whoever needs it first: written to an `O_EXCL` temp file, fsync-ed,
//!   then hard-linked into place, so two creators never both win and nobody reads half a key. A
//!   missing parent directory is created with mode 0700. An existing key file of the wrong length,
//!   not a regular file, owned by someone else or open to group/other is refused (never fixed
//!   silently): the error names the path and the fix.
//! - Sealed value: `fs1:` ‖ lower-case hex(12-byte random nonce ‖ ciphertext ‖ 16-byte tag). The
//!   associated data is the *purpose* (e.g. `"jumpcloud.api_key"`, `"agent-credentials"`), so a value
//!   sealed for one field does not open in another.
//!
//! The key's bytes live only in a zeroized buffer (the ring key object is rebuilt for each call and
//! dropped at once); `Debug` never shows them. Nothing here logs a plaintext.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::disposition::{Classified, Disposition};

/// The prefix of every sealed value (format version 1).
pub const SEALED_PREFIX: &str = "fs1:";
/// Bytes in a seal key.
pub const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("seal key file {path} is refused: {reason}; fix: {fix}")]
    KeyFile {
        path: PathBuf,
        reason: String,
        fix: String,
    },
    #[error("the operating system gave no random bytes")]
    Random,
    #[error("sealed value for {purpose} is malformed: {detail}; fix: seal the value again")]
    Malformed { purpose: String, detail: String },
    #[error("sealed value for {purpose} does not open with this seal key (another key, an altered value, or a value sealed for another field); fix: seal the value again with this installation's seal key")]
    Open { purpose: String },
}

impl Classified for SealError {
    fn disposition(&self) -> Disposition {
        match self {
            SealError::Io { .. } | SealError::KeyFile { .. } | SealError::Random => {
                Disposition::Fatal
            }
            SealError::Malformed { .. } | SealError::Open { .. } => Disposition::BadInput,
        }
    }
}

fn io_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> SealError + 'a {
    move |source| SealError::Io {
        path: path.into(),
        action,
        source,
    }
}

/// The installation's seal key. `Debug` is redacted; the bytes are zeroized on drop.
pub struct SealKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A key from raw bytes (tests, or a key held elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut key = SealKey {
            bytes: Zeroizing::new([0u8; KEY_LEN]),
        };
        key.bytes.copy_from_slice(&bytes);
        let mut bytes = bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }

    /// A fresh random key that lives only in memory.
    pub fn generate() -> Result<Self, SealError> {
        let mut key = SealKey {
            bytes: Zeroizing::new([0u8; KEY_LEN]),
        };
        SystemRandom::new()
            .fill(&mut key.bytes[..])
            .map_err(|_| SealError::Random)?;
        Ok(key)
    }

    /// Loads the key at `path`, creating it (32 random bytes, mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        match Self::load(path) {
            Err(SealError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let fresh = Self::generate()?;
        create_private_once(path, &fresh.bytes[..])
            .map_err(io_error(path, "create the seal key file"))?;
        Self::load(path)
    }

    /// Loads an existing key file; refuses one that is not a private 32-byte regular file of ours.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_error(path, "open the seal key file"))?;
        let meta = f
            .metadata()
            .map_err(io_error(path, "stat the seal key file"))?;
        check_private_file(path, &meta).map_err(|(reason, fix)| SealError::KeyFile {
            path: path.into(),
            reason,
            fix,
        })?;
        if meta.len() != KEY_LEN as u64 {
            return Err(SealError::KeyFile {
                path: path.into(),
                reason: format!("it holds {} bytes, a seal key has {KEY_LEN}", meta.len()),
                fix: format!(
                    "restore the original key file from backup (values sealed with it open only with it), or move {} away to start with a new key and seal every value again",
                    path.display()
                ),
            });
        }
        let mut key = SealKey {
            bytes: Zeroizing::new([0u8; KEY_LEN]),
        };
        f.read_exact(&mut key.bytes[..])
            .map_err(io_error(path, "read the seal key file"))?;
        Ok(key)
    }

    fn ring_key(&self) -> LessSafeKey {
        // A 32-byte slice is always a valid ChaCha20-Poly1305 key; the error arm is unreachable.
        match UnboundKey::new(&CHACHA20_POLY1305, &self.bytes[..]) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("ChaCha20-Poly1305 keys are 32 bytes"),
        }
    }

    /// Seals `plaintext` for `purpose`: `fs1:` ‖ hex(nonce ‖ ciphertext ‖ tag).
    ///
    /// Fails (`Random`, fatal) only if the operating system cannot provide random bytes for the
    /// nonce (a nonce must never be reused, and there is no safe fallback).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buf.extend_from_slice(plaintext);
        let tag = match self.ring_key().seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut buf[..],
        ) {
            Ok(tag) => tag,
            // infallible: ring refuses only inputs beyond ChaCha20's 256 GiB limit, and what is
            // sealed here is a config secret or a credentials file.
            #[allow(clippy::panic)]
            Err(_) => panic!("value too large to seal"),
        };
        let mut out =
            String::with_capacity(SEALED_PREFIX.len() + 2 * (NONCE_LEN + buf.len() + TAG_LEN));
        out.push_str(SEALED_PREFIX);
        hex_encode_into(&nonce, &mut out);
        hex_encode_into(&buf, &mut out);
        hex_encode_into(tag.as_ref(), &mut out);
        Ok(out)
    }

    /// Opens a value [`SealKey::seal`] produced for `purpose`.
    pub fn unseal(&self, purpose: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let malformed = |detail: &str| SealError::Malformed {
            purpose: purpose.to_owned(),
            detail: detail.to_owned(),
        };
        let body = sealed
            .trim()
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| malformed("it does not start with \"fs1:\""))?;
        let raw = Zeroizing::new(
            hex_decode(body).ok_or_else(|| malformed("it is not hexadecimal after \"fs1:\""))?,
        );
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(malformed("it is too short to hold a nonce and a tag"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN])
            .map_err(|_| malformed("bad nonce"))?;
        let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
        let plain_len = self
            .ring_key()
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf[..])
            .map_err(|_| SealError::Open {
                purpose: purpose.to_owned(),
            })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Whether `value` looks like a sealed value (starts with `fs1:`).
pub fn is_sealed(value: &str) -> bool {
    value.trim_start().starts_with(SEALED_PREFIX)
}

/// `Ok(())` when `meta` describes a regular file owned by us with no group/other access; otherwise
/// (reason, fix).
pub(crate) fn check_private_file(path: &Path, meta: &fs::Metadata) -> Result<(), (String, String)> {
    if !meta.is_file() {
        return Err((
            "it is not a regular file".into(),
            format!("replace {} with a regular file", path.display()),
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err((
            format!(
                "it is owned by uid {}, not by uid {me} running forestsync",
                meta.uid()
            ),
            format!("chown {me} {}", path.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err((
            format!("mode {:o} gives group/other access", meta.mode() & 0o7777),
            format!("chmod 600 {}", path.display()),
        ));
    }
    Ok(())
}

/// A unique temp name beside `path`: `.<name>.tmp-<16 hex>`.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf, SealError> {
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| SealError::Random)?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex_encode(&suffix)
    )))
}

/// fsyncs a directory so a rename or link in it is durable (best effort).
pub fn sync_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Creates `path` with `bytes` and mode 0600 unless it exists (then the existing file wins: two
/// processes racing to create a key end up with the same one). Written to an `O_EXCL` temp file,
/// fsynced, hard-linked into place, directory fsynced. A missing parent is created with mode 0700.
pub fn create_private_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    let temp = temp_path(path).map_err(|e| std::io::Error::other(e.to_string()))?;
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match fs::hard_link(&temp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = fs::remove_file(&temp);
    linked?;
    sync_dir(path.parent());
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode 0600: `O_EXCL` temp file beside it, fsync, rename,
/// directory fsync. A missing parent directory is created with mode 0700.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_error(parent, "create the directory"))?;
        }
    }
    let temp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io_error(path, "write"))?;
    sync_dir(path.parent());
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    hex_encode_into(bytes, &mut s);
    s
}

fn hex_encode_into(bytes: &[u8], out: &mut String) {
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
}

/// The bytes of a hex string (either case); `None` for an odd length or a non-hex character.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let mut r = [0u8; 8];
        SystemRandom::new().fill(&mut r).unwrap();
        let d = std::env::temp_dir().join(format!(
            "fs-sealed-{tag}-{}-{}",
            std::process::id(),
            hex_encode(&r)
        ));
        fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn key_file_is_created_private_and_reloads_to_the_same_key() {
        let root = temp_dir("create");
        let path = root.join("state/sub/seal.key");
        let key = SealKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(fs::metadata(&path).unwrap().len(), KEY_LEN as u64);
        let sealed = key.seal("p", b"value").unwrap();
        let again = SealKey::load_or_create(&path).unwrap();
        assert_eq!(&again.unseal("p", &sealed).unwrap()[..], b"value");
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(leftovers.len(), 1, "temp files left behind");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_key_files_are_refused_naming_path_and_fix() {
        let root = temp_dir("bad");
        let open = root.join("open.key");
        SealKey::load_or_create(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealKey::load_or_create(&open).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SealError::KeyFile { .. }), "{text}");
        assert!(text.contains(&open.display().to_string()), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
        assert_eq!(err.disposition(), Disposition::Fatal);

        let short = root.join("short.key");
        fs::write(&short, b"short").unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SealKey::load_or_create(&short).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("5 bytes"), "{text}");
        assert!(text.contains(&short.display().to_string()), "{text}");
        // Never overwritten: the short file is still there.
        assert_eq!(fs::read(&short).unwrap(), b"short");

        let dir = root.join("dir.key");
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        assert!(matches!(
            SealKey::load(&dir),
            Err(SealError::KeyFile { .. }) | Err(SealError::Io { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn concurrent_creation_yields_one_key() {
        let root = temp_dir("race");
        let path = root.join("seal.key");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || SealKey::load_or_create(&p).unwrap())
            })
            .collect();
        let keys: Vec<SealKey> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let sealed = keys[0].seal("x", b"same key?").unwrap();
        for k in &keys {
            assert_eq!(&k.unseal("x", &sealed).unwrap()[..], b"same key?");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn seal_round_trips_and_hides_the_plaintext() {
        let key = SealKey::generate().unwrap();
        let secret = b"Api-Key-0123456789";
        let a = key.seal("jumpcloud.api_key", secret).unwrap();
        let b = key.seal("jumpcloud.api_key", secret).unwrap();
        assert!(a.starts_with("fs1:"));
        assert_ne!(a, b, "random nonces");
        assert!(!a.contains("Api-Key"));
        assert!(!a.contains(&hex_encode(secret)));
        assert_eq!(a.len(), 4 + 2 * (NONCE_LEN + secret.len() + TAG_LEN), "{a}");
        assert_eq!(&key.unseal("jumpcloud.api_key", &a).unwrap()[..], secret);
        assert_eq!(
            &key.unseal("", &key.seal("", b"").unwrap()).unwrap()[..],
            b""
        );
        assert!(is_sealed(&a) && !is_sealed("plain"));
    }

    #[test]
    fn wrong_key_purpose_tampering_and_bad_format_are_errors_naming_the_purpose() {
        let key = SealKey::generate().unwrap();
        let other = SealKey::generate().unwrap();
        let sealed = key.seal("domain[0].bind_password", b"s3cret-Pw").unwrap();

        let err = other
            .unseal("domain[0].bind_password", &sealed)
            .unwrap_err();
        assert!(matches!(err, SealError::Open { .. }));
        assert!(err.to_string().contains("domain[0].bind_password"));
        assert!(!err.to_string().contains("s3cret"));

        let err = key.unseal("jumpcloud.api_key", &sealed).unwrap_err();
        assert!(
            matches!(err, SealError::Open { .. }),
            "moved to another field"
        );
        assert!(err.to_string().contains("jumpcloud.api_key"));

        // Flip one hex digit of the ciphertext.
        let mut tampered = sealed.clone().into_bytes();
        let i = 4 + 2 * NONCE_LEN + 1;
        tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            key.unseal("domain[0].bind_password", &tampered),
            Err(SealError::Open { .. })
        ));

        for bad in [
            "",
            "plain text",
            "fs1:",
            "fs1:zz",
            "fs1:abc",
            "fs2:00",
            "fs1:0011",
            &sealed[..sealed.len() - 2],
        ] {
            let err = key.unseal("x.y", bad).unwrap_err();
            assert!(err.to_string().contains("x.y"), "{err}");
            assert_eq!(err.disposition(), Disposition::BadInput);
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = SealKey::from_bytes([0xab; KEY_LEN]);
        let text = format!("{key:?}");
        assert_eq!(text, "SealKey(<redacted>)");
        assert!(!text.contains("ab"));
    }

    #[test]
    fn atomic_private_write_replaces_and_sets_mode() {
        let root = temp_dir("write");
        let path = root.join("new/x.sealed");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(hex_encode(&[0, 0x7f, 0xff]), "007fff");
        assert_eq!(hex_decode("007FfF").unwrap(), vec![0, 0x7f, 0xff]);
        assert_eq!(hex_decode("").unwrap(), Vec::<u8>::new());
        assert!(hex_decode("0").is_none());
        assert!(hex_decode("0g").is_none());
        assert!(hex_decode("é0").is_none());
    }
}
