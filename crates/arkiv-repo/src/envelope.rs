//! The sealed envelope around every metadata file (config, index files,
//! snapshots): a small plaintext header that says what the file is and which
//! format version wrote it, then the encrypted, usually compressed, payload.
//!
//! The version sits outside the ciphertext so a newer repository is refused
//! with a clear message before any key is tried; it is also bound into the
//! AEAD as associated data, so editing it breaks authentication.

use crate::crypto::{offset_nonce, random_salt, MasterKey, SALT_LEN};
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"ARKV";
/// The repository format this code writes and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;
/// The envelope version of index files that name delta blobs: builds that
/// predate deltas would prune their bases, so they must refuse such index
/// files rather than read them as version 1 (repository-format.md §15).
pub const DELTA_INDEX_VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8 + SALT_LEN;
const FLAG_ZSTD: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EnvelopeKind {
    Config = 1,
    Index = 2,
    Snapshot = 3,
    Deletion = 4,
    Lock = 5,
    Archived = 6,
}

impl EnvelopeKind {
    fn name(self) -> &'static str {
        match self {
            EnvelopeKind::Config => "config",
            EnvelopeKind::Index => "index",
            EnvelopeKind::Snapshot => "snapshot",
            EnvelopeKind::Deletion => "deletion record",
            EnvelopeKind::Lock => "lock",
            EnvelopeKind::Archived => "archived file",
        }
    }
}

/// Reads only the plaintext header: magic, kind and format version.
pub fn peek_version(object: &str, bytes: &[u8], kind: EnvelopeKind) -> Result<u8> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(Error::corrupt(object, "not an Arkiv file (bad magic)"));
    }
    if bytes[4] != kind as u8 {
        return Err(Error::corrupt(object, format!("holds kind {} where a {} was expected", bytes[4], kind.name())));
    }
    let version = bytes[5];
    let newest = if kind == EnvelopeKind::Index { DELTA_INDEX_VERSION } else { FORMAT_VERSION };
    if version > newest {
        return Err(Error::UnsupportedVersion {
            object: object.to_string(),
            found: version as u32,
            supported: newest as u32,
        });
    }
    Ok(version)
}

pub fn seal(key: &MasterKey, kind: EnvelopeKind, payload: &[u8], zstd_level: i32) -> Vec<u8> {
    seal_version(key, kind, FORMAT_VERSION, payload, zstd_level)
}

/// [`seal`] with the version byte given.
pub fn seal_version(key: &MasterKey, kind: EnvelopeKind, version: u8, payload: &[u8], zstd_level: i32) -> Vec<u8> {
    let compressed = zstd::bulk::compress(payload, zstd_level).ok().filter(|c| c.len() < payload.len());
    let (flags, body) = match &compressed {
        Some(c) => (FLAG_ZSTD, c.as_slice()),
        None => (0, payload),
    };
    let salt = random_salt();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[kind as u8, version, flags, 0]);
    out.extend_from_slice(&salt);
    let start = out.len();
    out.extend_from_slice(body);
    let aad: [u8; 8] = out[..8].try_into().unwrap();
    key.file_cipher(&salt).seal_tail(&offset_nonce(0), &aad, &mut out, start);
    out
}

/// Authenticates and decrypts an envelope; `object` names it in errors.
pub fn open(key: &MasterKey, object: &str, bytes: &[u8], kind: EnvelopeKind) -> Result<Vec<u8>> {
    peek_version(object, bytes, kind)?;
    let salt: [u8; SALT_LEN] = bytes[8..HEADER_LEN].try_into().unwrap();
    let body = key.file_cipher(&salt).open(&offset_nonce(0), &bytes[..8], &bytes[HEADER_LEN..]).ok_or_else(|| {
        Error::corrupt(object, "authentication failed (modified, truncated, or written with another key)")
    })?;
    if bytes[6] & FLAG_ZSTD != 0 {
        zstd::stream::decode_all(&body[..]).map_err(|e| Error::corrupt(object, format!("decompression failed: {e}")))
    } else {
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn envelopes_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..5000), repeat in 1usize..4) {
            let k = MasterKey::generate();
            let payload = payload.repeat(repeat);
            let sealed = seal(&k, EnvelopeKind::Index, &payload, 3);
            prop_assert_eq!(open(&k, "x", &sealed, EnvelopeKind::Index).unwrap(), payload);
        }
    }

    #[test]
    fn newer_version_is_refused_before_decryption() {
        let k = MasterKey::generate();
        let mut sealed = seal(&k, EnvelopeKind::Config, b"{}", 3);
        sealed[5] = FORMAT_VERSION + 1;
        let err = open(&k, "config", &sealed, EnvelopeKind::Config).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { found: 2, .. }), "{err}");
    }

    #[test]
    fn wrong_kind_and_tampering_are_refused() {
        let k = MasterKey::generate();
        let sealed = seal(&k, EnvelopeKind::Snapshot, b"{\"a\":1}", 3);
        assert!(open(&k, "s", &sealed, EnvelopeKind::Index).is_err());
        let mut t = sealed.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(open(&k, "s", &t, EnvelopeKind::Snapshot).is_err());
        assert!(open(&MasterKey::generate(), "s", &sealed, EnvelopeKind::Snapshot).is_err());
    }
}
