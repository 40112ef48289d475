//! The durable store: one embedded redb file in the state directory holding, per AD domain, the object
//! snapshot and the change-stream watermark; the outbox of JumpCloud operations; the quarantine; the links
//! (anchor → JumpCloud id and what was last applied); and a small key/value table for metadata.
//!
//! Every public write is one redb transaction committed with `Durability::Immediate` (fsynced before
//! `commit` returns): after a crash the store holds exactly the transactions that returned `Ok`.
//! A domain's watermark only moves in the same transaction that records its objects and queues the
//! operations derived from them, so a crash can never advance the watermark past unqueued work.
//!
//! Values are JSON (serde). Keys: objects by `"<domain>\0<objectGUID>"`, watermarks by domain, links by
//! the anchor's display form (`domain/guid`), the outbox and the quarantine by a `u64` sequence number
//! that is persisted, monotonic and never reused.
//!
//! The API is synchronous (redb is); async callers run writes on a blocking thread.

mod error;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use error::StoreError;

use crate::model::{AdObject, Anchor, Link, LinkEffect, ObjectGuid, ObjectKind, Op, Watermark};

/// The file name inside the state directory.
pub const FILE_NAME: &str = "forestsync.redb";

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const WATERMARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("watermarks");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
const LINKS: TableDefinition<&str, &[u8]> = TableDefinition::new("links");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// redb's page cache (its default is 1 GiB).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The next outbox sequence number to hand out (in `COUNTERS`).
const NEXT_SEQ: &str = "next_seq";

/// The embedded store. Cheap to clone (one shared database handle); `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` only between dropping a database that failed an I/O and opening it again.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct QuarantineEntry {
    op: Op,
    error: String,
}

/// Opens (or creates) the redb file with the agent's cache size.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    // redb's default page cache is 1 GiB and is never trimmed: the agent's resident memory would
    // grow with the store. The working set is the recent pages; the OS page cache has the rest.
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
}

impl Store {
    /// Opens (or creates) `<state_dir>/forestsync.redb`. A missing state directory is created with mode
    /// 0700, the file with 0600. Only one process may hold the file open at a time.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        create_private_file(&path)?;
        let db = open_database(&path)?;
        let store = Store {
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(Arc::new(db))),
                path,
            }),
        };
        // Create every table once so readers never meet a missing one.
        let txn = store.begin_write()?;
        {
            txn.open_table(OBJECTS).map_err(StoreError::db)?;
            txn.open_table(WATERMARKS).map_err(StoreError::db)?;
            txn.open_table(OUTBOX).map_err(StoreError::db)?;
            txn.open_table(QUARANTINE).map_err(StoreError::db)?;
            txn.open_table(LINKS).map_err(StoreError::db)?;
            txn.open_table(META).map_err(StoreError::db)?;
            txn.open_table(COUNTERS).map_err(StoreError::db)?;
        }
        store.commit(txn)?;
        Ok(store)
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The open database; after an I/O failure (disk full, file unwritable) redb refuses every
    /// later transaction (`PreviousIo`), so the file is opened again here, once writes can succeed.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(db.clone());
        }
        let mut slot = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_database(&self.inner.path)?);
        tracing::info!(path = %self.inner.path.display(), "state store reopened after an I/O failure");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Records a failed store operation: an I/O failure drops the database handle so the next
    /// transaction reopens the file (redb's recovery replays its last committed state), and marks the
    /// agent not ready until a write succeeds again.
    fn failed(&self, e: redb::Error) -> StoreError {
        if matches!(e, redb::Error::PreviousIo | redb::Error::Io(_)) {
            let mut slot = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
            *slot = None;
        }
        let err = StoreError::db(e);
        crate::health::store_failed(&err.to_string());
        err
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let db = self.database()?;
        let mut txn = db.begin_write().map_err(|e| self.failed(e.into()))?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// Commits `txn`; every write of the store ends here.
    fn commit(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(|e| self.failed(e.into()))?;
        crate::health::store_ok();
        Ok(())
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let db = self.database()?;
        db.begin_read().map_err(|e| self.failed(e.into()))
    }

    /// The domain's stored objects (in objectGUID-string order) and its watermark.
    pub fn load_domain(
        &self,
        domain: &str,
    ) -> Result<(Vec<AdObject>, Option<Watermark>), StoreError> {
        let txn = self.begin_read()?;
        let objects = txn.open_table(OBJECTS).map_err(StoreError::db)?;
        let (from, to) = domain_range(domain);
        let mut out = Vec::new();
        for row in objects
            .range(from.as_str()..to.as_str())
            .map_err(StoreError::db)?
        {
            let (key, value) = row.map_err(StoreError::db)?;
            out.push(decode::<AdObject>("object", key.value(), value.value())?);
        }
        let watermarks = txn.open_table(WATERMARKS).map_err(StoreError::db)?;
        let watermark = match watermarks.get(domain).map_err(StoreError::db)? {
            Some(v) => Some(decode::<Watermark>("watermark", domain, v.value())?),
            None => None,
        };
        Ok((out, watermark))
    }

    /// One transaction: checks that the domain's stored watermark equals `expected` (`None` = no
    /// watermark yet), upserts and removes this domain's objects, stores `new` as its watermark, and
    /// appends `ops` to the outbox. Returns the sequence numbers given to `ops`, in order.
    ///
    /// When the stored watermark differs from `expected`, nothing is written and the answer is
    /// [`StoreError::WatermarkMoved`].
    pub fn commit_batch(
        &self,
        domain: &str,
        expected: Option<&Watermark>,
        new: &Watermark,
        upserts: &[AdObject],
        removals: &[ObjectGuid],
        ops: &[Op],
    ) -> Result<Vec<u64>, StoreError> {
        let txn = self.begin_write()?;
        let seqs = write_batch(&txn, domain, expected, new, upserts, removals, ops)?;
        self.commit(txn)?;
        Ok(seqs)
    }

    /// Appends operations to the outbox (one transaction). Returns their sequence numbers, in order.
    pub fn append_ops(&self, ops: &[Op]) -> Result<Vec<u64>, StoreError> {
        let txn = self.begin_write()?;
        let seqs = append_in(&txn, ops)?;
        self.commit(txn)?;
        Ok(seqs)
    }

    /// Up to `limit` queued operations with a sequence number above `after`, ascending.
    pub fn pending_ops(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Op)>, StoreError> {
        let txn = self.begin_read()?;
        let outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
        let start = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(a) => a + 1,
            None => 0,
        };
        let mut out = Vec::new();
        for row in outbox.range(start..).map_err(StoreError::db)?.take(limit) {
            let (key, value) = row.map_err(StoreError::db)?;
            let seq = key.value();
            out.push((seq, decode::<Op>("op", seq, value.value())?));
        }
        Ok(out)
    }

    /// How many operations are queued.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        let txn = self.begin_read()?;
        let outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
        outbox.len().map_err(StoreError::db)
    }

    /// One transaction: removes operation `seq` from the outbox and applies `effect` to the links.
    /// [`StoreError::NoSuchOp`] (and nothing written) when `seq` is not queued.
    pub fn complete_op(&self, seq: u64, effect: &LinkEffect) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
            if outbox.remove(seq).map_err(StoreError::db)?.is_none() {
                return Err(StoreError::NoSuchOp { seq });
            }
            let mut links = txn.open_table(LINKS).map_err(StoreError::db)?;
            apply_effect(&mut links, effect)?;
        }
        self.commit(txn)
    }

    /// One transaction for several completed operations (a group commit: one fsync): removes each
    /// from the outbox and applies its effect to the links, in the order given. Nothing is written
    /// when one of them is not queued ([`StoreError::NoSuchOp`]).
    pub fn complete_ops(&self, done: &[(u64, LinkEffect)]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
            let mut links = txn.open_table(LINKS).map_err(StoreError::db)?;
            for (seq, effect) in done {
                if outbox.remove(*seq).map_err(StoreError::db)?.is_none() {
                    return Err(StoreError::NoSuchOp { seq: *seq });
                }
                apply_effect(&mut links, effect)?;
            }
        }
        self.commit(txn)
    }

    /// One transaction: moves operation `seq` from the outbox to the quarantine, with `error`.
    pub fn quarantine_op(&self, seq: u64, error: &str) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
            let op = match outbox.remove(seq).map_err(StoreError::db)? {
                Some(v) => decode::<Op>("op", seq, v.value())?,
                None => return Err(StoreError::NoSuchOp { seq }),
            };
            let entry = encode(&QuarantineEntry {
                op,
                error: error.to_owned(),
            })?;
            let mut q = txn.open_table(QUARANTINE).map_err(StoreError::db)?;
            q.insert(seq, entry.as_slice()).map_err(StoreError::db)?;
        }
        self.commit(txn)
    }

    /// Every quarantined operation with its error, ascending by sequence number.
    pub fn quarantined(&self) -> Result<Vec<(u64, Op, String)>, StoreError> {
        let txn = self.begin_read()?;
        let q = txn.open_table(QUARANTINE).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in q.iter().map_err(StoreError::db)? {
            let (key, value) = row.map_err(StoreError::db)?;
            let seq = key.value();
            let e = decode::<QuarantineEntry>("quarantine entry", seq, value.value())?;
            out.push((seq, e.op, e.error));
        }
        Ok(out)
    }

    /// The link of one anchor.
    pub fn link(&self, anchor: &Anchor) -> Result<Option<Link>, StoreError> {
        let txn = self.begin_read()?;
        let links = txn.open_table(LINKS).map_err(StoreError::db)?;
        let key = anchor.to_string();
        match links.get(key.as_str()).map_err(StoreError::db)? {
            Some(v) => Ok(Some(decode::<Link>("link", &key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every link, in anchor-string order.
    pub fn links(&self) -> Result<Vec<Link>, StoreError> {
        let txn = self.begin_read()?;
        let links = txn.open_table(LINKS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in links.iter().map_err(StoreError::db)? {
            let (key, value) = row.map_err(StoreError::db)?;
            out.push(decode::<Link>("link", key.value(), value.value())?);
        }
        Ok(out)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(StoreError::db)?;
        Ok(meta
            .get(key)
            .map_err(StoreError::db)?
            .map(|v| v.value().to_owned()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::db)?;
            meta.insert(key, value).map_err(StoreError::db)?;
        }
        self.commit(txn)
    }

    pub fn delete_meta(&self, key: &str) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(StoreError::db)?;
            meta.remove(key).map_err(StoreError::db)?;
        }
        self.commit(txn)
    }

    /// Every meta entry whose key starts with `prefix`, in key order.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in meta.range(prefix..).map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }
}

/// The body of `commit_batch`, inside a caller-owned transaction (tests drop it uncommitted to
/// simulate a crash).
fn write_batch(
    txn: &WriteTransaction,
    domain: &str,
    expected: Option<&Watermark>,
    new: &Watermark,
    upserts: &[AdObject],
    removals: &[ObjectGuid],
    ops: &[Op],
) -> Result<Vec<u64>, StoreError> {
    {
        let mut watermarks = txn.open_table(WATERMARKS).map_err(StoreError::db)?;
        let stored = match watermarks.get(domain).map_err(StoreError::db)? {
            Some(v) => Some(decode::<Watermark>("watermark", domain, v.value())?),
            None => None,
        };
        if stored.as_ref() != expected {
            return Err(StoreError::WatermarkMoved {
                domain: domain.to_owned(),
            });
        }
        let bytes = encode(new)?;
        watermarks
            .insert(domain, bytes.as_slice())
            .map_err(StoreError::db)?;
    }
    {
        let mut objects = txn.open_table(OBJECTS).map_err(StoreError::db)?;
        for o in upserts {
            let key = object_key(domain, &o.guid);
            let bytes = encode(o)?;
            objects
                .insert(key.as_str(), bytes.as_slice())
                .map_err(StoreError::db)?;
        }
        for guid in removals {
            let key = object_key(domain, guid);
            objects.remove(key.as_str()).map_err(StoreError::db)?;
        }
    }
    append_in(txn, ops)
}

fn append_in(txn: &WriteTransaction, ops: &[Op]) -> Result<Vec<u64>, StoreError> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let mut counters = txn.open_table(COUNTERS).map_err(StoreError::db)?;
    let mut next = counters
        .get(NEXT_SEQ)
        .map_err(StoreError::db)?
        .map(|v| v.value())
        .unwrap_or(1);
    let mut outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
    let mut seqs = Vec::with_capacity(ops.len());
    for op in ops {
        let bytes = encode(op)?;
        outbox
            .insert(next, bytes.as_slice())
            .map_err(StoreError::db)?;
        seqs.push(next);
        next = next.checked_add(1).ok_or(StoreError::SequenceExhausted)?;
    }
    counters.insert(NEXT_SEQ, next).map_err(StoreError::db)?;
    Ok(seqs)
}

fn apply_effect(
    links: &mut redb::Table<&str, &[u8]>,
    effect: &LinkEffect,
) -> Result<(), StoreError> {
    match effect {
        LinkEffect::None => {}
        LinkEffect::Upsert(link) => {
            let bytes = encode(link)?;
            links
                .insert(link.anchor.to_string().as_str(), bytes.as_slice())
                .map_err(StoreError::db)?;
        }
        LinkEffect::Remove(anchor) => {
            let key = anchor.to_string();
            let removed = links
                .remove(key.as_str())
                .map_err(StoreError::db)?
                .map(|v| decode::<Link>("link", &key, v.value()))
                .transpose()?;
            // A user that leaves JumpCloud leaves its groups there too: forget those memberships so a
            // returning user is added again.
            if removed.is_some_and(|l| l.kind == ObjectKind::User) {
                let mut changed = Vec::new();
                for row in links.iter().map_err(StoreError::db)? {
                    let (k, v) = row.map_err(StoreError::db)?;
                    let mut l = decode::<Link>("link", k.value(), v.value())?;
                    if l.applied_members.remove(anchor) {
                        changed.push(l);
                    }
                }
                for l in changed {
                    let bytes = encode(&l)?;
                    links
                        .insert(l.anchor.to_string().as_str(), bytes.as_slice())
                        .map_err(StoreError::db)?;
                }
            }
        }
        LinkEffect::AddMember { group, user } | LinkEffect::RemoveMember { group, user } => {
            let key = group.to_string();
            let link = links
                .get(key.as_str())
                .map_err(StoreError::db)?
                .map(|v| decode::<Link>("link", &key, v.value()))
                .transpose()?;
            // A group whose link is gone has nothing to record.
            if let Some(mut link) = link {
                let changed = if matches!(effect, LinkEffect::AddMember { .. }) {
                    link.applied_members.insert(user.clone())
                } else {
                    link.applied_members.remove(user)
                };
                if changed {
                    let bytes = encode(&link)?;
                    links
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(StoreError::db)?;
                }
            }
        }
    }
    Ok(())
}

fn object_key(domain: &str, guid: &ObjectGuid) -> String {
    format!("{domain}\u{0}{guid}")
}

/// `[domain\0, domain\x01)`: every object key of one domain.
fn domain_range(domain: &str) -> (String, String) {
    (format!("{domain}\u{0}"), format!("{domain}\u{1}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_string().replace('\0', "/"),
        detail: e.to_string(),
    })
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(dir) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        "the state directory is readable by other users; fix: chmod 700 it"
                    );
                }
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
    }
    drop(file);
    Ok(())
}
