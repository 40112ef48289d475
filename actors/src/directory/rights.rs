//! What the bound account may do where forestsync writes, worked out without writing: the account's
//! token (its objectSid, its groups from `tokenGroups`, Everyone and Authenticated Users) held
//! against an object's DACL (read with the SD flags control). `check` uses it to name each missing
//! right and the grant that fixes it.
//!
//! The evaluation is the DACL's, in order (explicit denies come first in a canonical DACL): the first
//! ACE for one of the token's SIDs that covers the right decides. It does not see privileges, the
//! owner's implicit rights, or rights of groups the token cannot list; a "missing" verdict is
//! therefore "no ACE grants it", which is what an administrator has to fix.

use ldap3::controls::RawControl;
use ldap3::Scope;

use super::{is_reference, DcSession, DirectoryError};

/// DS-Replication-Get-Changes ("Replicating Directory Changes"), the right DirSync needs.
pub const GUID_REPL_GET_CHANGES: &str = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2";
/// User-Force-Change-Password ("Reset Password").
pub const GUID_RESET_PASSWORD: &str = "00299570-246d-11d0-a768-00aa006e0529";
pub const GUID_CLASS_USER: &str = "bf967aba-0de6-11d0-a285-00aa003049e2";
pub const GUID_CLASS_GROUP: &str = "bf967a9c-0de6-11d0-a285-00aa003049e2";

/// ADS access mask bits.
pub const CREATE_CHILD: u32 = 0x1;
pub const DELETE_CHILD: u32 = 0x2;
pub const WRITE_PROPERTY: u32 = 0x20;
pub const CONTROL_ACCESS: u32 = 0x100;
const GENERIC_ALL: u32 = 0x1000_0000;
const GENERIC_WRITE: u32 = 0x4000_0000;

const CONTAINER_INHERIT: u8 = 0x02;
const INHERIT_ONLY: u8 = 0x08;

/// Everyone (S-1-1-0) and Authenticated Users (S-1-5-11): in every bound account's token.
const WELL_KNOWN: [&[u8]; 2] = [
    &[1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    &[1, 1, 0, 0, 0, 0, 0, 5, 11, 0, 0, 0],
];

/// The SIDs an account acts with.
#[derive(Clone, Debug)]
pub struct Token {
    /// The account's own SID, as `S-1-5-…` (for the grants `check` prints).
    pub sid: String,
    /// The account's sAMAccountName and userPrincipalName, when readable.
    pub sam: Option<String>,
    pub upn: Option<String>,
    sids: Vec<Vec<u8>>,
    /// Whether `tokenGroups` could be read (else only the primary group is known).
    pub groups_known: bool,
}

impl Token {
    /// How dsacls names the account: the UPN, else `<DOMAIN>\sAMAccountName`.
    pub fn trustee(&self) -> String {
        match (&self.upn, &self.sam) {
            (Some(upn), _) => upn.clone(),
            (None, Some(sam)) => format!("<DOMAIN>\\{sam}"),
            (None, None) => self.sid.clone(),
        }
    }
}

/// One access control entry of a DACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ace {
    pub allow: bool,
    pub flags: u8,
    pub mask: u32,
    pub object_type: Option<String>,
    pub inherited_object_type: Option<String>,
    pub sid: Vec<u8>,
}

/// Where a right is needed.
#[derive(Clone, Copy, Debug)]
pub enum On<'a> {
    /// The object whose DACL it is (e.g. create a child in the OU).
    ThisObject,
    /// An object of this class (schema GUID) created below it later (the ACEs it would inherit).
    NewChild(&'a str),
}

/// Whether the DACL grants `right` (one mask bit; with `object_type` for a class, a property or an
/// extended right, `None` for the whole object) to `token` on `on`.
pub fn granted(
    dacl: &[Ace],
    token: &Token,
    on: On<'_>,
    right: u32,
    object_type: Option<&str>,
) -> bool {
    for ace in dacl {
        let applies = match on {
            On::ThisObject => ace.flags & INHERIT_ONLY == 0 && ace.inherited_object_type.is_none(),
            On::NewChild(class) => {
                ace.flags & CONTAINER_INHERIT != 0
                    && ace
                        .inherited_object_type
                        .as_deref()
                        .is_none_or(|t| t.eq_ignore_ascii_case(class))
            }
        };
        if !applies || !token.sids.contains(&ace.sid) {
            continue;
        }
        let mut mask = ace.mask;
        if mask & GENERIC_ALL != 0 {
            mask |= CREATE_CHILD | DELETE_CHILD | WRITE_PROPERTY | CONTROL_ACCESS;
        }
        if mask & GENERIC_WRITE != 0 {
            mask |= WRITE_PROPERTY;
        }
        if mask & right == 0 {
            continue;
        }
        let covers = match (&ace.object_type, object_type) {
            (None, _) => true,
            (Some(a), Some(want)) => a.eq_ignore_ascii_case(want),
            // An ACE for one class or property does not grant the right on the whole object.
            (Some(_), None) => false,
        };
        if covers {
            return ace.allow;
        }
    }
    false
}

/// `S-1-5-21-…` from a binary SID.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    let count = *b.get(1)? as usize;
    if b.len() != 8 + 4 * count {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
    let mut s = format!("S-{}-{authority}", b[0]);
    for i in 0..count {
        let sub = u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().ok()?);
        s.push_str(&format!("-{sub}"));
    }
    Some(s)
}

fn guid_to_string(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// The DACL of a self-relative security descriptor (empty when it has none).
pub fn parse_dacl(sd: &[u8]) -> Result<Vec<Ace>, String> {
    let u32_at = |at: usize| -> Result<u32, String> {
        sd.get(at..at.saturating_add(4))
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("security descriptor truncated at {at}"))
    };
    let u16_at = |at: usize| -> Result<u16, String> {
        sd.get(at..at.saturating_add(2))
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
            .ok_or_else(|| format!("security descriptor truncated at {at}"))
    };
    let dacl = u32_at(16)? as usize;
    if dacl == 0 {
        return Ok(Vec::new());
    }
    let count = u16_at(dacl + 4)? as usize;
    let mut at = dacl + 8;
    let mut aces = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = *sd.get(at).ok_or("ACE truncated")?;
        let flags = *sd.get(at + 1).ok_or("ACE truncated")?;
        let size = u16_at(at + 2)? as usize;
        let end = at + size;
        if size < 8 || end > sd.len() {
            return Err(format!("ACE at {at} has a bad size {size}"));
        }
        let mask = u32_at(at + 4)?;
        let mut p = at + 8;
        let (allow, object) = match kind {
            0x00 => (true, false),
            0x01 => (false, false),
            0x05 => (true, true),
            0x06 => (false, true),
            _ => {
                // audit, callback and other kinds grant nothing here
                at = end;
                continue;
            }
        };
        let (mut object_type, mut inherited_object_type) = (None, None);
        if object {
            let present = u32_at(p)?;
            p += 4;
            if present & 1 != 0 {
                object_type = Some(guid_to_string(sd.get(p..p + 16).ok_or("GUID truncated")?));
                p += 16;
            }
            if present & 2 != 0 {
                inherited_object_type =
                    Some(guid_to_string(sd.get(p..p + 16).ok_or("GUID truncated")?));
                p += 16;
            }
        }
        aces.push(Ace {
            allow,
            flags,
            mask,
            object_type,
            inherited_object_type,
            sid: sd.get(p..end).ok_or("SID truncated")?.to_vec(),
        });
        at = end;
    }
    Ok(aces)
}

impl DcSession {
    /// The bound account's token: objectSid and tokenGroups of `bind_dn` (tokenGroups may be
    /// unreadable; then Domain Users, the usual primary group, stands in).
    pub async fn token(&mut self, bind_dn: &str) -> Result<Token, DirectoryError> {
        let entries = self
            .search(
                bind_dn,
                Scope::Base,
                "(objectClass=*)",
                &[
                    "objectSid",
                    "tokenGroups",
                    "sAMAccountName",
                    "userPrincipalName",
                ],
                "token read",
            )
            .await?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| DirectoryError::Malformed {
                url: self.endpoint.url.clone(),
                detail: format!("{bind_dn} not found"),
            })?;
        let values = |name: &str| -> Vec<Vec<u8>> {
            let text = entry
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.iter().map(|s| s.as_bytes().to_vec()));
            let bin = entry
                .bin_attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.iter().cloned());
            text.chain(bin).collect()
        };
        let own =
            values("objectSid")
                .into_iter()
                .next()
                .ok_or_else(|| DirectoryError::Malformed {
                    url: self.endpoint.url.clone(),
                    detail: format!("{bind_dn} has no readable objectSid"),
                })?;
        let sid = sid_to_string(&own).ok_or_else(|| DirectoryError::Malformed {
            url: self.endpoint.url.clone(),
            detail: "objectSid is not a SID".into(),
        })?;
        let groups = values("tokenGroups");
        let groups_known = !groups.is_empty();
        let mut sids = vec![own.clone()];
        if groups_known {
            sids.extend(groups);
        } else if own.len() >= 12 {
            // Domain Users: the domain SID + RID 513.
            let mut domain_users = own.clone();
            let n = domain_users.len();
            domain_users[n - 4..].copy_from_slice(&513u32.to_le_bytes());
            sids.push(domain_users);
        }
        sids.extend(WELL_KNOWN.iter().map(|s| s.to_vec()));
        let text = |name: &str| {
            entry
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.first().cloned())
        };
        Ok(Token {
            sid,
            sam: text("sAMAccountName"),
            upn: text("userPrincipalName"),
            sids,
            groups_known,
        })
    }

    /// The DACL of `dn` (the SD flags control asks for the DACL only, which needs Read Control).
    pub async fn dacl(&mut self, dn: &str) -> Result<Vec<Ace>, DirectoryError> {
        // LDAP_SERVER_SD_FLAGS_OID, value SEQUENCE { INTEGER 4 } = DACL_SECURITY_INFORMATION
        let sd_flags = RawControl {
            ctype: "1.2.840.113556.1.4.801".into(),
            crit: true,
            val: Some(vec![0x30, 0x03, 0x02, 0x01, 0x04]),
        };
        let result = self
            .ldap
            .with_timeout(self.timeouts.operation)
            .with_controls(sd_flags)
            .search(
                dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["nTSecurityDescriptor"],
            )
            .await
            .map_err(|e| DirectoryError::from_ldap(&self.endpoint.url, "DACL read", e))?;
        if result.1.rc != 0 {
            return Err(DirectoryError::from_result(
                &self.endpoint.url,
                "DACL read",
                dn,
                result.1.rc,
                &result.1.text,
            ));
        }
        let sd = result
            .0
            .into_iter()
            .filter(|e| !is_reference(e))
            .map(ldap3::SearchEntry::construct)
            .find_map(|e| {
                e.bin_attrs
                    .into_iter()
                    .chain(
                        e.attrs
                            .into_iter()
                            .map(|(k, v)| (k, v.into_iter().map(String::into_bytes).collect())),
                    )
                    .find(|(k, _)| k.eq_ignore_ascii_case("nTSecurityDescriptor"))
                    .and_then(|(_, v)| v.into_iter().next())
            })
            .ok_or_else(|| DirectoryError::Malformed {
                url: self.endpoint.url.clone(),
                detail: format!("no readable nTSecurityDescriptor on {dn} (Read Control missing?)"),
            })?;
        parse_dacl(&sd).map_err(|detail| DirectoryError::Malformed {
            url: self.endpoint.url.clone(),
            detail: format!("the security descriptor of {dn}: {detail}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> Vec<u8> {
        let parts: Vec<u64> = s[2..].split('-').map(|p| p.parse().unwrap()).collect();
        let mut b = vec![parts[0] as u8, (parts.len() - 2) as u8];
        b.extend_from_slice(&parts[1].to_be_bytes()[2..]);
        for sub in &parts[2..] {
            b.extend_from_slice(&(*sub as u32).to_le_bytes());
        }
        b
    }

    fn guid(s: &str) -> [u8; 16] {
        let h: Vec<u8> = s
            .replace('-', "")
            .as_bytes()
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect();
        [
            h[3], h[2], h[1], h[0], h[5], h[4], h[7], h[6], h[8], h[9], h[10], h[11], h[12], h[13],
            h[14], h[15],
        ]
    }

    fn object_ace(
        allow: bool,
        flags: u8,
        mask: u32,
        ot: Option<&str>,
        iot: Option<&str>,
        who: &str,
    ) -> Vec<u8> {
        let mut body = mask.to_le_bytes().to_vec();
        let present = u32::from(ot.is_some()) | (u32::from(iot.is_some()) << 1);
        body.extend_from_slice(&present.to_le_bytes());
        for g in [ot, iot].into_iter().flatten() {
            body.extend_from_slice(&guid(g));
        }
        body.extend_from_slice(&sid(who));
        let mut ace = vec![if allow { 5 } else { 6 }, flags];
        ace.extend_from_slice(&((body.len() + 4) as u16).to_le_bytes());
        ace.extend_from_slice(&body);
        ace
    }

    fn sd(aces: &[Vec<u8>]) -> Vec<u8> {
        let mut sd = vec![1, 0, 0x04, 0x80];
        sd.extend_from_slice(&[0; 12]);
        sd.extend_from_slice(&20u32.to_le_bytes());
        let len: usize = 8 + aces.iter().map(Vec::len).sum::<usize>();
        sd.extend_from_slice(&[4, 0]);
        sd.extend_from_slice(&(len as u16).to_le_bytes());
        sd.extend_from_slice(&(aces.len() as u16).to_le_bytes());
        sd.extend_from_slice(&[0, 0]);
        for a in aces {
            sd.extend_from_slice(a);
        }
        sd
    }

    fn token(own: &str) -> Token {
        Token {
            sid: own.into(),
            sam: None,
            upn: None,
            sids: vec![sid(own)],
            groups_known: true,
        }
    }

    #[test]
    fn sids_and_guids_round_trip() {
        let s = "S-1-5-21-1004336348-1177238915-682003330-1103";
        assert_eq!(sid_to_string(&sid(s)).as_deref(), Some(s));
        assert_eq!(guid_to_string(&guid(GUID_CLASS_USER)), GUID_CLASS_USER);
    }

    #[test]
    fn the_lab_grants_are_read_as_the_rights_check_names() {
        let svc = "S-1-5-21-1-2-3-1105";
        let dacl = parse_dacl(&sd(&[
            object_ace(
                true,
                CONTAINER_INHERIT,
                CREATE_CHILD | DELETE_CHILD,
                Some(GUID_CLASS_USER),
                None,
                svc,
            ),
            object_ace(
                true,
                CONTAINER_INHERIT | INHERIT_ONLY,
                WRITE_PROPERTY,
                None,
                Some(GUID_CLASS_USER),
                svc,
            ),
            object_ace(
                true,
                CONTAINER_INHERIT,
                CONTROL_ACCESS,
                Some(GUID_RESET_PASSWORD),
                Some(GUID_CLASS_USER),
                svc,
            ),
        ]))
        .unwrap();
        assert_eq!(dacl.len(), 3);
        let t = token(svc);
        assert!(granted(
            &dacl,
            &t,
            On::ThisObject,
            CREATE_CHILD,
            Some(GUID_CLASS_USER)
        ));
        assert!(!granted(
            &dacl,
            &t,
            On::ThisObject,
            CREATE_CHILD,
            Some(GUID_CLASS_GROUP)
        ));
        assert!(granted(
            &dacl,
            &t,
            On::NewChild(GUID_CLASS_USER),
            WRITE_PROPERTY,
            None
        ));
        assert!(!granted(
            &dacl,
            &t,
            On::NewChild(GUID_CLASS_GROUP),
            WRITE_PROPERTY,
            None
        ));
        assert!(
            !granted(&dacl, &t, On::ThisObject, WRITE_PROPERTY, None),
            "inherit-only"
        );
        assert!(granted(
            &dacl,
            &t,
            On::NewChild(GUID_CLASS_USER),
            CONTROL_ACCESS,
            Some(GUID_RESET_PASSWORD)
        ));
        // Someone else gets nothing from these ACEs.
        let other = token("S-1-5-21-1-2-3-2000");
        assert!(!granted(
            &dacl,
            &other,
            On::ThisObject,
            CREATE_CHILD,
            Some(GUID_CLASS_USER)
        ));
    }

    #[test]
    fn a_deny_before_the_allow_wins() {
        let svc = "S-1-5-21-1-2-3-1105";
        let dacl = parse_dacl(&sd(&[
            object_ace(false, 0, CREATE_CHILD, Some(GUID_CLASS_USER), None, svc),
            object_ace(true, 0, CREATE_CHILD, None, None, svc),
        ]))
        .unwrap();
        let t = token(svc);
        assert!(!granted(
            &dacl,
            &t,
            On::ThisObject,
            CREATE_CHILD,
            Some(GUID_CLASS_USER)
        ));
        assert!(granted(
            &dacl,
            &t,
            On::ThisObject,
            CREATE_CHILD,
            Some(GUID_CLASS_GROUP)
        ));
    }
}
