//! Content-defined chunking: FastCDC (Xia et al., 2016/2020) with normalized
//! chunking and a secret gear table.
//!
//! Written here rather than taken from the `fastcdc` crate because that crate
//! keys its table only by XOR-ing a public table with one 64-bit seed. Chunk
//! boundaries then remain a near-public function of the content, which lets
//! an attacker who sees only pack sizes fingerprint known files (the 2025
//! chunk-size attacks on restic and borg). Here all 256 gear values come from
//! the repository's secret (see [`crate::crypto::MasterKey::gear_table`]).

use std::io::{self, Read};

/// Chunk size bounds. Stored in the repository config so every writer of a
/// repository cuts the same data the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min_size >= 64
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.avg_size.is_power_of_two()
            && self.max_size <= 64 * 1024 * 1024;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker sizes {}/{}/{} must satisfy 64 <= min <= avg <= max <= 64 MiB with avg a power of two",
                self.min_size, self.avg_size, self.max_size
            ))
        }
    }
}

/// Finds cut points. Cheap to clone; holds only the table and masks.
#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    params: ChunkerParams,
    /// Harder mask (more bits) before the average size: fewer small chunks.
    mask_small: u64,
    /// Easier mask after the average size: fewer chunks hit the maximum.
    mask_large: u64,
}

/// Normalization level 2, as the FastCDC paper recommends: the chunk size
/// distribution concentrates around the average.
const NORMALIZATION: u32 = 2;

fn high_mask(bits: u32) -> u64 {
    // Gear hashes shift left, so the high bits depend on the most bytes
    // (the last 64); cut decisions look at those.
    if bits == 0 {
        0
    } else {
        u64::MAX << (64 - bits)
    }
}

impl Chunker {
    pub fn new(gear: [u64; 256], params: ChunkerParams) -> Self {
        let bits = params.avg_size.trailing_zeros();
        Chunker {
            gear: Box::new(gear),
            params,
            mask_small: high_mask(bits + NORMALIZATION),
            mask_large: high_mask(bits.saturating_sub(NORMALIZATION)),
        }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the first chunk of `data`. `data` must hold at least
    /// `max_size` bytes unless it is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let min = self.params.min_size as usize;
        let n = data.len();
        if n <= min {
            return n;
        }
        let max = n.min(self.params.max_size as usize);
        let center = n.min(self.params.avg_size as usize);
        let gear = &*self.gear;
        let mut hash: u64 = 0;
        let mut i = min;
        while i < center {
            hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
            if hash & self.mask_small == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < max {
            hash = (hash << 1).wrapping_add(gear[data[i] as usize]);
            if hash & self.mask_large == 0 {
                return i + 1;
            }
            i += 1;
        }
        max
    }

    /// Splits a whole in-memory buffer into chunk lengths.
    pub fn split_all(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let c = self.cut(data);
            out.push(c);
            data = &data[c..];
        }
        out
    }

    /// Reads `r` to the end, handing batches of consecutive chunks to `f`.
    /// A batch is about `batch_bytes` long so the caller can process its
    /// chunks in parallel while memory stays bounded.
    pub fn stream<R: Read>(
        &self,
        mut r: R,
        batch_bytes: usize,
        mut f: impl FnMut(&[&[u8]]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let max = self.params.max_size as usize;
        let want = batch_bytes.max(max) + max;
        // One buffer, zeroed once; `filled` marks the valid prefix. Reads
        // from a pipe return a few KiB at a time, so nothing per read may
        // touch the rest of the buffer.
        let mut buf: Vec<u8> = vec![0; want];
        let mut filled = 0usize;
        let mut eof = false;
        let mut total = 0u64;
        loop {
            // Fill until the buffer holds a full batch plus one maximal chunk,
            // so every cut except the last is made with full lookahead.
            while !eof && filled < want {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => eof = true,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                return Ok(total);
            }
            let data = &buf[..filled];
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut pos = 0;
            while pos < filled && (eof || filled - pos >= max) && (eof || pos < batch_bytes) {
                let c = self.cut(&data[pos..]);
                chunks.push(&data[pos..pos + c]);
                pos += c;
            }
            f(&chunks)?;
            total += pos as u64;
            buf.copy_within(pos..filled, 0);
            filled -= pos;
            if eof && filled == 0 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        let k = crate::crypto::MasterKey::generate();
        Chunker::new(k.gear_table(), ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 })
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn chunks_cover_input_and_respect_bounds(len in 0usize..60_000, seed in any::<u64>()) {
            let c = small();
            let data = pseudo_random(len, seed);
            let cuts = c.split_all(&data);
            prop_assert_eq!(cuts.iter().sum::<usize>(), len);
            for (i, &l) in cuts.iter().enumerate() {
                prop_assert!(l <= 4096);
                if i + 1 < cuts.len() { prop_assert!(l >= 256); }
            }
        }

        #[test]
        fn streaming_matches_whole_buffer(len in 0usize..60_000, seed in any::<u64>(), batch in 1usize..20_000) {
            let c = small();
            let data = pseudo_random(len, seed);
            let mut streamed = Vec::new();
            // A reader that returns short reads, as pipes do.
            struct Trickle<'a>(&'a [u8]);
            impl Read for Trickle<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = b.len().min(self.0.len()).min(777);
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let total = c.stream(Trickle(&data), batch, |chunks| {
                streamed.extend(chunks.iter().map(|ch| ch.len()));
                Ok(())
            }).unwrap();
            prop_assert_eq!(total as usize, len);
            prop_assert_eq!(streamed, c.split_all(&data));
        }
    }

    #[test]
    fn an_insertion_only_moves_nearby_boundaries() {
        let c = small();
        let data = pseudo_random(200_000, 7);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted".iter().copied());
        let ends = |d: &[u8]| {
            let mut pos = 0;
            c.split_all(d)
                .into_iter()
                .map(|l| {
                    pos += l;
                    pos
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let (a, b) = (ends(&data), ends(&edited));
        let before: Vec<_> = a.iter().filter(|&&e| e < 99_000).collect();
        assert!(before.iter().all(|e| b.contains(e)), "boundaries before the edit must not move");
        let after_shared = a.iter().filter(|&&e| e > 110_000 && b.contains(&(e + 8))).count();
        assert!(after_shared > 10, "boundaries after the edit resynchronise");
    }

    #[test]
    fn average_is_near_the_target() {
        let k = crate::crypto::MasterKey::generate();
        let c = Chunker::new(k.gear_table(), ChunkerParams::default());
        let data = pseudo_random(64 << 20, 3);
        let cuts = c.split_all(&data);
        let avg = data.len() / cuts.len();
        assert!((700_000..1_500_000).contains(&avg), "average chunk {avg}");
    }

    #[test]
    fn different_secrets_cut_differently() {
        let data = pseudo_random(100_000, 9);
        assert_ne!(small().split_all(&data), small().split_all(&data));
    }
}
