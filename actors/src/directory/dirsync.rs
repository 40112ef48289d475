//! The DirSync control (1.2.840.113556.1.4.841), encoded and decoded by hand: ldap3 has none, and
//! its built-in control parsers panic on malformed BER, so the response parser here returns `None`
//! instead.

use bytes::BytesMut;
use ldap3::asn1::{
    parse_tag, write, ASNTag, Integer, OctetString, Sequence, Tag, TagClass, Types, PL,
};
use ldap3::controls::RawControl;

pub const DIRSYNC_OID: &str = "1.2.840.113556.1.4.841";

/// Flag: return only changed values of multi-valued attributes (member;range=1-1 adds, 0-0 removes).
pub const INCREMENTAL_VALUES: u32 = 0x8000_0000;
/// Flag: return only objects the caller may read (needs no replication right, but Samba then returns 0 entries).
pub const OBJECT_SECURITY: u32 = 0x0000_0001;

#[derive(Clone, Debug, Default)]
pub struct DirSyncRequest {
    pub flags: u32,
    pub max_bytes: i32,
    pub cookie: Vec<u8>,
}

impl DirSyncRequest {
    pub fn to_control(&self) -> RawControl {
        // The flags are a 4-byte signed INTEGER on the wire: 0x80000000 must encode as 02 04 80 00 00 00,
        // so pass it sign-extended (a 5-byte encoding makes AD answer unavailableCriticalExtension).
        let value = Tag::Sequence(Sequence {
            inner: vec![
                Tag::Integer(Integer {
                    inner: self.flags as i32 as i64,
                    ..Default::default()
                }),
                Tag::Integer(Integer {
                    inner: self.max_bytes as i64,
                    ..Default::default()
                }),
                Tag::OctetString(OctetString {
                    inner: self.cookie.clone(),
                    ..Default::default()
                }),
            ],
            ..Default::default()
        })
        .into_structure();
        let mut buf = BytesMut::with_capacity(self.cookie.len() + 24);
        // Encoding into a growable buffer cannot fail.
        let _ = write::encode_into(&mut buf, value);
        RawControl {
            ctype: DIRSYNC_OID.to_owned(),
            crit: true,
            val: Some(buf.to_vec()),
        }
    }
}

/// The DirSync response control: `SEQUENCE { moreResults INTEGER, unused INTEGER, cookie OCTET STRING }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirSyncResponse {
    pub more_results: bool,
    pub cookie: Vec<u8>,
}

impl DirSyncResponse {
    pub fn from_control(control: &RawControl) -> Option<Self> {
        if control.ctype != DIRSYNC_OID {
            return None;
        }
        let bytes = control.val.as_deref()?;
        let (_, tag) = parse_tag(bytes).ok()?;
        if tag.class != TagClass::Universal || tag.id != Types::Sequence as u64 {
            return None;
        }
        let PL::C(items) = tag.payload else {
            return None;
        };
        let [more, _unused, cookie] = items.as_slice() else {
            return None;
        };
        let more_results = match &more.payload {
            PL::P(b) if more.id == Types::Integer as u64 => b.iter().any(|x| *x != 0),
            _ => return None,
        };
        let cookie = match &cookie.payload {
            PL::P(b) if cookie.id == Types::OctetString as u64 => b.clone(),
            _ => return None,
        };
        Some(DirSyncResponse {
            more_results,
            cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_values_flag_encodes_as_four_byte_integer() {
        let ctrl = DirSyncRequest {
            flags: INCREMENTAL_VALUES,
            max_bytes: 0,
            cookie: vec![],
        }
        .to_control();
        let val = ctrl.val.unwrap();
        // 30 LL | 02 04 80 00 00 00 | 02 01 00 | 04 00
        assert_eq!(
            val,
            vec![0x30, 0x0b, 0x02, 0x04, 0x80, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x04, 0x00]
        );
        assert!(ctrl.crit);
    }

    #[test]
    fn response_parses_and_malformed_ber_is_rejected_without_panic() {
        let good = RawControl {
            ctype: DIRSYNC_OID.into(),
            crit: false,
            val: Some(vec![
                0x30, 0x0b, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x03, 0xaa, 0xbb, 0xcc,
            ]),
        };
        assert_eq!(
            DirSyncResponse::from_control(&good),
            Some(DirSyncResponse {
                more_results: true,
                cookie: vec![0xaa, 0xbb, 0xcc]
            })
        );
        let mut tried = 1;
        for bad in [
            vec![],
            vec![0x30],
            vec![0x30, 0x03, 0x02, 0x01, 0x01],
            vec![0x04, 0x00],
            vec![0x30, 0x80, 0xff],
            // a length claiming far more than there is
            vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x02, 0x01, 0x01],
            // cookie given as an INTEGER
            vec![
                0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x02, 0x01, 0x05,
            ],
            // moreResults given as an OCTET STRING
            vec![
                0x30, 0x09, 0x04, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x01, 0xaa,
            ],
            // four items
            vec![
                0x30, 0x0c, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x01, 0xaa, 0x02, 0x01, 0x00,
            ],
            // two items
            vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x04, 0x01, 0xaa],
            // a constructed INTEGER
            vec![
                0x30, 0x0b, 0x22, 0x03, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x01, 0xaa,
            ],
            // a SET instead of a SEQUENCE
            vec![
                0x31, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x01, 0xaa,
            ],
            // an application-class SEQUENCE
            vec![
                0x70, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x04, 0x01, 0xaa,
            ],
            // garbage
            (0u8..=255).collect(),
            vec![0xff; 64],
        ] {
            tried += 1;
            let ctrl = RawControl {
                ctype: DIRSYNC_OID.into(),
                crit: false,
                val: Some(bad),
            };
            assert_eq!(DirSyncResponse::from_control(&ctrl), None, "{:?}", ctrl.val);
        }
        // Not the DirSync control, or no value at all.
        for ctrl in [
            RawControl {
                ctype: "1.2.840.113556.1.4.319".into(),
                crit: false,
                val: good.val.clone(),
            },
            RawControl {
                ctype: DIRSYNC_OID.into(),
                crit: true,
                val: None,
            },
        ] {
            assert_eq!(DirSyncResponse::from_control(&ctrl), None);
            tried += 1;
        }
        eprintln!("DirSync controls tried: {tried}");
    }
}
