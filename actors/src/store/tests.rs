use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::disposition::{Classified, Disposition};
use crate::model::{DcUsn, DesiredUser, RemoveAction};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "forestsync-store-{}-{nanos:x}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guid(n: u8) -> ObjectGuid {
    ObjectGuid::from_bytes(&[n; 16]).unwrap()
}

fn anchor(domain: &str, n: u8) -> Anchor {
    Anchor {
        domain: domain.into(),
        guid: guid(n),
    }
}

fn object(n: u8, dn: &str) -> AdObject {
    AdObject {
        guid: guid(n),
        kind: ObjectKind::User,
        dn: dn.into(),
        attrs: BTreeMap::from([("samaccountname".into(), vec![format!("user{n}")])]),
        members: BTreeSet::new(),
        unresolved_members: BTreeSet::new(),
        rid: Some(1000 + u32::from(n)),
    }
}

fn watermark(cookie: u8, usn: u64) -> Watermark {
    Watermark {
        dirsync_cookie: vec![cookie; 4],
        dc_usns: BTreeMap::from([(
            "ldaps://dc1".into(),
            DcUsn {
                invocation_id: "inv-1".into(),
                usn,
            },
        )]),
        taken_unix: 1_700_000_000 + usn,
    }
}

#[test]
fn a_watermark_stored_before_taken_unix_existed_still_loads() {
    let old: Watermark = decode(
        "watermark",
        "alpha",
        br#"{"dirsync_cookie":"0a0b","dc_usns":{}}"#,
    )
    .expect("old watermark decodes");
    assert_eq!(old.dirsync_cookie, vec![10, 11]);
    assert_eq!(old.taken_unix, 0);
    let new = watermark(1, 7);
    let back: Watermark = decode("watermark", "alpha", &encode(&new).unwrap()).unwrap();
    assert_eq!(back.taken_unix, 1_700_000_007);
}

fn desired(n: u8) -> DesiredUser {
    DesiredUser {
        anchor: anchor("alpha", n),
        username: format!("user{n}"),
        email: format!("user{n}@example.test"),
        firstname: "F".into(),
        lastname: "L".into(),
        extra: BTreeMap::new(),
        suspended: false,
        external_dn: format!("CN=user{n},DC=alpha,DC=test"),
    }
}

fn create_op(n: u8) -> Op {
    Op::CreateUser { user: desired(n) }
}

fn user_link(n: u8, id: &str) -> Link {
    Link {
        anchor: anchor("alpha", n),
        kind: ObjectKind::User,
        jumpcloud_id: id.into(),
        applied_user: Some(desired(n)),
        applied_group_name: None,
        applied_members: BTreeSet::new(),
    }
}

fn group_link(n: u8, id: &str) -> Link {
    Link {
        anchor: anchor("alpha", n),
        kind: ObjectKind::Group,
        jumpcloud_id: id.into(),
        applied_user: None,
        applied_group_name: Some(format!("group{n}")),
        applied_members: BTreeSet::new(),
    }
}

#[test]
fn commit_batch_is_atomic_and_compares_the_watermark() {
    let dir = TempDir::new();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load_domain("alpha").unwrap(), (vec![], None));

    let w1 = watermark(1, 100);
    let seqs = store
        .commit_batch(
            "alpha",
            None,
            &w1,
            &[object(1, "CN=a"), object(2, "CN=b")],
            &[],
            &[create_op(1), create_op(2)],
        )
        .unwrap();
    assert_eq!(seqs, vec![1, 2]);
    let (objects, wm) = store.load_domain("alpha").unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(wm, Some(w1.clone()));

    // A stale expectation writes nothing at all: no objects, no watermark, no ops.
    let w2 = watermark(2, 200);
    let err = store
        .commit_batch(
            "alpha",
            None,
            &w2,
            &[object(3, "CN=c")],
            &[guid(1)],
            &[create_op(3)],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::WatermarkMoved { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Retry);
    let (objects, wm) = store.load_domain("alpha").unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(wm, Some(w1.clone()));
    assert_eq!(store.pending_ops(None, 100).unwrap().len(), 2);

    // The right expectation moves it: upsert, removal, ops, in one go.
    let seqs = store
        .commit_batch(
            "alpha",
            Some(&w1),
            &w2,
            &[object(3, "CN=c"), object(2, "CN=b-renamed")],
            &[guid(1)],
            &[create_op(3)],
        )
        .unwrap();
    assert_eq!(seqs, vec![3]);
    let (objects, wm) = store.load_domain("alpha").unwrap();
    let dns: Vec<&str> = objects.iter().map(|o| o.dn.as_str()).collect();
    assert_eq!(dns, vec!["CN=b-renamed", "CN=c"]);
    assert_eq!(wm, Some(w2));

    // Domains are separate: a prefix of another domain's name does not leak into it.
    store
        .commit_batch(
            "alph",
            None,
            &watermark(9, 1),
            &[object(7, "CN=x")],
            &[],
            &[],
        )
        .unwrap();
    assert_eq!(store.load_domain("alpha").unwrap().0.len(), 2);
    assert_eq!(store.load_domain("alph").unwrap().0.len(), 1);
    assert_eq!(store.load_domain("beta").unwrap(), (vec![], None));
}

#[test]
fn the_outbox_is_ordered_and_sequence_numbers_are_never_reused() {
    let dir = TempDir::new();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.append_ops(&[]).unwrap(), Vec::<u64>::new());
    let a = store
        .append_ops(&[create_op(1), create_op(2), create_op(3)])
        .unwrap();
    assert_eq!(a, vec![1, 2, 3]);
    let pending = store.pending_ops(None, 10).unwrap();
    assert_eq!(
        pending.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(pending[1].1, create_op(2));
    assert_eq!(store.pending_ops(Some(1), 1).unwrap()[0].0, 2);
    assert!(store.pending_ops(Some(3), 10).unwrap().is_empty());
    assert!(store.pending_ops(Some(u64::MAX), 10).unwrap().is_empty());

    for s in a {
        store.complete_op(s, &LinkEffect::None).unwrap();
    }
    assert_eq!(store.pending_count().unwrap(), 0);
    // Emptied and reopened: numbering continues where it stopped.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.append_ops(&[create_op(4)]).unwrap(), vec![4]);
}

#[test]
fn complete_op_removes_the_op_and_applies_its_effect_in_one_transaction() {
    let dir = TempDir::new();
    let store = Store::open(dir.path()).unwrap();
    let seqs = store
        .append_ops(&[create_op(1), create_op(2), create_op(3), create_op(4)])
        .unwrap();

    store
        .complete_op(seqs[0], &LinkEffect::Upsert(user_link(1, "u1")))
        .unwrap();
    assert_eq!(
        store.link(&anchor("alpha", 1)).unwrap(),
        Some(user_link(1, "u1"))
    );
    store
        .complete_op(seqs[1], &LinkEffect::Upsert(group_link(9, "g9")))
        .unwrap();
    store
        .complete_op(
            seqs[2],
            &LinkEffect::AddMember {
                group: anchor("alpha", 9),
                user: anchor("alpha", 1),
            },
        )
        .unwrap();
    let g = store.link(&anchor("alpha", 9)).unwrap().unwrap();
    assert_eq!(g.applied_members, BTreeSet::from([anchor("alpha", 1)]));
    assert_eq!(store.links().unwrap().len(), 2);

    // A completed op cannot be completed again (and its effect is not applied twice).
    let err = store
        .complete_op(seqs[0], &LinkEffect::Remove(anchor("alpha", 1)))
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchOp { seq } if seq == seqs[0]));
    assert!(store.link(&anchor("alpha", 1)).unwrap().is_some());

    // Removing a user's link forgets its group memberships.
    store
        .complete_op(seqs[3], &LinkEffect::Remove(anchor("alpha", 1)))
        .unwrap();
    assert_eq!(store.link(&anchor("alpha", 1)).unwrap(), None);
    let g = store.link(&anchor("alpha", 9)).unwrap().unwrap();
    assert!(g.applied_members.is_empty());
    assert_eq!(store.pending_count().unwrap(), 0);

    // RemoveMember, and membership effects on an unlinked group are ignored.
    let s = store.append_ops(&[create_op(5), create_op(6)]).unwrap();
    store
        .complete_op(
            s[0],
            &LinkEffect::RemoveMember {
                group: anchor("alpha", 9),
                user: anchor("alpha", 1),
            },
        )
        .unwrap();
    store
        .complete_op(
            s[1],
            &LinkEffect::AddMember {
                group: anchor("alpha", 77),
                user: anchor("alpha", 1),
            },
        )
        .unwrap();
    assert_eq!(store.link(&anchor("alpha", 77)).unwrap(), None);
}

#[test]
fn quarantine_moves_the_op_with_its_error() {
    let dir = TempDir::new();
    let store = Store::open(dir.path()).unwrap();
    let seqs = store
        .append_ops(&[
            create_op(1),
            Op::RemoveUser {
                anchor: anchor("alpha", 2),
                action: RemoveAction::Suspend,
            },
        ])
        .unwrap();
    store
        .quarantine_op(seqs[0], "username user1 collides")
        .unwrap();
    assert_eq!(
        store.pending_ops(None, 10).unwrap(),
        vec![(
            seqs[1],
            Op::RemoveUser {
                anchor: anchor("alpha", 2),
                action: RemoveAction::Suspend
            }
        )]
    );
    assert_eq!(
        store.quarantined().unwrap(),
        vec![(seqs[0], create_op(1), "username user1 collides".to_owned())]
    );
    assert!(matches!(
        store.quarantine_op(seqs[0], "again"),
        Err(StoreError::NoSuchOp { .. })
    ));
}

#[test]
fn data_survives_a_reopen() {
    let dir = TempDir::new();
    {
        let store = Store::open(dir.path()).unwrap();
        let clone = store.clone();
        clone
            .commit_batch(
                "alpha",
                None,
                &watermark(1, 5),
                &[object(1, "CN=a")],
                &[],
                &[create_op(1), create_op(2)],
            )
            .unwrap();
        store
            .complete_op(1, &LinkEffect::Upsert(user_link(1, "u1")))
            .unwrap();
        store.quarantine_op(2, "bad").unwrap();
        store.set_meta("mode", "ad-authoritative").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let (objects, wm) = store.load_domain("alpha").unwrap();
    assert_eq!(objects, vec![object(1, "CN=a")]);
    assert_eq!(wm, Some(watermark(1, 5)));
    assert_eq!(store.links().unwrap(), vec![user_link(1, "u1")]);
    assert_eq!(store.quarantined().unwrap().len(), 1);
    assert_eq!(
        store.get_meta("mode").unwrap().as_deref(),
        Some("ad-authoritative")
    );
    assert_eq!(store.get_meta("absent").unwrap(), None);
    assert_eq!(store.append_ops(&[create_op(3)]).unwrap(), vec![3]);
}

#[test]
fn a_transaction_dropped_before_commit_leaves_nothing_behind() {
    let dir = TempDir::new();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .commit_batch("alpha", None, &watermark(1, 1), &[], &[], &[create_op(1)])
            .unwrap();
        // The process "dies" in the middle of the next batch: the writes were made, the commit never happened.
        let txn = store.begin_write().unwrap();
        let seqs = write_batch(
            &txn,
            "alpha",
            Some(&watermark(1, 1)),
            &watermark(2, 2),
            &[object(5, "CN=e")],
            &[],
            &[create_op(2), create_op(3)],
        )
        .unwrap();
        assert_eq!(seqs, vec![2, 3]);
        drop(txn);
        // Visible to nobody, neither in this process ...
        assert_eq!(
            store.load_domain("alpha").unwrap(),
            (vec![], Some(watermark(1, 1)))
        );
        assert_eq!(store.pending_ops(None, 10).unwrap().len(), 1);
    }
    // ... nor after a restart; and the sequence numbers it took are handed out again (never used).
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.load_domain("alpha").unwrap(),
        (vec![], Some(watermark(1, 1)))
    );
    assert_eq!(
        store.pending_ops(None, 10).unwrap(),
        vec![(1, create_op(1))]
    );
    assert_eq!(store.append_ops(&[create_op(4)]).unwrap(), vec![2]);
}

#[cfg(unix)]
#[test]
fn the_state_directory_and_file_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let state = dir.path().join("nested").join("state");
    let store = Store::open(&state).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    // A second open of the same file while it is held is refused with a clear error.
    let err = Store::open(&state).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert_eq!(err.disposition(), Disposition::Fatal);
}
