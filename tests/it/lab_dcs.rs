//! The lab's real DCs behave as the rest of the suite assumes: verified LDAPS on every DC,
//! replication between ALPHA's two DCs, and a service account limited to what it was granted.

use std::time::{Duration, Instant};

use forestsync_actors::directory::{DcEndpoint, DcSession, DirectoryError, LdapMod};
use forestsync_actors::disposition::{Classified, Disposition};
use forestsync_actors::secret::Secret;
use forestsync_actors::trust;
use ldap3::Scope;

use crate::support::{self, attr, unique};

#[tokio::test]
async fn every_lab_dc_accepts_a_verified_ldaps_bind_as_the_service_account() {
    let Some(lab) = support::lab() else { return };
    for domain in [&lab.alpha, &lab.beta] {
        for url in &domain.dc_urls {
            let mut s =
                support::bound_session(lab, url, &domain.bind_dn, &domain.bind_password).await;
            let dse = s.root_dse().await.unwrap();
            assert_eq!(
                dse.default_naming_context.as_deref().map(str::to_lowercase),
                Some(domain.base_dn.to_lowercase()),
                "{url} serves the wrong domain"
            );
            assert!(
                dse.highest_committed_usn.unwrap_or(0) > 0,
                "{url}: no highestCommittedUSN"
            );
        }
    }
}

#[tokio::test]
async fn starttls_on_389_is_verified_too() {
    let Some(lab) = support::lab() else { return };
    let url = lab.alpha.dc_urls[0]
        .replace("ldaps://", "ldap://")
        .replace(":636", ":389");
    let mut s =
        support::bound_session(lab, &url, &lab.alpha.bind_dn, &lab.alpha.bind_password).await;
    assert!(s.root_dse().await.is_ok());
}

#[tokio::test]
async fn a_dc_certificate_is_refused_when_the_lab_ca_is_not_trusted() {
    let Some(lab) = support::lab() else { return };
    let public_roots = trust::client_config(None).unwrap();
    let endpoint = DcEndpoint::parse(&lab.alpha.dc_urls[0]).unwrap();
    let err = match DcSession::connect(&endpoint, public_roots, support::TIMEOUTS).await {
        Ok(_) => panic!("a lab certificate was accepted without the lab CA: verification is off"),
        Err(e) => e,
    };
    assert!(
        matches!(err, DirectoryError::Tls { .. }),
        "expected a TLS verification error, got {err}"
    );
    assert_eq!(err.disposition(), Disposition::Fatal);
    assert!(
        err.to_string().contains("ca_file"),
        "the error should name the fix: {err}"
    );
}

#[tokio::test]
async fn a_wrong_bind_password_is_rejected_and_explained() {
    let Some(lab) = support::lab() else { return };
    let tls = trust::client_config(Some(&lab.ca_file)).unwrap();
    let endpoint = DcEndpoint::parse(&lab.beta.dc_urls[0]).unwrap();
    let mut s = DcSession::connect(&endpoint, tls, support::TIMEOUTS)
        .await
        .unwrap();
    let err = s
        .bind(&lab.beta.bind_dn, &Secret::new("Wrong-Passw0rd!"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong password"), "{err}");
    assert!(
        !err.to_string().contains("Wrong-Passw0rd"),
        "the error leaks the password: {err}"
    );
}

#[tokio::test]
async fn a_user_created_on_alpha_dc1_appears_on_dc2() {
    let Some(lab) = support::lab() else { return };
    let alpha = &lab.alpha;
    let name = unique("repl");
    let dn = format!("CN={name},OU=ADI,{}", alpha.base_dn);
    let mut dc1 = support::admin_session(lab, alpha, &alpha.dc_urls[0]).await;
    dc1.add(
        &dn,
        vec![
            attr(
                "objectClass",
                &["top", "person", "organizationalPerson", "user"],
            ),
            attr("sAMAccountName", &[&name]),
            attr("userAccountControl", &["546"]),
        ],
    )
    .await
    .unwrap();

    let mut dc2 = support::admin_session(lab, alpha, &alpha.dc_urls[1]).await;
    let started = Instant::now();
    let seen = loop {
        if dc2
            .read_entry(&dn, &["objectGUID"])
            .await
            .unwrap()
            .is_some()
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(90) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("replication DC1 -> DC2 took {:?}", started.elapsed());
    dc1.delete(&dn).await.unwrap();
    assert!(seen, "{dn} created on DC1 did not reach DC2 within 90 s");
}

#[tokio::test]
async fn the_service_account_is_refused_where_it_has_no_rights() {
    let Some(lab) = support::lab() else { return };
    let alpha = &lab.alpha;
    let mut svc =
        support::bound_session(lab, &alpha.dc_urls[0], &alpha.bind_dn, &alpha.bind_password).await;

    // Allowed: change tracking (Replicating Directory Changes).
    svc.probe_change_tracking_rights(&alpha.base_dn)
        .await
        .expect("the service account may run DirSync");

    // Refused: writing an attribute on an object outside its OUs.
    let err = svc
        .modify(
            &alpha.admin_dn,
            vec![LdapMod::Replace(
                b"description".to_vec(),
                [b"forestsync was here".to_vec()].into(),
            )],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::Refused { rc: 50, .. }),
        "expected insufficientAccessRights, got {err}"
    );

    // Refused: creating a user outside its OUs.
    let name = unique("nope");
    let err = svc
        .add(
            &format!("CN={name},CN=Users,{}", alpha.base_dn),
            vec![
                attr(
                    "objectClass",
                    &["top", "person", "organizationalPerson", "user"],
                ),
                attr("sAMAccountName", &[&name]),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::Refused { rc: 50, .. }),
        "expected insufficientAccessRights, got {err}"
    );
}

#[tokio::test]
async fn an_account_without_replication_rights_cannot_run_dirsync() {
    let Some(lab) = support::lab() else { return };
    let beta = &lab.beta;
    // A plain user with a password, created for this test only.
    let name = unique("plain");
    let dn = format!("CN={name},OU=ADI,{}", beta.base_dn);
    // Not containing the account name: the lab's hook enforces AD complexity, which forbids that.
    let password = "Kq7#mVt2-Plain-9x".to_owned();
    let mut admin = support::admin_session(lab, beta, &beta.dc_urls[0]).await;
    let pwd: Vec<u8> = format!("\"{password}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    admin
        .add(
            &dn,
            vec![
                attr(
                    "objectClass",
                    &["top", "person", "organizationalPerson", "user"],
                ),
                attr("sAMAccountName", &[&name]),
                attr("userAccountControl", &["512"]),
                (b"unicodePwd".to_vec(), [pwd].into()),
            ],
        )
        .await
        .unwrap();
    let mut plain =
        support::bound_session(lab, &beta.dc_urls[0], &dn, &Secret::new(password)).await;
    let result = plain.probe_change_tracking_rights(&beta.base_dn).await;
    let sees_deletions = plain.can_read_deleted_objects(&beta.base_dn).await;
    // Ordinary reads still work for it.
    let found = plain
        .search(
            &beta.base_dn,
            Scope::Base,
            "(objectClass=*)",
            &["objectGUID"],
            "read",
        )
        .await;
    admin.delete(&dn).await.unwrap();
    let err = result.expect_err("an unprivileged account must not pass the change-tracking probe");
    assert!(
        matches!(err, DirectoryError::Refused { rc: 50, .. }),
        "expected insufficientAccessRights, got {err}"
    );
    assert!(
        err.to_string().contains("Replicating Directory Changes"),
        "the error names the missing right: {err}"
    );
    assert!(found.is_ok());
    assert!(
        !sees_deletions.unwrap(),
        "a plain account must not read CN=Deleted Objects"
    );
    let mut svc =
        support::bound_session(lab, &beta.dc_urls[0], &beta.bind_dn, &beta.bind_password).await;
    assert!(
        svc.can_read_deleted_objects(&beta.base_dn).await.unwrap(),
        "the lab's service account reads CN=Deleted Objects"
    );
}
