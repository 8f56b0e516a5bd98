//! The Sofia password hash ("XMMD5") and the login encryptions in use.

use md5::{Digest, Md5};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `d = MD5(password)`; each of the 8 output characters is
/// `ALPHABET[(d[2i] + d[2i+1]) % 62]`.
pub fn sofia_hash(password: &str) -> String {
    let d = Md5::digest(password.as_bytes());
    d.chunks_exact(2).map(|p| ALPHABET[(p[0] as usize + p[1] as usize) % 62] as char).collect()
}

/// `EncryptType` of a login: how `PassWord` is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// The Sofia hash (almost every device and client).
    Md5,
    /// The plain password (some old firmware, some LoginTypes).
    None,
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Md5 => "MD5",
            Encryption::None => "NONE",
        }
    }

    /// Parses `EncryptType`, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Encryption::Md5)
        } else if s.eq_ignore_ascii_case("NONE") || s.is_empty() {
            Some(Encryption::None)
        } else {
            None
        }
    }

    /// What goes into `PassWord` for this encryption.
    pub fn encode(self, password: &str) -> String {
        match self {
            Encryption::Md5 => sofia_hash(password),
            Encryption::None => password.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_the_notes() {
        assert_eq!(sofia_hash(""), "tlJwpbo6");
        assert_eq!(sofia_hash("tluafed"), "OxhlwSG8");
        assert_eq!(sofia_hash("admin"), "6QNMIQGe");
    }

    #[test]
    fn encryption_names() {
        assert_eq!(Encryption::parse("md5"), Some(Encryption::Md5));
        assert_eq!(Encryption::parse("NONE"), Some(Encryption::None));
        assert_eq!(Encryption::parse("RSA"), None);
        assert_eq!(Encryption::None.encode("pw"), "pw");
    }
}
