//! Key slots: the master key wrapped by a password (Argon2id) or a key file.
//!
//! Slots are the only plaintext JSON in a repository (envelope headers are
//! plaintext too, but binary). Adding, removing or changing a password rewrites one small slot
//! file and never touches data: every slot wraps the same master key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{keyfile_kek, random_bytes, random_salt, MasterKey, SALT_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

/// Format of the slot file itself.
pub const SLOT_FORMAT: u32 = 1;

/// What unlocks a repository.
pub enum Credential {
    Password(Zeroizing<String>),
    /// The 32 secret bytes read from a key file.
    KeyFile(Zeroizing<Vec<u8>>),
}

impl Credential {
    pub fn password(p: impl Into<String>) -> Credential {
        Credential::Password(Zeroizing::new(p.into()))
    }

    /// Reads a key file: 64 hex digits, surrounding white space ignored.
    pub fn from_key_file(path: &std::path::Path) -> Result<Credential> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?);
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut secret[..])
            .map_err(|_| Error::Invalid(format!("{}: a key file holds 64 hex digits", path.display())))?;
        Ok(Credential::KeyFile(secret))
    }

    /// A fresh key file's contents.
    pub fn new_key_file_text() -> (Credential, String) {
        let secret: [u8; 32] = random_bytes();
        let text = format!("{}\n", hex::encode(secret));
        (Credential::KeyFile(Zeroizing::new(secret.to_vec())), text)
    }

    fn kind(&self) -> SlotKind {
        match self {
            Credential::Password(_) => SlotKind::Password,
            Credential::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    Password,
    KeyFile,
}

/// Argon2id cost, paid on every `open`. The default, 32 MiB and 4 passes,
/// is as memory-hard as restic's scrypt default (32 MiB) with more passes,
/// and keeps the key derivation from dominating the peak memory of small
/// commands. RFC 9106's 64 MiB profile is one flag away
/// (`--argon2-memory-kib 65536`) for who prefers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { memory_kib: 32 * 1024, iterations: 4, parallelism: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum Kdf {
    Argon2id {
        #[serde(flatten)]
        params: KdfParams,
        salt: String,
    },
    HkdfSha256 {
        salt: String,
    },
}

/// One `keys/<id>` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    pub format: u32,
    /// The repository this slot belongs to; checked against the config.
    pub repository: Id,
    pub kind: SlotKind,
    pub created: DateTime<Utc>,
    pub host: String,
    pub username: String,
    pub kdf: Kdf,
    /// Base64 of the 12-byte AES-GCM nonce.
    pub nonce: String,
    /// Base64 of AES-256-GCM(KEK, nonce, master key, aad = repository id,
    /// followed by `append-only` for an append-only slot).
    pub wrapped: String,
    /// The slot may add snapshots but not forget, prune or manage keys.
    /// Bound into the wrapping's associated data: flipping it in the file
    /// makes the slot fail to open rather than gain rights.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append_only: bool,
}

/// Associated data of a slot's wrapped key.
fn slot_aad(repository: &Id, append_only: bool) -> Vec<u8> {
    let mut aad = repository.0.to_vec();
    if append_only {
        aad.extend_from_slice(b"append-only");
    }
    aad
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn unb64(slot: &str, field: &str, s: &str) -> Result<Vec<u8>> {
    B64.decode(s).map_err(|_| Error::KeySlot { slot: slot.into(), reason: format!("{field} is not base64") })
}

/// Bounds on Argon2 costs read from a slot file, so a planted slot cannot
/// make `open` allocate without limit.
const MAX_MEMORY_KIB: u32 = 4 << 20;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

fn argon2_kek(password: &str, salt: &[u8], p: KdfParams, slot: &str) -> Result<Zeroizing<[u8; 32]>> {
    if p.memory_kib > MAX_MEMORY_KIB || p.iterations > MAX_ITERATIONS || p.parallelism > MAX_PARALLELISM {
        return Err(Error::KeySlot {
            slot: slot.into(),
            reason: format!("Argon2 costs {p:?} exceed the limits this arkiv accepts"),
        });
    }
    if salt.len() != SALT_LEN {
        return Err(Error::KeySlot { slot: slot.into(), reason: "salt must be 32 bytes".into() });
    }
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::KeySlot { slot: slot.into(), reason: format!("Argon2 parameters: {e}") })?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out[..])
        .map_err(|e| Error::KeySlot { slot: slot.into(), reason: format!("Argon2: {e}") })?;
    Ok(out)
}

impl KeySlot {
    /// Wraps `master` for `cred`.
    pub fn create(master: &MasterKey, repository: Id, cred: &Credential, params: KdfParams) -> Result<KeySlot> {
        KeySlot::create_with(master, repository, cred, params, false)
    }

    /// Wraps `master` for `cred`, as an append-only slot if asked.
    pub fn create_with(
        master: &MasterKey,
        repository: Id,
        cred: &Credential,
        params: KdfParams,
        append_only: bool,
    ) -> Result<KeySlot> {
        let salt = random_salt();
        let (kdf, kek) = match cred {
            Credential::Password(p) => {
                let kek = argon2_kek(p, &salt, params, "new")?;
                (Kdf::Argon2id { params, salt: b64(&salt) }, kek)
            }
            Credential::KeyFile(secret) => {
                (Kdf::HkdfSha256 { salt: b64(&salt) }, Zeroizing::new(keyfile_kek(secret, &salt)))
            }
        };
        let nonce: [u8; 12] = random_bytes();
        let cipher = Aes256Gcm::new_from_slice(&kek[..]).expect("32-byte key");
        let master_bytes = Zeroizing::new(master.to_bytes());
        let wrapped = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload { msg: &master_bytes[..], aad: &slot_aad(&repository, append_only) },
            )
            .expect("wrapping 96 bytes cannot fail");
        Ok(KeySlot {
            format: SLOT_FORMAT,
            repository,
            kind: cred.kind(),
            created: Utc::now(),
            host: crate::snapshot::hostname(),
            username: crate::snapshot::username(),
            kdf,
            nonce: b64(&nonce),
            wrapped: b64(&wrapped),
            append_only,
        })
    }

    /// Unwraps the master key; `Ok(None)` when the credential is not this
    /// slot's (wrong password or key file).
    pub fn unwrap_key(&self, slot: &str, cred: &Credential) -> Result<Option<MasterKey>> {
        if self.format > SLOT_FORMAT {
            return Err(Error::UnsupportedVersion {
                object: format!("keys/{slot}"),
                found: self.format,
                supported: SLOT_FORMAT,
            });
        }
        if self.kind != cred.kind() {
            return Ok(None);
        }
        let kek = match (&self.kdf, cred) {
            (Kdf::Argon2id { params, salt }, Credential::Password(p)) => {
                argon2_kek(p, &unb64(slot, "salt", salt)?, *params, slot)?
            }
            (Kdf::HkdfSha256 { salt }, Credential::KeyFile(secret)) => {
                let salt: [u8; SALT_LEN] = unb64(slot, "salt", salt)?
                    .try_into()
                    .map_err(|_| Error::KeySlot { slot: slot.into(), reason: "salt must be 32 bytes".into() })?;
                Zeroizing::new(keyfile_kek(secret, &salt))
            }
            _ => return Err(Error::KeySlot { slot: slot.into(), reason: "kdf does not match the slot kind".into() }),
        };
        let nonce = unb64(slot, "nonce", &self.nonce)?;
        if nonce.len() != 12 {
            return Err(Error::KeySlot { slot: slot.into(), reason: "nonce must be 12 bytes".into() });
        }
        let wrapped = unb64(slot, "wrapped", &self.wrapped)?;
        let cipher = Aes256Gcm::new_from_slice(&kek[..]).expect("32-byte key");
        match cipher.decrypt(
            Nonce::from_slice(&nonce),
            Payload { msg: &wrapped, aad: &slot_aad(&self.repository, self.append_only) },
        ) {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                MasterKey::from_bytes(&plain).map(Some).ok_or_else(|| Error::KeySlot {
                    slot: slot.into(),
                    reason: "wrapped key has the wrong length".into(),
                })
            }
            Err(_) => Ok(None),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("slots serialise")
    }

    pub fn parse(slot: &str, b: &[u8]) -> Result<KeySlot> {
        serde_json::from_slice(b)
            .map_err(|e| Error::KeySlot { slot: slot.into(), reason: format!("not a key slot: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> KdfParams {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    #[test]
    fn password_slot_opens_only_with_its_password() {
        let m = MasterKey::generate();
        let repo = Id([5; 32]);
        let slot = KeySlot::create(&m, repo, &Credential::password("right"), cheap()).unwrap();
        let parsed = KeySlot::parse("s", &slot.to_bytes()).unwrap();
        let got = parsed.unwrap_key("s", &Credential::password("right")).unwrap().unwrap();
        assert_eq!(got.to_bytes(), m.to_bytes());
        assert!(parsed.unwrap_key("s", &Credential::password("wrong")).unwrap().is_none());
    }

    #[test]
    fn key_file_slot_round_trips_and_binds_the_repository() {
        let m = MasterKey::generate();
        let (cred, text) = Credential::new_key_file_text();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, text).unwrap();
        let mut slot = KeySlot::create(&m, Id([1; 32]), &cred, cheap()).unwrap();
        let again = Credential::from_key_file(&path).unwrap();
        assert!(slot.unwrap_key("s", &again).unwrap().is_some());
        assert!(slot.unwrap_key("s", &Credential::password("x")).unwrap().is_none());
        // A slot moved to another repository does not open.
        slot.repository = Id([2; 32]);
        assert!(slot.unwrap_key("s", &again).unwrap().is_none());
    }

    #[test]
    fn the_append_only_flag_cannot_be_flipped_in_the_file() {
        let m = MasterKey::generate();
        let cred = Credential::password("pw");
        let mut slot = KeySlot::create_with(&m, Id([3; 32]), &cred, cheap(), true).unwrap();
        assert!(String::from_utf8(slot.to_bytes()).unwrap().contains("\"append_only\": true"));
        assert!(slot.unwrap_key("s", &cred).unwrap().is_some());
        slot.append_only = false;
        assert!(slot.unwrap_key("s", &cred).unwrap().is_none(), "a slot stripped of its flag must not open");
        let mut full = KeySlot::create(&m, Id([3; 32]), &cred, cheap()).unwrap();
        assert!(!String::from_utf8(full.to_bytes()).unwrap().contains("append_only"));
        full.append_only = true;
        assert!(full.unwrap_key("s", &cred).unwrap().is_none());
    }
}
