//! Packs: many encrypted blobs in one immutable object, with an encrypted
//! header at the end listing them.
//!
//! A pack is built in memory by a [`Packer`] and written once. Each blob is
//! sealed under the pack's own key (derived from a random salt in the
//! preamble) with its offset as nonce. The header repeats what the index
//! says, so a lost index can be rebuilt from the packs alone.

use std::sync::Arc;

use crate::crypto::{offset_nonce, random_salt, MasterKey, ObjectCipher, HEADER_NONCE, SALT_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

pub const PACK_MAGIC: &[u8; 4] = b"ARKP";
pub const PACK_VERSION: u8 = 1;
pub const PREAMBLE_LEN: usize = 8 + SALT_LEN;
pub const ENTRY_LEN: usize = 48;
const FLAG_ZSTD: u8 = 1;
const FLAG_DELTA: u8 = 2;

/// How a blob's plaintext became its stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Stored as it is.
    Raw,
    /// One zstd frame.
    Zstd,
    /// A delta from other blobs: their count and ids, then a zstd frame
    /// that copies from them (`delta.rs`).
    Delta,
}

impl Encoding {
    /// The flags byte of a pack entry, also what the in-memory index keeps.
    pub fn to_u8(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zstd => FLAG_ZSTD,
            Encoding::Delta => FLAG_ZSTD | FLAG_DELTA,
        }
    }

    /// `None` for flags this version does not know.
    pub fn from_u8(f: u8) -> Option<Encoding> {
        match f {
            0 => Some(Encoding::Raw),
            FLAG_ZSTD => Some(Encoding::Zstd),
            x if x == FLAG_ZSTD | FLAG_DELTA => Some(Encoding::Delta),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zstd => "zstd",
            Encoding::Delta => "delta",
        }
    }
}

/// What a blob holds. Tree blobs go to packs of their own so metadata can
/// later live apart from bulk data (hot/cold storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum BlobType {
    Data = 0,
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(b: u8) -> Option<BlobType> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
}

/// The id a blob of type `t` with these contents is stored under.
pub fn blob_id(key: &MasterKey, t: BlobType, plaintext: &[u8]) -> Id {
    match t {
        BlobType::Data => key.blob_id(plaintext),
        BlobType::Tree => key.tree_id(plaintext),
    }
}

/// One blob's place in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: Id,
    pub blob_type: BlobType,
    pub encoding: Encoding,
    /// Where the ciphertext starts in the pack; also the blob's nonce.
    pub offset: u32,
    /// Ciphertext length, tag included.
    pub length: u32,
    /// Plaintext length after decompression.
    pub raw_length: u32,
}

impl PackEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.blob_type as u8);
        out.push(self.encoding.to_u8());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
        out.extend_from_slice(&self.id.0);
    }

    pub fn decode(b: &[u8]) -> Option<PackEntry> {
        if b.len() < ENTRY_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Some(PackEntry {
            blob_type: BlobType::from_u8(b[0])?,
            // Flags this version does not know would misread the blob.
            encoding: Encoding::from_u8(b[1])?,
            offset: u32_at(4),
            length: u32_at(8),
            raw_length: u32_at(12),
            id: Id(b[16..48].try_into().unwrap()),
        })
    }
}

/// A pack being filled. Not thread-safe on purpose: each worker fills its
/// own, so encryption runs in parallel without a shared lock.
pub struct Packer {
    salt: [u8; SALT_LEN],
    cipher: ObjectCipher,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to be written under its name.
pub struct FinishedPack {
    pub id: Id,
    pub salt: [u8; SALT_LEN],
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl Packer {
    pub fn new(key: &MasterKey, capacity: usize) -> Packer {
        let salt = random_salt();
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(PACK_MAGIC);
        buf.extend_from_slice(&[PACK_VERSION, 0, 0, 0]);
        buf.extend_from_slice(&salt);
        Packer { salt, cipher: key.pack_cipher(&salt), buf, entries: Vec::new() }
    }

    /// Bytes written so far (preamble and blobs).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Seals `stored` (the blob's bytes, encoded as `encoding` says) into
    /// the pack.
    pub fn add(
        &mut self,
        id: Id,
        blob_type: BlobType,
        stored: &[u8],
        encoding: Encoding,
        raw_length: u32,
    ) -> PackEntry {
        let offset = self.buf.len();
        self.buf.extend_from_slice(stored);
        self.cipher.seal_tail(&offset_nonce(offset as u64), &[], &mut self.buf, offset);
        let e = PackEntry {
            id,
            blob_type,
            encoding,
            offset: offset as u32,
            length: (stored.len() + TAG_LEN) as u32,
            raw_length,
        };
        self.entries.push(e);
        e
    }

    pub fn finish(self) -> FinishedPack {
        let Packer { salt, cipher, mut buf, entries } = self;
        let mut header = Vec::with_capacity(4 + entries.len() * ENTRY_LEN);
        header.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for e in &entries {
            e.encode(&mut header);
        }
        let sealed = cipher.seal(&HEADER_NONCE, &buf[..8], &header);
        buf.extend_from_slice(&sealed);
        buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        FinishedPack { id: Id::of_stored(&buf), salt, bytes: buf, entries }
    }
}

/// Reads the salt from a pack's preamble.
pub fn read_preamble(object: &str, b: &[u8]) -> Result<[u8; SALT_LEN]> {
    if b.len() < PREAMBLE_LEN || &b[..4] != PACK_MAGIC {
        return Err(Error::corrupt(object, "not an Arkiv pack (bad magic)"));
    }
    if b[4] > PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            object: object.into(),
            found: b[4] as u32,
            supported: PACK_VERSION as u32,
        });
    }
    Ok(b[8..PREAMBLE_LEN].try_into().unwrap())
}

/// Decrypts and parses the header of a whole pack held in memory.
pub fn read_header(key: &MasterKey, object: &str, pack: &[u8]) -> Result<([u8; SALT_LEN], Vec<PackEntry>)> {
    let salt = read_preamble(object, pack)?;
    if pack.len() < PREAMBLE_LEN + 4 {
        return Err(Error::corrupt(object, "truncated"));
    }
    let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    if hlen + 4 + PREAMBLE_LEN > pack.len() || hlen < TAG_LEN + 4 {
        return Err(Error::corrupt(object, "header length out of range (truncated pack?)"));
    }
    let start = pack.len() - 4 - hlen;
    let header = key
        .pack_cipher(&salt)
        .open(&HEADER_NONCE, &pack[..8], &pack[start..pack.len() - 4])
        .ok_or_else(|| Error::corrupt(object, "pack header fails authentication"))?;
    let count = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
    if header.len() != 4 + count * ENTRY_LEN {
        return Err(Error::corrupt(object, "pack header has the wrong length"));
    }
    let entries = header[4..]
        .chunks_exact(ENTRY_LEN)
        .map(PackEntry::decode)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::corrupt(object, "pack header names an unknown blob type"))?;
    for e in &entries {
        if e.offset as usize + e.length as usize > start {
            return Err(Error::corrupt(object, format!("blob {} lies outside the pack", e.id)));
        }
    }
    Ok((salt, entries))
}

thread_local! {
    /// [`open_blob_in_place`]'s decompression context, one per thread: a
    /// restore opens thousands of blobs per thread, and a fresh zstd
    /// context for each showed up as 4% of its time.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Where delta blobs' bases come from: a full blob's plaintext, by id.
pub type Bases<'b> = &'b (dyn Fn(&Id) -> Result<Arc<Vec<u8>>> + Sync);

/// For packs that hold no delta blobs (or callers that must not follow
/// one): a delta blob fails to open.
pub fn no_bases(id: &Id) -> Result<Arc<Vec<u8>>> {
    Err(Error::Invalid(format!("delta base {id} cannot be read here")))
}

/// Decrypts one blob's ciphertext, decompresses it and checks that its
/// keyed hash is the id it was stored under: the end-to-end verification
/// every restore and `check --read-data` relies on.
pub fn open_blob(
    key: &MasterKey,
    cipher: &ObjectCipher,
    entry: &PackEntry,
    ciphertext: &[u8],
    object: &str,
    bases: Bases,
) -> Result<Vec<u8>> {
    let mut stored = ciphertext.to_vec();
    let mut out = Vec::new();
    let n = open_blob_in_place(key, cipher, entry, &mut stored, object, &mut out, bases)?.len();
    if entry.encoding == Encoding::Raw {
        stored.truncate(n);
        Ok(stored)
    } else {
        Ok(out)
    }
}

/// The bases a delta blob names, read from its stored bytes (decrypted,
/// not decompressed): what prune and check follow to keep bases alive.
pub fn delta_bases(cipher: &ObjectCipher, entry: &PackEntry, ciphertext: &mut [u8], object: &str) -> Result<Vec<Id>> {
    let what = || format!("blob {} in pack {}", entry.id, object);
    let n = cipher
        .open_in_place(&offset_nonce(entry.offset as u64), &[], ciphertext)
        .ok_or_else(|| Error::corrupt(what(), "authentication failed"))?;
    crate::delta::split(&ciphertext[..n])
        .map(|(b, _)| b)
        .ok_or_else(|| Error::corrupt(what(), "delta header is malformed"))
}

/// [`open_blob`] on a ciphertext the caller lets it overwrite: decrypted
/// where it lies, and the plaintext returned from there (a stored blob) or
/// decompressed into `out` (replacing what it held). A restore opens a
/// gigabyte of blobs from run buffers it owns: copying each ciphertext
/// elsewhere first, or into a fresh allocation, was one more pass over
/// every byte restored.
pub fn open_blob_in_place<'a>(
    key: &MasterKey,
    cipher: &ObjectCipher,
    entry: &PackEntry,
    stored: &'a mut [u8],
    object: &str,
    out: &'a mut Vec<u8>,
    bases: Bases,
) -> Result<&'a [u8]> {
    let what = || format!("blob {} in pack {}", entry.id, object);
    let nonce = offset_nonce(entry.offset as u64);
    let n = cipher.open_in_place(&nonce, &[], stored).ok_or_else(|| Error::corrupt(what(), "authentication failed"))?;
    let plain: &[u8] = if entry.encoding == Encoding::Delta {
        let (ids, frame) =
            crate::delta::split(&stored[..n]).ok_or_else(|| Error::corrupt(what(), "delta header is malformed"))?;
        let read = ids
            .iter()
            .map(|id| {
                bases(id).map_err(|e| match e {
                    Error::BlobNotFound(b) => Error::corrupt(what(), format!("its delta base {b} is missing")),
                    other => Error::corrupt(what(), format!("its delta base {id}: {other}")),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // One base, the usual case, is decoded against where it lies.
        let joined;
        let prefix: &[u8] = match &read[..] {
            [one] => one,
            many => {
                joined = many.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>();
                &joined
            }
        };
        crate::delta::decode(prefix, frame, entry.raw_length as usize, out)
            .map_err(|e| Error::corrupt(what(), format!("delta from {} base(s) failed: {e}", ids.len())))?;
        out
    } else if entry.encoding == Encoding::Zstd {
        out.clear();
        DCTX.with(|cell| {
            let mut dctx = cell.borrow_mut();
            let dctx = match &mut *dctx {
                Some(d) => d,
                None => dctx.insert(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| Error::corrupt(what(), format!("decompression failed: {e}")))?,
                ),
            };
            // Decompression stops at the buffer's capacity, so a blob that
            // claims to expand without bound cannot grow it past what the
            // index recorded (or a larger buffer already held).
            out.reserve(entry.raw_length as usize);
            dctx.decompress_to_buffer(&stored[..n], out)
                .map_err(|e| Error::corrupt(what(), format!("decompression failed: {e}")))?;
            Ok::<_, Error>(())
        })?;
        out
    } else {
        &stored[..n]
    };
    if plain.len() != entry.raw_length as usize || blob_id(key, entry.blob_type, plain) != entry.id {
        return Err(Error::corrupt(what(), "content does not match its id"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blobs_round_trip_through_a_pack(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20)) {
            let k = MasterKey::generate();
            let mut p = Packer::new(&k, 1 << 16);
            for b in &blobs {
                p.add(k.blob_id(b), BlobType::Data, b, Encoding::Raw, b.len() as u32);
            }
            let f = p.finish();
            prop_assert_eq!(Id::of_stored(&f.bytes), f.id);
            let (salt, entries) = read_header(&k, "p", &f.bytes).unwrap();
            prop_assert_eq!(&entries, &f.entries);
            let c = k.pack_cipher(&salt);
            for (e, b) in entries.iter().zip(&blobs) {
                let ct = &f.bytes[e.offset as usize..(e.offset + e.length) as usize];
                prop_assert_eq!(&open_blob(&k, &c, e, ct, "p", &no_bases).unwrap(), b);
            }
        }
    }

    proptest! {
        /// What a restore does: every blob opened where it lies in one
        /// buffer holding the pack, neighbours untouched by each other's
        /// decryption, a damaged one failing alone.
        #[test]
        fn blobs_open_in_place_inside_one_buffer(
            blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..12),
            compress in proptest::collection::vec(any::<bool>(), 12),
            damaged in any::<proptest::sample::Index>(),
        ) {
            let k = MasterKey::generate();
            let mut p = Packer::new(&k, 1 << 16);
            for (i, b) in blobs.iter().enumerate() {
                let stored = if compress[i] { zstd::bulk::compress(b, 3).unwrap() } else { b.clone() };
                p.add(k.blob_id(b), BlobType::Data, &stored, if compress[i] { Encoding::Zstd } else { Encoding::Raw }, b.len() as u32);
            }
            let mut f = p.finish();
            let bad = damaged.index(blobs.len());
            let e = f.entries[bad];
            f.bytes[e.offset as usize + e.length as usize / 2] ^= 1;
            let (salt, entries) = read_header(&k, "p", &f.bytes).unwrap();
            let c = k.pack_cipher(&salt);
            let mut out = Vec::new();
            for (i, (e, b)) in entries.iter().zip(&blobs).enumerate() {
                let ct = &mut f.bytes[e.offset as usize..(e.offset + e.length) as usize];
                match open_blob_in_place(&k, &c, e, ct, "p", &mut out, &no_bases) {
                    Ok(plain) => prop_assert!(i != bad && plain == &b[..]),
                    Err(err) => prop_assert!(i == bad && err.to_string().contains("authentication failed"), "{err}"),
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_is_caught_per_blob() {
        let k = MasterKey::generate();
        let mut p = Packer::new(&k, 1024);
        let a = b"first blob".to_vec();
        let b = b"second blob".to_vec();
        p.add(k.blob_id(&a), BlobType::Data, &a, Encoding::Raw, a.len() as u32);
        p.add(k.blob_id(&b), BlobType::Data, &b, Encoding::Raw, b.len() as u32);
        let mut f = p.finish();
        let e1 = f.entries[1];
        f.bytes[e1.offset as usize + 2] ^= 0x40;
        let (salt, entries) = read_header(&k, "p", &f.bytes).unwrap();
        let c = k.pack_cipher(&salt);
        let ct = |e: &PackEntry| f.bytes[e.offset as usize..(e.offset + e.length) as usize].to_vec();
        assert!(open_blob(&k, &c, &entries[0], &ct(&entries[0]), "p", &no_bases).is_ok());
        let err = open_blob(&k, &c, &entries[1], &ct(&entries[1]), "p", &no_bases).unwrap_err().to_string();
        assert!(err.contains(&e1.id.to_hex()) && err.contains("authentication failed"), "{err}");
    }

    #[test]
    fn a_delta_blob_opens_from_its_base_and_only_from_it() {
        let k = MasterKey::generate();
        let base = b"row 1, row 2, row 3, row 4, row 5; ".repeat(60);
        let mut data = base.clone();
        data.drain(700..720);
        let base_id = k.blob_id(&base);
        let mut stored = Vec::new();
        crate::delta::encode(3, &[base_id], &base, &data, &mut stored).unwrap();
        let mut p = Packer::new(&k, 1 << 14);
        p.add(k.blob_id(&data), BlobType::Data, &stored, Encoding::Delta, data.len() as u32);
        let f = p.finish();
        let (salt, entries) = read_header(&k, "p", &f.bytes).unwrap();
        assert_eq!(entries[0].encoding, Encoding::Delta);
        let c = k.pack_cipher(&salt);
        let ct = f.bytes[entries[0].offset as usize..(entries[0].offset + entries[0].length) as usize].to_vec();
        let good = Arc::new(base.clone());
        let bases = |id: &Id| if *id == base_id { Ok(good.clone()) } else { Err(Error::BlobNotFound(*id)) };
        assert_eq!(open_blob(&k, &c, &entries[0], &ct, "p", &bases).unwrap(), data);
        assert_eq!(delta_bases(&c, &entries[0], &mut ct.clone(), "p").unwrap(), vec![base_id]);
        // A base that is gone, or another base under its id, is damage
        // named on the delta blob.
        let err = open_blob(&k, &c, &entries[0], &ct, "p", &|id: &Id| Err(Error::BlobNotFound(*id))).unwrap_err();
        assert!(err.to_string().contains(&format!("its delta base {base_id} is missing")), "{err}");
        let other = Arc::new(base.iter().map(|b| b.to_ascii_uppercase()).collect::<Vec<u8>>());
        let err = open_blob(&k, &c, &entries[0], &ct, "p", &|_: &Id| Ok(other.clone())).unwrap_err();
        assert!(err.to_string().contains(&entries[0].id.to_hex()), "{err}");
        assert!(open_blob(&k, &c, &entries[0], &ct, "p", &no_bases).is_err());
    }

    #[test]
    fn a_tree_and_a_file_with_the_same_bytes_get_different_ids() {
        let k = MasterKey::generate();
        let listing = br#"{"nodes":[]}"#;
        assert_ne!(blob_id(&k, BlobType::Data, listing), blob_id(&k, BlobType::Tree, listing));
        // A blob stored as one type does not verify as the other.
        let mut p = Packer::new(&k, 1024);
        p.add(blob_id(&k, BlobType::Tree, listing), BlobType::Tree, listing, Encoding::Raw, listing.len() as u32);
        let f = p.finish();
        let (salt, mut entries) = read_header(&k, "p", &f.bytes).unwrap();
        let ct = f.bytes[entries[0].offset as usize..(entries[0].offset + entries[0].length) as usize].to_vec();
        let c = k.pack_cipher(&salt);
        assert!(open_blob(&k, &c, &entries[0], &ct, "p", &no_bases).is_ok());
        entries[0].blob_type = BlobType::Data;
        assert!(open_blob(&k, &c, &entries[0], &ct, "p", &no_bases).is_err());
    }

    #[test]
    fn entry_encoding_is_48_bytes() {
        let e = PackEntry {
            id: Id([7; 32]),
            blob_type: BlobType::Tree,
            encoding: Encoding::Zstd,
            offset: 1,
            length: 2,
            raw_length: 3,
        };
        let mut v = Vec::new();
        e.encode(&mut v);
        assert_eq!(v.len(), ENTRY_LEN);
        assert_eq!(PackEntry::decode(&v), Some(e));
    }
}
