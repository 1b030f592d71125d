//! The index: which pack holds each blob, where.
//!
//! On storage, index files are written after the packs they describe (so an
//! index never names a pack that is not there) and are never changed; prune
//! writes new ones that list the old ones they supersede.
//!
//! In memory the index is one sorted array of fixed 52-byte entries, looked
//! up by binary search. A hash map of 10 million ids would cost two to three
//! times as much (buckets, load factor, per-entry padding); the sorted array
//! keeps a 10-million-blob repository at 52 bytes a blob (measured with
//! `examples/index_memory.rs`; figures in docs/benchmarks.md).

use std::collections::HashMap;

use crate::crypto::SALT_LEN;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pack::{BlobType, Encoding, PackEntry, ENTRY_LEN};

/// A pack as an index file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedPack {
    pub id: Id,
    pub salt: [u8; SALT_LEN],
    pub entries: Vec<PackEntry>,
}

/// The decoded payload of one index file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune; empty otherwise).
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexedPack>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out = Vec::with_capacity(8 + self.supersedes.len() * 32 + self.packs.len() * 68 + blobs * ENTRY_LEN);
        out.extend_from_slice(&(self.supersedes.len() as u32).to_le_bytes());
        for s in &self.supersedes {
            out.extend_from_slice(&s.0);
        }
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.salt);
            out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
            for e in &p.entries {
                e.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(object: &str, b: &[u8]) -> Result<IndexFile> {
        let bad = || Error::corrupt(object, "index file is truncated or malformed");
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = b.get(pos..pos + n).ok_or_else(bad)?;
            pos += n;
            Ok(s)
        };
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap()) as usize;
        let n_sup = u32_of(take(4)?);
        let mut supersedes = Vec::with_capacity(n_sup.min(1 << 16));
        for _ in 0..n_sup {
            supersedes.push(Id(take(32)?.try_into().unwrap()));
        }
        let n_packs = u32_of(take(4)?);
        let mut packs = Vec::with_capacity(n_packs.min(1 << 16));
        for _ in 0..n_packs {
            let id = Id(take(32)?.try_into().unwrap());
            let salt: [u8; SALT_LEN] = take(SALT_LEN)?.try_into().unwrap();
            let n = u32_of(take(4)?);
            let raw = take(n.checked_mul(ENTRY_LEN).ok_or_else(bad)?)?;
            let entries =
                raw.chunks_exact(ENTRY_LEN).map(PackEntry::decode).collect::<Option<Vec<_>>>().ok_or_else(bad)?;
            packs.push(IndexedPack { id, salt, entries });
        }
        if pos != b.len() {
            return Err(bad());
        }
        Ok(IndexFile { supersedes, packs })
    }
}

/// One blob in memory. `repr(C)` keeps the layout predictable: 32 + 4×4 + 2
/// bytes, padded to 52.
#[derive(Clone, Copy)]
#[repr(C)]
struct Entry {
    id: [u8; 32],
    pack: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
    blob_type: u8,
    encoding: u8,
}

fn prefix(id: &[u8; 32]) -> usize {
    u16::from_be_bytes([id[0], id[1]]) as usize
}

/// Bytes the in-memory index spends per blob (the figure quoted in the docs).
pub const BYTES_PER_BLOB: usize = std::mem::size_of::<Entry>();

/// A pack known to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRef {
    pub id: Id,
    pub salt: [u8; SALT_LEN],
}

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackRef,
    pub entry: PackEntry,
}

/// The repository's blob index, loaded from all index files.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackRef>,
    pack_numbers: HashMap<Id, u32>,
    entries: Vec<Entry>,
    /// `buckets[b]..buckets[b + 1]` is the range of entries whose id starts
    /// with the 16-bit prefix `b`: one cache-friendly step replaces the
    /// first 16 of a binary search's ~23 scattered probes at 10 M blobs.
    buckets: Vec<u32>,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// Reserves room for `additional` blobs, so loading a large index does
    /// not pass through a doubled allocation.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve_exact(additional);
    }

    /// Adds one decoded index file. Call [`Index::finish`] after the last.
    pub fn add_file(&mut self, file: IndexFile) {
        for p in file.packs {
            self.add_pack(p.id, p.salt, &p.entries);
        }
    }

    /// Adds one pack's entries.
    pub fn add_pack(&mut self, id: Id, salt: [u8; SALT_LEN], entries: &[PackEntry]) {
        let n = self.pack_number(PackRef { id, salt });
        self.entries.extend(entries.iter().map(|e| Entry {
            id: e.id.0,
            pack: n,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
            blob_type: e.blob_type as u8,
            encoding: e.encoding.to_u8(),
        }));
    }

    fn pack_number(&mut self, p: PackRef) -> u32 {
        if let Some(&n) = self.pack_numbers.get(&p.id) {
            return n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(p);
        self.pack_numbers.insert(p.id, n);
        n
    }

    /// Sorts for lookup. A blob stored twice (two concurrent backups may both
    /// store it) keeps one location; both are valid, and a whole copy is
    /// kept over a delta (a delta base must be whole).
    pub fn finish(&mut self) {
        let delta = Encoding::Delta.to_u8();
        self.entries.sort_unstable_by(|a, b| a.id.cmp(&b.id).then((a.encoding == delta).cmp(&(b.encoding == delta))));
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.entries.shrink_to_fit();
        let mut buckets = vec![0u32; (1 << 16) + 1];
        for e in &self.entries {
            buckets[prefix(&e.id) + 1] += 1;
        }
        for b in 1..buckets.len() {
            buckets[b] += buckets[b - 1];
        }
        self.buckets = buckets;
    }

    fn find(&self, id: &Id) -> Option<&Entry> {
        if self.buckets.is_empty() {
            return None;
        }
        let b = prefix(&id.0);
        let slice = &self.entries[self.buckets[b] as usize..self.buckets[b + 1] as usize];
        slice.binary_search_by(|e| e.id.cmp(&id.0)).ok().map(|i| &slice[i])
    }

    /// Where `id` sits in the sorted entries: a dense number per blob, for
    /// bitmaps (prune marks used blobs with one bit each).
    pub fn position(&self, id: &Id) -> Option<usize> {
        let e = self.find(id)?;
        Some((e as *const Entry as usize - self.entries.as_ptr() as usize) / std::mem::size_of::<Entry>())
    }

    /// The id of the blob at `position`.
    pub fn id_at(&self, position: usize) -> Id {
        Id(self.entries[position].id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|e| self.location(e))
    }

    fn location(&self, e: &Entry) -> BlobLocation {
        BlobLocation {
            pack: self.packs[e.pack as usize],
            entry: PackEntry {
                id: Id(e.id),
                blob_type: BlobType::from_u8(e.blob_type).unwrap_or(BlobType::Data),
                // Only values `to_u8` made are stored.
                encoding: Encoding::from_u8(e.encoding).unwrap_or(Encoding::Raw),
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn packs(&self) -> &[PackRef] {
        &self.packs
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_numbers.contains_key(id)
    }

    /// Every blob, in id order.
    pub fn iter(&self) -> impl Iterator<Item = BlobLocation> + '_ {
        self.entries.iter().map(|e| self.location(e))
    }

    /// Heap bytes held by the index (entries, packs and the pack map).
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * BYTES_PER_BLOB
            + self.packs.capacity() * std::mem::size_of::<PackRef>()
            + self.pack_numbers.capacity() * (std::mem::size_of::<Id>() + 4 + 1)
            + self.buckets.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: [u8; 32], offset: u32) -> PackEntry {
        PackEntry {
            id: Id(id),
            blob_type: BlobType::Data,
            encoding: if offset % 2 == 0 { Encoding::Zstd } else { Encoding::Raw },
            offset,
            length: 100,
            raw_length: 90,
        }
    }

    proptest! {
        #[test]
        fn index_files_round_trip(ids in proptest::collection::vec(any::<[u8; 32]>(), 0..50), sup in proptest::collection::vec(any::<[u8; 32]>(), 0..3)) {
            let f = IndexFile {
                supersedes: sup.into_iter().map(Id).collect(),
                packs: ids.chunks(7).map(|c| IndexedPack {
                    id: Id(c[0]), salt: c[0],
                    entries: c.iter().enumerate().map(|(i, id)| entry(*id, i as u32)).collect(),
                }).collect(),
            };
            prop_assert_eq!(IndexFile::decode("i", &f.encode()).unwrap(), f);
        }

        #[test]
        fn every_added_blob_is_found(ids in proptest::collection::hash_set(any::<[u8; 32]>(), 1..300)) {
            let ids: Vec<_> = ids.into_iter().collect();
            let mut idx = Index::new();
            idx.add_file(IndexFile { supersedes: vec![], packs: vec![IndexedPack {
                id: Id([1; 32]), salt: [2; 32],
                entries: ids.iter().enumerate().map(|(i, id)| entry(*id, i as u32)).collect(),
            }]});
            idx.finish();
            for (i, id) in ids.iter().enumerate() {
                let loc = idx.get(&Id(*id)).unwrap();
                prop_assert_eq!(loc.entry.offset, i as u32);
                prop_assert_eq!(loc.pack.id, Id([1; 32]));
            }
            prop_assert!(!idx.contains(&Id([0xee; 32])) || ids.contains(&[0xee; 32]));
        }
    }

    #[test]
    fn truncated_index_is_an_error() {
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![IndexedPack { id: Id([1; 32]), salt: [0; 32], entries: vec![entry([3; 32], 0)] }],
        };
        let b = f.encode();
        assert!(IndexFile::decode("i", &b[..b.len() - 1]).is_err());
    }

    #[test]
    fn in_memory_entry_is_at_most_64_bytes() {
        assert!(BYTES_PER_BLOB <= 64, "{BYTES_PER_BLOB}");
    }
}
