//! API bearer tokens: random, shown once, stored only as a hash.
//!
//! A token is 32 random bytes, so a plain SHA-256 of it is as strong as a
//! slow password hash would be and lets every request be checked in
//! microseconds; the prefix makes a leaked token easy to find by scanners.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "arkiv_";

/// The names tokens may have (they appear in the audit log and in URLs).
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err("a token name is 1-64 letters, digits and -_.@")
    }
}

/// A new token.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// The hash the catalog keeps.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_unique_and_hashed() {
        let (a, b) = (super::generate(), super::generate());
        assert_ne!(a, b);
        assert!(a.starts_with("arkiv_") && a.len() == 6 + 64);
        assert_eq!(super::hash(&a).len(), 64);
        assert_ne!(super::hash(&a), a);
    }
}
