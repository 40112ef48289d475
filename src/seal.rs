//! `forestsync seal`, and the same on every start: plaintext secrets written in the config file
//! (`jumpcloud.api_key`, each domain's `bind_password`) are replaced in place by sealed values
//! (`fs1:…`, see `forestsync_actors::sealed`), keeping every other byte of the file — comments,
//! order, spacing — as it was. Secrets given by `*_file` or `*_env` are not in the file and are left
//! alone; values already sealed are not sealed again.
//!
//! The file is rewritten atomically (a temp file in the same folder with the same mode, fsync,
//! rename), so a crash leaves either the old or the new file, never half of one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use forestsync_actors::sealed::{is_sealed, sync_dir, SealError, SealKey};
use serde::Deserialize;
use toml::Spanned;

use crate::config::{bind_password_purpose, Config, API_KEY_PURPOSE};

#[derive(Debug, thiserror::Error)]
pub enum SealFileError {
    #[error("cannot {action} {path}: {source}; fix: run `forestsync seal` as the file's owner, on a writable copy")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] SealError),
}

#[derive(Deserialize)]
pub(crate) struct SecretsShape {
    jumpcloud: Option<JumpCloudSecrets>,
    #[serde(rename = "domain", default)]
    domains: Vec<DomainSecrets>,
}

#[derive(Deserialize)]
struct JumpCloudSecrets {
    api_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct DomainSecrets {
    name: String,
    bind_password: Option<Spanned<String>>,
}

/// A plaintext secret in the file: the field, its purpose, where its value is, and the value.
struct Plaintext {
    field: String,
    purpose: String,
    span: std::ops::Range<usize>,
    value: String,
}

fn plaintexts(path: &Path, text: &str) -> Result<Vec<Plaintext>, SealFileError> {
    let shape: SecretsShape = toml::from_str(text).map_err(|e| SealFileError::Syntax {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    if let Some(v) = shape.jumpcloud.and_then(|j| j.api_key) {
        out.push((
            "jumpcloud.api_key".to_owned(),
            API_KEY_PURPOSE.to_owned(),
            v,
        ));
    }
    for d in shape.domains {
        if let Some(v) = d.bind_password {
            out.push((
                format!("domain {} bind_password", d.name),
                bind_password_purpose(&d.name),
                v,
            ));
        }
    }
    Ok(out
        .into_iter()
        .filter(|(_, _, v)| !is_sealed(v.get_ref()) && !v.get_ref().is_empty())
        .map(|(field, purpose, v)| Plaintext {
            field,
            purpose,
            span: v.span(),
            value: v.into_inner(),
        })
        .collect())
}

/// Seals every plaintext secret in `path` with the key at `key_file` (created, 0600, when missing
/// and something is to be sealed). Returns the fields sealed (none: the file is not touched).
pub fn seal_file(path: &Path, key_file: &Path) -> Result<Vec<String>, SealFileError> {
    let io = |action: &'static str| {
        move |source| SealFileError::Io {
            path: path.into(),
            action,
            source,
        }
    };
    let text = std::fs::read_to_string(path).map_err(io("read"))?;
    let mut found = plaintexts(path, &text)?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let key = SealKey::load_or_create(key_file)?;
    found.sort_by_key(|p| std::cmp::Reverse(p.span.start));
    let mut out = text.clone();
    let mut fields = Vec::with_capacity(found.len());
    for p in found {
        let sealed = key.seal(&p.purpose, p.value.as_bytes())?;
        // A basic string: the sealed value is `fs1:` and hex digits, nothing to escape.
        out.replace_range(p.span, &format!("\"{sealed}\""));
        fields.push(p.field);
    }
    fields.reverse();
    let mode = std::fs::metadata(path)
        .map_err(io("inspect"))?
        .permissions()
        .mode();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let temp = path.with_extension(format!("sealing.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(io("rewrite")(e));
    }
    sync_dir(dir);
    Ok(fields)
}

/// What `run` does at start: seal what is plaintext, and say so; a file that cannot be rewritten
/// (read-only /etc, a mounted ConfigMap) is reported, not fatal.
pub fn seal_on_start(config: &Config) {
    match seal_file(&config.path, &config.seal_key_file) {
        Ok(fields) if fields.is_empty() => {}
        Ok(fields) => tracing::info!(
            config = %config.path.display(),
            key = %config.seal_key_file.display(),
            fields = ?fields,
            "plaintext secrets in the config file replaced by sealed values"
        ),
        Err(e) => tracing::warn!(
            config = %config.path.display(),
            error = %e,
            "the config file holds plaintext secrets that could not be sealed; run `forestsync seal --config <file>` where it is writable, or give the secrets by *_file"
        ),
    }
}
