//! objectGUID: 16 bytes on the wire, shown in AD's canonical string form (the first three fields
//! little-endian), e.g. `6f9619ff-8b86-d011-b42d-00cf4fc964ff` for bytes `ff 19 96 6f 86 8b 11 d0 …`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectGuid(pub [u8; 16]);

#[derive(Debug, thiserror::Error)]
pub enum GuidError {
    #[error("objectGUID must be 16 bytes, got {0}")]
    Length(usize),
    #[error("{0:?} is not a GUID string (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    Text(String),
}

impl ObjectGuid {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GuidError> {
        let array: [u8; 16] = bytes
            .try_into()
            .map_err(|_| GuidError::Length(bytes.len()))?;
        Ok(ObjectGuid(array))
    }

    /// The value for an LDAP filter `(objectGUID=…)`: every byte escaped as `\xx`.
    pub fn ldap_filter_value(&self) -> String {
        self.0.iter().map(|b| format!("\\{b:02x}")).collect()
    }
}

impl fmt::Display for ObjectGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for ObjectGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectGuid({self})")
    }
}

impl FromStr for ObjectGuid {
    type Err = GuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || s.len() != 36 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(GuidError::Text(s.to_owned()));
        }
        let mut t = [0u8; 16];
        for (i, byte) in t.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| GuidError::Text(s.to_owned()))?;
        }
        // Text order → wire order: first three fields are little-endian on the wire.
        let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut wire = [0u8; 16];
        for (wire_pos, text_pos) in order.iter().enumerate() {
            wire[wire_pos] = t[*text_pos];
        }
        Ok(ObjectGuid(wire))
    }
}

impl Serialize for ObjectGuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectGuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_format_in_ad_order_and_round_trip() {
        let wire = [
            0xff, 0x19, 0x96, 0x6f, 0x86, 0x8b, 0x11, 0xd0, 0xb4, 0x2d, 0x00, 0xcf, 0x4f, 0xc9,
            0x64, 0xff,
        ];
        let g = ObjectGuid::from_bytes(&wire).unwrap();
        assert_eq!(g.to_string(), "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
        assert_eq!(
            "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
                .parse::<ObjectGuid>()
                .unwrap(),
            g
        );
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            "\"6f9619ff-8b86-d011-b42d-00cf4fc964ff\""
        );
        assert!(g.ldap_filter_value().starts_with("\\ff\\19\\96\\6f"));
        assert!(ObjectGuid::from_bytes(&wire[..15]).is_err());
        assert!("not-a-guid".parse::<ObjectGuid>().is_err());
    }
}
