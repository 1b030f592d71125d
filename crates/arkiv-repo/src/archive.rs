//! Archived files: whole files kept under their own name instead of being
//! split into content-addressed blobs.
//!
//! PostgreSQL's WAL is the reason. The server asks for one segment at a
//! time by name (`restore_command %f`), segments barely deduplicate (each
//! holds new changes), and they are dropped by age when the base backups
//! that need them expire, not by reference counting. Storing each as one
//! sealed object makes fetching one GET and expiring one DELETE, and keeps
//! thousands of segments out of the index that every backup loads.
//!
//! An object is an envelope of kind `Archived` whose payload is the file's
//! bytes, then a header ([`ArchivedMeta`] as JSON), then the header's
//! length as 4 little-endian bytes. The header comes last so that a file
//! read into memory becomes the payload by appending to it: a 16 MiB WAL
//! segment is never copied before it is compressed. The header carries the
//! file's BLAKE3 hash, so a second upload under the same name can be
//! compared with the first without trusting the name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::envelope::{self, EnvelopeKind};
use crate::error::{Error, Result};
use crate::repository::Repository;

/// What is known about an archived file besides its bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchivedMeta {
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the file's bytes, hex.
    pub blake3: String,
    /// When the file was last modified where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<DateTime<Utc>>,
    /// When it was stored.
    pub stored: DateTime<Utc>,
    /// Whatever the source wants to keep with it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra: serde_json::Value,
}

impl ArchivedMeta {
    pub fn new(name: &str, content: &[u8]) -> ArchivedMeta {
        ArchivedMeta {
            name: name.to_string(),
            size: content.len() as u64,
            blake3: blake3::hash(content).to_hex().to_string(),
            modified: None,
            stored: Utc::now(),
            extra: serde_json::Value::Null,
        }
    }
}

/// One archived file as a listing shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchivedEntry {
    pub name: String,
    /// Bytes stored (compressed, encrypted).
    pub stored_size: u64,
    /// When the object was written, as the storage reports it.
    pub stored_at: Option<DateTime<Utc>>,
}

/// Whether `name` can name an archived file: letters, digits, `.`, `_`
/// and `-`, up to 128 bytes — every name PostgreSQL gives a WAL file, and
/// nothing that could climb out of `archive/`.
pub fn is_archive_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(name: &str) -> Result<()> {
    if is_archive_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("'{name}' cannot name an archived file (letters, digits, '.', '_' and '-' only)")))
    }
}

/// Splits a payload into header and content (the content stays in place).
fn decode(object: &str, mut payload: Vec<u8>) -> Result<(ArchivedMeta, Vec<u8>)> {
    let bad = |why: &str| Error::corrupt(object, why.to_string());
    let total = payload.len();
    if total < 4 {
        return Err(bad("shorter than its header"));
    }
    let n = u32::from_le_bytes(payload[total - 4..].try_into().unwrap()) as usize;
    if total < 4 + n {
        return Err(bad("header runs past the start"));
    }
    let meta: ArchivedMeta =
        serde_json::from_slice(&payload[total - 4 - n..total - 4]).map_err(|e| bad(&e.to_string()))?;
    payload.truncate(total - 4 - n);
    if payload.len() as u64 != meta.size {
        return Err(bad(&format!("holds {} bytes where its header says {}", payload.len(), meta.size)));
    }
    if blake3::hash(&payload).to_hex().as_str() != meta.blake3 {
        return Err(bad("content does not match its BLAKE3 hash"));
    }
    Ok((meta, payload))
}

impl Repository {
    /// Stores `content` under `meta.name`, compressed at zstd `level`,
    /// replacing what was there. Callers that must not replace check
    /// [`Repository::archive_get`] first; the write itself is atomic on
    /// every backend.
    pub fn archive_put(&self, meta: &ArchivedMeta, content: Vec<u8>, level: i32) -> Result<()> {
        check_name(&meta.name)?;
        let mut payload = content;
        let header = serde_json::to_vec(meta).expect("archive headers serialise");
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
        let sealed = envelope::seal(self.key(), EnvelopeKind::Archived, &payload, level);
        self.backend().write(FileKind::Archive, &meta.name, sealed)
    }

    /// The archived file `name`, authenticated and checked against its
    /// hash; [`Error::NotFound`] when there is none.
    pub fn archive_get(&self, name: &str) -> Result<(ArchivedMeta, Vec<u8>)> {
        check_name(name)?;
        let bytes = self.backend().read(FileKind::Archive, name)?;
        let object = format!("archived file {name}");
        let plain = envelope::open(self.key(), &object, &bytes, EnvelopeKind::Archived)?;
        let (meta, content) = decode(&object, plain)?;
        if meta.name != name {
            return Err(Error::corrupt(&object, format!("holds '{}' (moved or renamed in storage)", meta.name)));
        }
        Ok((meta, content))
    }

    pub fn archive_exists(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        self.backend().exists(FileKind::Archive, name)
    }

    /// Every archived file, sorted by name.
    pub fn archive_list(&self) -> Result<Vec<ArchivedEntry>> {
        let mut out = self.backend().list_archive()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn archive_delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.require_full_access("deleting an archived file")?;
        self.backend().delete(FileKind::Archive, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Credential, InitOptions, KdfParams};

    fn repo(dir: &std::path::Path) -> Repository {
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        Repository::init(Backend::local(dir).unwrap(), &Credential::password("pw"), opts).unwrap()
    }

    #[test]
    fn archived_files_round_trip_and_list_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let seg = vec![7u8; 1 << 20];
        for name in ["000000010000000000000002", "000000010000000000000001", "00000002.history"] {
            r.archive_put(&ArchivedMeta::new(name, &seg), seg.clone(), 3).unwrap();
        }
        let (meta, got) = r.archive_get("000000010000000000000001").unwrap();
        assert_eq!(got, seg);
        assert_eq!(meta.size, seg.len() as u64);
        let names: Vec<String> = r.archive_list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["000000010000000000000001", "000000010000000000000002", "00000002.history"]);
        assert!(dir.path().join("archive/0000000100000000/000000010000000000000001").exists());
        assert!(matches!(r.archive_get("000000010000000000000009"), Err(Error::NotFound { .. })));
        r.archive_delete("000000010000000000000001").unwrap();
        assert!(!r.archive_exists("000000010000000000000001").unwrap());
    }

    #[test]
    fn a_moved_or_damaged_object_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        r.archive_put(&ArchivedMeta::new("000000010000000000000001", b"one"), b"one".to_vec(), 3).unwrap();
        let from = dir.path().join("archive/0000000100000000/000000010000000000000001");
        let to = dir.path().join("archive/0000000100000000/000000010000000000000003");
        std::fs::copy(&from, &to).unwrap();
        let e = r.archive_get("000000010000000000000003").unwrap_err().to_string();
        assert!(e.contains("000000010000000000000003") && e.contains("moved"), "{e}");
        let mut bytes = std::fs::read(&from).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&from, bytes).unwrap();
        let e = r.archive_get("000000010000000000000001").unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
        assert!(r.archive_put(&ArchivedMeta::new("../x", b""), Vec::new(), 3).is_err());
    }
}
