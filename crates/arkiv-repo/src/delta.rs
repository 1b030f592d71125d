//! Delta blobs: a chunk stored as its difference from older chunks of the
//! same stream, for dumps whose changes are scattered.
//!
//! A database dump whose changed rows are spread thinly (an update every
//! few kilobytes) has a change in every content-defined chunk, so chunk
//! deduplication stores all of it again. Compressed against the chunk that
//! held the same rows last time, the same chunk costs a few bytes per
//! change instead. zstd does the matching: the older chunks (the *bases*,
//! consecutive in the old stream, since a changed chunk's cut points may
//! have moved and a new chunk can span two old ones) are given as a prefix
//! the frame may copy from, and long-distance matching finds the long
//! unchanged runs cheaply — on pgbench's blank-filler rows with every
//! 100th row moved, 0.65 KB a chunk against 11 KB a chunk with zstd's
//! regular matcher at the same level.
//!
//! A delta blob's stored bytes (before encryption) are the number of bases
//! (one byte, 1 to [`MAX_BASES`]), their ids (32 bytes each) and one zstd
//! frame. Its id is still the keyed hash of its plaintext, so a wrong or
//! damaged base is caught like any other damage. A base is always a full
//! blob, never another delta: reading a chunk costs at most a few more
//! blobs, however many days of changes it carries.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use crate::id::Id;
use crate::pack::{BlobType, Encoding};
use crate::repository::Indexed;

/// The most bases one delta may name.
pub const MAX_BASES: usize = 8;

/// zstd's long-distance matcher's shortest match. Its default (64 at
/// level 3) splits runs on dumps of near-identical rows; 128 halved the
/// deltas of the pgbench benchmark and 256 or more gained nothing.
const LDM_MIN_MATCH: u32 = 128;

/// The window that lets a frame reach back over all of its bases.
fn window_log(base: usize, data: usize) -> u32 {
    let need = (base + data).max(1 << 10);
    (usize::BITS - (need - 1).leading_zeros()).clamp(10, 30)
}

/// Appends the stored form of `data` as a delta from `bases` (ids, and
/// their plaintexts concatenated in that order as `base`) to `out`.
pub fn encode(level: i32, bases: &[Id], base: &[u8], data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if bases.is_empty() || bases.len() > MAX_BASES {
        return Err(format!("{} bases (1 to {MAX_BASES} allowed)", bases.len()));
    }
    let mut cctx = CCtx::create();
    let set = |c: &mut CCtx, p| c.set_parameter(p).map(|_| ()).map_err(zstd_error);
    set(&mut cctx, CParameter::CompressionLevel(level.max(1)))?;
    set(&mut cctx, CParameter::WindowLog(window_log(base.len(), data.len())))?;
    set(&mut cctx, CParameter::EnableLongDistanceMatching(true))?;
    set(&mut cctx, CParameter::LdmMinMatch(LDM_MIN_MATCH))?;
    cctx.ref_prefix(base).map_err(zstd_error)?;
    let header = out.len();
    out.push(bases.len() as u8);
    for b in bases {
        out.extend_from_slice(&b.0);
    }
    let start = out.len();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    // A cursor, because zstd writes a plain Vec from its start.
    let mut after = std::io::Cursor::new(&mut *out);
    after.set_position(start as u64);
    cctx.compress2(&mut after, data).map(|_| ()).map_err(|c| {
        out.truncate(header);
        zstd_error(c)
    })
}

/// The bases a delta blob's stored bytes name, and its frame.
pub fn split(stored: &[u8]) -> Option<(Vec<Id>, &[u8])> {
    let (&n, rest) = stored.split_first()?;
    if n == 0 || n as usize > MAX_BASES {
        return None;
    }
    let (ids, frame) = rest.split_at_checked(n as usize * 32)?;
    Some((ids.chunks_exact(32).map(|c| Id(c.try_into().unwrap())).collect(), frame))
}

/// Decompresses a delta frame against its bases (`base`, concatenated) into `out` (replacing what
/// it held), writing at most `raw_length` bytes.
pub fn decode(base: &[u8], frame: &[u8], raw_length: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(window_log(base.len(), raw_length))).map_err(zstd_error)?;
    dctx.ref_prefix(base).map_err(zstd_error)?;
    out.clear();
    // Decompression stops at the buffer's capacity, so a frame that claims
    // to expand without bound cannot grow it much past the recorded length
    // (the caller's length and id check rejects what it does write).
    out.reserve_exact(raw_length);
    let mut buf = std::mem::take(out);
    let r = dctx.decompress(&mut buf, frame);
    *out = buf;
    r.map(|_| ()).map_err(zstd_error)
}

/// Parent chunks looked at past the expected one when a new chunk's
/// head matches none nearer: enough for a few boundaries moved.
const WINDOW: usize = 8;
/// Bytes of a chunk's start compared to pair it with a parent chunk. A
/// content-defined cut falls at the same place in both copies of
/// unchanged data, so a chunk and its older version start alike. Long
/// enough to hold a few rows of a dump: 64 bytes of a blank-padded column
/// start many chunks alike and paired a fifth of pgbench's wrongly.
const HEAD: usize = 256;

/// The previous backup's version of a stream, walked alongside the new
/// one to find each new chunk's bases: the parent chunks that held the same
/// part of the stream. Chunks are paired by their first bytes, looked for
/// near two places: after the last pair (the *cursor*; right after new
/// data was inserted) and where the new chunk's offset falls in the parent
/// by the last pair's offsets (right after old data was removed). A chunk
/// that pairs with nothing is encoded against the parent chunks at the
/// offset it maps to, which is right when its own first bytes changed.
pub struct ParentStream<'a> {
    indexed: &'a Indexed,
    ids: Vec<Id>,
    /// Where each parent chunk starts in the parent stream (from the
    /// index, without reading), with the parent's length at the end.
    starts: Vec<u64>,
    /// Where each parent chunk first appears: an unchanged chunk anywhere
    /// puts the walk back in step.
    positions: HashMap<Id, usize>,
    cursor: usize,
    /// Where the next new chunk starts in the new stream, and how far the
    /// parent's offsets were ahead of the new one's at the last pair.
    pos: u64,
    shift: i64,
    /// The parent chunks around the two places, read.
    read: HashMap<usize, ParentChunk>,
}

/// A parent chunk as read ahead: its plaintext (to pair by), and the whole
/// blobs behind it with theirs (to encode against): itself, or the bases
/// it is a delta of. Read in parallel, so that pairing and encoding wait
/// on no storage round trip of their own.
struct ParentChunk {
    plain: Arc<Vec<u8>>,
    /// Empty when a base could not be read: the chunk still pairs.
    whole: Vec<(Id, Arc<Vec<u8>>)>,
}

/// The full blobs a new chunk is encoded against, in stream order.
pub struct Bases {
    pub ids: Vec<Id>,
    /// Their plaintexts, concatenated.
    pub plain: Vec<u8>,
    /// What they take stored, and their plaintext length: a delta is kept
    /// only if it takes less than half of what the chunk would take
    /// compressed on its own, estimated from these.
    pub stored: u64,
    pub raw: u64,
}

impl Bases {
    fn new() -> Bases {
        Bases { ids: Vec::new(), plain: Vec::new(), stored: 0, raw: 0 }
    }

    /// Adds a full blob unless it is already among the bases or they are
    /// full; returns whether it is among them now.
    fn push(&mut self, indexed: &Indexed, id: Id, plain: Option<&[u8]>) -> bool {
        if self.ids.contains(&id) {
            return true;
        }
        if self.ids.len() >= MAX_BASES {
            return false;
        }
        // Only blobs the index names qualify, as for deduplication: one in
        // a pack awaiting deletion could be deleted before this backup's
        // snapshot keeps it alive.
        let Some(loc) = indexed.index().get(&id) else { return false };
        if loc.entry.blob_type != BlobType::Data || loc.entry.encoding == Encoding::Delta {
            return false;
        }
        let held;
        let plain = match plain {
            Some(p) => p,
            None => match indexed.base(&id) {
                Ok(p) => {
                    held = p;
                    &held[..]
                }
                Err(_) => return false,
            },
        };
        self.ids.push(id);
        self.plain.extend_from_slice(plain);
        self.stored += loc.entry.length as u64;
        self.raw += plain.len() as u64;
        true
    }

    /// The bases a stored delta names, read back: what prune needs to
    /// store a repacked delta as a delta again.
    pub fn load(indexed: &Indexed, ids: &[Id]) -> Option<Bases> {
        let mut b = Bases::new();
        ids.iter().all(|id| b.push(indexed, *id, None)).then_some(b)
    }

    /// Whether a delta of `len` bytes for a chunk of `raw` bytes pays.
    pub fn pays(&self, len: usize, raw: usize) -> bool {
        let alone = self.stored as u128 * raw as u128 / self.raw.max(1) as u128;
        (len as u128) * 2 < alone
    }
}

impl<'a> ParentStream<'a> {
    pub fn new(indexed: &'a Indexed, ids: Vec<Id>) -> ParentStream<'a> {
        let mut positions = HashMap::with_capacity(ids.len());
        let mut starts = Vec::with_capacity(ids.len() + 1);
        let mut at = 0u64;
        for (j, id) in ids.iter().enumerate() {
            positions.entry(*id).or_insert(j);
            starts.push(at);
            at += indexed.locate(id).map_or(0, |l| l.entry.raw_length as u64);
        }
        starts.push(at);
        ParentStream { indexed, ids, starts, positions, cursor: 0, pos: 0, shift: 0, read: HashMap::new() }
    }

    /// The parent chunk holding the parent offset the new offset `pos`
    /// maps to.
    fn mapped(&self, pos: u64) -> usize {
        let at = (pos as i64 + self.shift).max(0) as u64;
        self.starts.partition_point(|s| *s <= at).saturating_sub(1).min(self.ids.len().saturating_sub(1))
    }

    /// The parent chunks worth looking at for the next chunks.
    fn near(&self, ahead: usize) -> impl Iterator<Item = usize> {
        let n = self.ids.len();
        let m = self.mapped(self.pos);
        let c = self.cursor.saturating_sub(1)..(self.cursor + ahead + WINDOW).min(n);
        let m = m.saturating_sub(1)..(m + ahead + WINDOW).min(n);
        c.chain(m)
    }

    /// Reads (in parallel) the parent chunks the next `ahead` new chunks
    /// may pair with, and forgets the others. A parent chunk that cannot
    /// be read is left out: a damaged parent costs only space.
    pub fn prefetch(&mut self, ahead: usize) {
        let keep: std::collections::HashSet<usize> = self.near(2 * ahead).collect();
        self.read.retain(|j, _| keep.contains(j));
        let want: Vec<usize> = keep.into_iter().filter(|j| !self.read.contains_key(j)).collect();
        let got: Vec<(usize, ParentChunk)> = want
            .par_iter()
            .filter_map(|&j| match self.indexed.read_blob(&self.ids[j]) {
                Ok(p) => Some((j, self.behind(j, Arc::new(p)))),
                Err(e) => {
                    tracing::warn!("parent chunk {} unreadable, storing its successor whole: {e}", self.ids[j]);
                    None
                }
            })
            .collect();
        self.read.extend(got);
    }

    /// Parent chunk `j` with the whole blobs behind it.
    fn behind(&self, j: usize, plain: Arc<Vec<u8>>) -> ParentChunk {
        let id = self.ids[j];
        let whole = match self.indexed.index().get(&id) {
            Some(loc) if loc.entry.encoding == Encoding::Delta => self
                .indexed
                .delta_bases(&loc)
                .and_then(|ids| ids.into_iter().map(|b| Ok((b, self.indexed.base(&b)?))).collect())
                .unwrap_or_else(|e| {
                    tracing::warn!("bases of parent chunk {id} unreadable, storing its successor whole: {e}");
                    Vec::new()
                }),
            Some(_) => vec![(id, plain.clone())],
            // Only in a pack awaiting deletion: pairs, never serves as a base.
            None => Vec::new(),
        };
        ParentChunk { plain, whole }
    }

    fn paired(&mut self, j: usize, len: usize) {
        self.cursor = j + 1;
        self.shift = self.starts[j] as i64 - self.pos as i64;
        self.pos += len as u64;
    }

    /// A new chunk of `len` bytes that is already stored: if the parent
    /// holds it, the walk moves past it (near the cursor first: a chunk
    /// repeated in a stream, such as a run of zeros, should not throw it
    /// back).
    pub fn follow(&mut self, id: &Id, len: usize) {
        let lo = self.cursor.saturating_sub(1);
        let hi = (self.cursor + WINDOW).min(self.ids.len());
        match (lo..hi).find(|&j| self.ids[j] == *id).or_else(|| self.positions.get(id).copied()) {
            Some(j) => self.paired(j, len),
            None => self.pos += len as u64,
        }
    }

    /// The parent chunk to encode `chunk` against, and how far into it the
    /// chunk's data begins: the first near either place that starts like
    /// it, else the one its offset maps to.
    pub fn pick(&mut self, chunk: &[u8]) -> Option<(usize, u64)> {
        let head = &chunk[..chunk.len().min(HEAD)];
        let found = self.near(0).find(|j| self.read.get(j).is_some_and(|p| p.plain.starts_with(head)));
        if let Some(j) = found {
            self.paired(j, chunk.len());
            return Some((j, 0));
        }
        let at = (self.pos as i64 + self.shift).max(0) as u64;
        let m = self.mapped(self.pos);
        self.pos += chunk.len() as u64;
        self.read.contains_key(&m).then(|| (m, at.saturating_sub(self.starts[m])))
    }

    /// The full blobs behind parent chunks `j`, `j+1`, … until they hold
    /// a little more than `len` bytes past `skip` bytes into chunk `j`:
    /// each chunk itself, or the bases it is a delta of (bases never chain).
    pub fn bases(&self, (j, skip): (usize, u64), len: usize) -> Option<Bases> {
        let mut out = Bases::new();
        let enough = skip + len as u64 + len as u64 / 8;
        for k in j..self.ids.len() {
            if self.starts[k] - self.starts[j] >= enough || out.ids.len() >= MAX_BASES {
                break;
            }
            let Some(read) = self.read.get(&k) else { break };
            if read.whole.is_empty() || !read.whole.iter().all(|(id, p)| out.push(self.indexed, *id, Some(p))) {
                break;
            }
        }
        (!out.ids.is_empty()).then_some(out)
    }
}

fn zstd_error(code: usize) -> String {
    zstd::zstd_safe::get_error_name(code).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn deltas_round_trip(
            base in proptest::collection::vec(any::<u8>(), 0..20_000),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, proptest::collection::vec(any::<u8>(), 0..40)), 0..20),
        ) {
            let mut data = base.clone();
            for (at, cut, insert) in edits {
                let at = if data.is_empty() { 0 } else { at.index(data.len()) };
                let end = (at + cut).min(data.len());
                data.splice(at..end, insert);
            }
            let ids = [Id([7; 32]), Id([8; 32])];
            let mut stored = b"keep".to_vec();
            encode(3, &ids, &base, &data, &mut stored).unwrap();
            prop_assert_eq!(&stored[..4], b"keep");
            let (named, frame) = split(&stored[4..]).unwrap();
            prop_assert_eq!(named, ids.to_vec());
            let mut out = vec![1, 2, 3];
            decode(&base, frame, data.len(), &mut out).unwrap();
            prop_assert_eq!(out, data);
        }
    }

    #[test]
    fn scattered_changes_cost_little() {
        let rows: Vec<String> = (0..20_000).map(|i| format!("{i}\t1\t0\t{}\n", " ".repeat(84))).collect();
        let base = rows.concat().into_bytes();
        let data: String = rows.iter().enumerate().filter(|(i, _)| i % 100 != 7).map(|(_, r)| r.as_str()).collect();
        let (mut delta, plain) = (Vec::new(), zstd::bulk::compress(data.as_bytes(), 3).unwrap());
        encode(3, &[Id([0; 32])], &base, data.as_bytes(), &mut delta).unwrap();
        // 200 rows removed: a handful of bytes each, against ~1 byte a row
        // for the whole chunk compressed on its own.
        assert!(delta.len() < 200 * 12, "delta {} bytes, plain {}", delta.len(), plain.len());
        assert!(delta.len() * 4 < plain.len(), "delta {} bytes, plain {}", delta.len(), plain.len());
    }

    /// Stores `data` as a stream of a fresh writer, with `parent`'s ids as
    /// its previous version when given; returns the ids and bytes stored.
    fn store(repo: &crate::Repository, data: &[u8], parent: Option<&[Id]>) -> (Vec<Id>, u64) {
        let indexed = repo.clone().index().unwrap();
        let w = crate::Writer::new(&indexed);
        let mut p = parent.map(|ids| ParentStream::new(&indexed, ids.to_vec()));
        let (ids, _) = w.save_stream(data, p.as_mut(), &|_| {}).unwrap();
        let stored = w.finish().unwrap().bytes_stored;
        (ids, stored)
    }

    /// A repository with 16 KiB chunks, so a few megabytes make many.
    pub(crate) fn small_chunk_repo(dir: &std::path::Path) -> crate::Repository {
        use crate::{Backend, Credential, InitOptions, KdfParams};
        let opts = InitOptions {
            kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            chunker: crate::chunker::ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 },
            ..Default::default()
        };
        crate::Repository::init(Backend::local(dir).unwrap(), &Credential::password("pw"), opts).unwrap()
    }

    #[test]
    fn pairing_finds_its_place_again_after_a_long_stretch_of_new_data() {
        let dir = tempfile::tempdir().unwrap();
        let repo = small_chunk_repo(dir.path());
        let rows = |skip: usize| -> Vec<u8> {
            (0..60_000)
                .filter(|i| skip == 0 || i % skip != 3)
                .map(|i| format!("{i}\t{:40}\n", ""))
                .collect::<String>()
                .into()
        };
        let (day_one, whole) = store(&repo, &rows(0), None);
        // New, incompressible data worth many chunks in front (a new
        // table), then the old rows with every 50th one gone.
        let mut day_two = crate::id::Id::of_stored(b"seed").0.repeat(30_000);
        let mut x = 0u64;
        for b in day_two.iter_mut() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b ^= (x >> 56) as u8;
        }
        let front = day_two.len() as u64;
        day_two.extend(rows(50));
        let (ids, stored) = store(&repo, &day_two, Some(&day_one));
        let deltas = ids
            .iter()
            .filter(|id| repo.clone().index().unwrap().locate(id).unwrap().entry.encoding == Encoding::Delta)
            .count();
        assert!(deltas * 2 > ids.len() - (front as usize / 16384), "{deltas} deltas among {} chunks", ids.len());
        // Stored whole, the old rows would take about `whole` again.
        assert!(stored < front + whole * 3 / 4, "stored {stored}: {front} new bytes, day one took {whole}");
        let indexed = repo.clone().index().unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut crate::ContentReader::new(&indexed, &ids), &mut back).unwrap();
        assert!(back == day_two, "day two reads back");
        // Index files naming deltas carry version 2, which builds that
        // predate deltas (and would prune their bases) refuse.
        let versions: Vec<u8> = std::fs::read_dir(dir.path().join("index"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap()[5])
            .collect();
        assert!(versions.contains(&1) && versions.contains(&2), "{versions:?}");
    }

    #[test]
    fn a_wrong_base_or_damaged_frame_fails_or_differs() {
        let base = b"the quick brown fox jumps over the lazy dog ".repeat(100);
        let mut data = base.clone();
        data[2000] = b'!';
        let mut stored = Vec::new();
        encode(3, &[Id([1; 32])], &base, &data, &mut stored).unwrap();
        let (_, frame) = split(&stored).unwrap();
        let other = base.to_ascii_uppercase();
        let mut out = Vec::new();
        assert!(decode(&other, frame, data.len(), &mut out).map_or(true, |_| out != data));
        let mut bad = frame.to_vec();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        assert!(decode(&base, &bad, data.len(), &mut out).map_or(true, |_| out != data));
        assert!(split(&[1; 32]).is_none() && split(&[0; 40]).is_none() && split(&[9; 400]).is_none());
        assert!(encode(3, &[], &base, &data, &mut stored).is_err());
    }
}
