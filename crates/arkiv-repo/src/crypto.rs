//! Keys and authenticated encryption.
//!
//! Every object Arkiv writes is sealed with AES-256-GCM. GCM breaks badly if a
//! (key, nonce) pair is ever reused, and a random 96-bit nonce under one key
//! stops being safe after about 2^32 messages — a large repository reaches
//! that. So no long-lived key ever encrypts anything directly: each pack and
//! each file draws a fresh 256-bit salt, HKDF derives a key from the master
//! key and that salt, and nonces under the derived key are counters (the
//! blob's offset inside its pack). Reuse would need two salts to collide, a
//! 2^-128 event per pair.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::Id;

/// Length of the authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of the per-object salt from which an object key is derived.
pub const SALT_LEN: usize = 32;

const INFO_PACK: &[u8] = b"arkiv pack key v1";
const INFO_FILE: &[u8] = b"arkiv file key v1";
const INFO_KEYFILE: &[u8] = b"arkiv keyfile kek v1";

/// The repository's secret material. It never leaves the process except
/// wrapped inside a key slot.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    /// Input to HKDF for every pack and file key.
    pub(crate) encryption: [u8; 32],
    /// Key of the keyed BLAKE3 that names blobs.
    pub(crate) id: [u8; 32],
    /// Seed of the chunker's gear table.
    pub(crate) chunker: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub const LEN: usize = 96;

    pub fn generate() -> Self {
        let mut k = MasterKey { encryption: [0; 32], id: [0; 32], chunker: [0; 32] };
        let mut rng = rand::rngs::OsRng;
        rng.fill_bytes(&mut k.encryption);
        rng.fill_bytes(&mut k.id);
        rng.fill_bytes(&mut k.chunker);
        k
    }

    /// A key for a sibling repository (a replica): its own encryption key,
    /// but this key's blob-id key and chunker seed, so the two name and cut
    /// the same data the same way and `copy` can move blobs as they are.
    pub fn sibling(&self) -> Self {
        let mut k = MasterKey { encryption: [0; 32], id: self.id, chunker: self.chunker };
        rand::rngs::OsRng.fill_bytes(&mut k.encryption);
        k
    }

    pub fn to_bytes(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        out[..32].copy_from_slice(&self.encryption);
        out[32..64].copy_from_slice(&self.id);
        out[64..].copy_from_slice(&self.chunker);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut k = MasterKey { encryption: [0; 32], id: [0; 32], chunker: [0; 32] };
        k.encryption.copy_from_slice(&b[..32]);
        k.id.copy_from_slice(&b[32..64]);
        k.chunker.copy_from_slice(&b[64..]);
        Some(k)
    }

    /// The blob id of `plaintext`: keyed BLAKE3, so ids are a MAC and do not
    /// let an attacker confirm that the repository holds a known file.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }

    /// The id of a tree blob: keyed BLAKE3 under a key derived from the id
    /// key, so a file whose bytes happen to equal a directory listing gets
    /// a different id and the two never deduplicate into each other.
    pub fn tree_id(&self, plaintext: &[u8]) -> Id {
        let k = blake3::derive_key("arkiv tree blob id v1", &self.id);
        Id(*blake3::keyed_hash(&k, plaintext).as_bytes())
    }

    pub fn pack_cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        ObjectCipher::derive(&self.encryption, salt, INFO_PACK)
    }

    pub fn file_cipher(&self, salt: &[u8; SALT_LEN]) -> ObjectCipher {
        ObjectCipher::derive(&self.encryption, salt, INFO_FILE)
    }

    /// 256 gear values derived from the chunker secret: the whole table is
    /// secret, not a public table XOR-ed with one seed.
    pub fn gear_table(&self) -> [u64; 256] {
        let mut hasher = blake3::Hasher::new_derive_key("arkiv chunker gear table v1");
        hasher.update(&self.chunker);
        let mut xof = hasher.finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        xof.fill(&mut bytes);
        let mut table = [0u64; 256];
        for (i, v) in table.iter_mut().enumerate() {
            *v = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        }
        table
    }
}

pub fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut s = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// The nonce for the ciphertext that starts at `offset` in its object.
/// Offsets are unique within an object, so nonces are too.
pub fn offset_nonce(offset: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&offset.to_be_bytes());
    n
}

/// Nonce of a pack's header. Offset nonces begin with four zero bytes,
/// so this nonce can never equal one.
pub const HEADER_NONCE: [u8; 12] = [0xff; 12];

/// An AES-256-GCM key bound to one object (pack or file).
///
/// The bulk cipher is aws-lc's (already linked for TLS): it uses VAES and
/// AVX-512 where the CPU has them, about twice RustCrypto's AES-NI speed
/// here. Key derivation and slot wrapping stay with RustCrypto.
pub struct ObjectCipher(LessSafeKey);

impl ObjectCipher {
    fn derive(ikm: &[u8; 32], salt: &[u8; SALT_LEN], info: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
        let mut okm = [0u8; 32];
        hk.expand(info, &mut okm).expect("32 bytes is a valid HKDF length");
        let c = Self::from_key(&okm);
        okm.zeroize();
        c
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        ObjectCipher(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")))
    }

    /// Encrypts `buf[start..]` in place and appends the tag.
    pub fn seal_tail(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut Vec<u8>, start: usize) {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf[start..])
            .expect("AES-GCM encrypts any length Arkiv produces");
        buf.extend_from_slice(tag.as_ref());
    }

    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.seal_tail(nonce, aad, &mut buf, 0);
        buf
    }

    /// Decrypts and authenticates; `None` when the ciphertext, tag, nonce or
    /// associated data do not match.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        let mut buf = ciphertext.to_vec();
        let len = self.open_in_place(nonce, aad, &mut buf)?;
        buf.truncate(len);
        Some(buf)
    }

    /// Decrypts `buf` (ciphertext and tag) in place; the plaintext is the
    /// first returned-length bytes. `None` as for [`Self::open`].
    pub fn open_in_place(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Option<usize> {
        if buf.len() < TAG_LEN {
            return None;
        }
        Some(self.0.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf).ok()?.len())
    }
}

/// Key-encryption key for a key file slot: the file holds 32 random bytes.
pub fn keyfile_kek(secret: &[u8], salt: &[u8; SALT_LEN]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(salt), secret);
    let mut okm = [0u8; 32];
    hk.expand(INFO_KEYFILE, &mut okm).expect("valid length");
    okm
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seal_then_open_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096), off in any::<u64>()) {
            let k = MasterKey::generate();
            let salt = random_salt();
            let c = k.pack_cipher(&salt);
            let ct = c.seal(&offset_nonce(off), b"aad", &data);
            prop_assert_eq!(ct.len(), data.len() + TAG_LEN);
            prop_assert_eq!(c.open(&offset_nonce(off), b"aad", &ct), Some(data));
        }

        #[test]
        fn any_flipped_bit_is_rejected(data in proptest::collection::vec(any::<u8>(), 1..512), bit in any::<usize>()) {
            let k = MasterKey::generate();
            let c = k.file_cipher(&random_salt());
            let mut ct = c.seal(&offset_nonce(0), b"", &data);
            let i = bit % (ct.len() * 8);
            ct[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(c.open(&offset_nonce(0), b"", &ct), None);
        }
    }

    #[test]
    fn different_salts_give_different_keys() {
        let k = MasterKey::generate();
        let a = k.pack_cipher(&[1; 32]).seal(&offset_nonce(0), b"", b"same");
        let b = k.pack_cipher(&[2; 32]).seal(&offset_nonce(0), b"", b"same");
        assert_ne!(a, b);
    }

    #[test]
    fn gear_table_depends_on_every_secret() {
        let a = MasterKey::generate();
        let mut b = a.clone();
        b.chunker[31] ^= 1;
        let (ta, tb) = (a.gear_table(), b.gear_table());
        // A keyed table differs almost everywhere, not in one XOR-ed seed.
        assert!(ta.iter().zip(tb.iter()).filter(|(x, y)| x != y).count() > 250);
    }

    #[test]
    fn master_key_bytes_round_trip() {
        let k = MasterKey::generate();
        let back = MasterKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        assert!(MasterKey::from_bytes(&[0; 95]).is_none());
    }
}

/// The vectors published in docs/repository-format.md §16: if one changes,
/// the format changed.
#[cfg(test)]
mod format_vectors {
    use super::*;

    fn key() -> MasterKey {
        let b: Vec<u8> = (0u8..96).collect();
        MasterKey::from_bytes(&b).unwrap()
    }

    #[test]
    fn ids_and_gear_table_match_the_format_document() {
        let k = key();
        assert_eq!(k.blob_id(b"hello").to_hex(), "f8a707ccac6d5c7344f3075c205236c529ad840925ffae5a62011aefc9a895a9");
        let g = k.gear_table();
        assert_eq!((g[0], g[1], g[255]), (0x688fce5c63680063, 0x4918969b732404ad, 0xf9f40b53ad173a55));
        assert_eq!(k.tree_id(b"hello").to_hex(), "8e146a266b66850cb159d573e053b5fa300bee53f522e746bfc85791cfd330f0");
    }

    #[test]
    fn seals_match_the_format_document() {
        let k = key();
        let pack = k.pack_cipher(&[0x11; 32]).seal(&offset_nonce(40), &[], b"hello");
        assert_eq!(hex::encode(pack), "7b228aba774b210506e5237782b3ee9a4cd81cc14d");
        let aad = hex::decode("41524b5602010000").unwrap();
        let file = k.file_cipher(&[0x11; 32]).seal(&[0; 12], &aad, b"hello");
        assert_eq!(hex::encode(file), "b6867bf7d14677ba65b71aaae10b09e932b9f323aa");
        assert_eq!(
            hex::encode(keyfile_kek(&[0x22; 32], &[0x11; 32])),
            "3ab6fe48e490e90011a28aaa8e12cd066ffc40664ceb783d2554901cb75bbd61"
        );
    }
}
