//! Measures the index the way a real open builds it: writes N synthetic
//! blob entries (default 10 million) into index files of a scratch
//! repository, then loads them with `Repository::index()` and reports the
//! bytes per blob and the process's peak resident memory.
//!
//!     cargo run --release -p arkiv-repo --example index_memory [N]

use std::time::Instant;

use arkiv_repo::id::Id;
use arkiv_repo::index::{IndexFile, IndexedPack, BYTES_PER_BLOB};
use arkiv_repo::pack::{BlobType, PackEntry};
use arkiv_repo::{Backend, Credential, InitOptions, KdfParams, Repository};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (VmHWM) so the load is measured on its own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn synthetic_id(i: u64) -> Id {
    Id(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir().expect("scratch directory");
    let cred = Credential::password("index-memory");
    let opts = InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
    let repo = Repository::init(Backend::local(dir.path()).unwrap(), &cred, opts).unwrap();

    // Index files of 64 packs x 4096 blobs, as a long backup flushes them.
    let t0 = Instant::now();
    let (per_pack, packs_per_file) = (4096u64, 64u64);
    let mut i = 0u64;
    let mut pack_no = 0u64;
    let mut files = 0;
    while i < n {
        let mut f = IndexFile::default();
        for _ in 0..packs_per_file {
            if i >= n {
                break;
            }
            let count = per_pack.min(n - i);
            let entries = (0..count)
                .map(|k| PackEntry {
                    id: synthetic_id(i + k),
                    blob_type: BlobType::Data,
                    encoding: arkiv_repo::pack::Encoding::Zstd,
                    offset: (40 + k * 1024) as u32,
                    length: 1024,
                    raw_length: 2048,
                })
                .collect();
            f.packs.push(IndexedPack { id: synthetic_id(u64::MAX - pack_no), salt: [7; 32], entries });
            i += count;
            pack_no += 1;
        }
        repo.save_index_file(&f).unwrap();
        files += 1;
    }
    let written = t0.elapsed();
    drop(repo);

    let repo = Repository::open(Backend::local(dir.path()).unwrap(), &cred).unwrap();
    let before = status_kib("VmRSS:");
    reset_peak();
    let t1 = Instant::now();
    let indexed = repo.index().unwrap();
    let loaded = t1.elapsed();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let index = indexed.index();
    assert_eq!(index.len() as u64, n);

    let t2 = Instant::now();
    let lookups = 1_000_000u64;
    let ids: Vec<Id> = (0..lookups).map(|k| synthetic_id((k * 7919) % n)).collect();
    let prep = t2.elapsed();
    let t3 = Instant::now();
    let found = ids.iter().filter(|id| index.contains(id)).count() as u64;
    let per_lookup = t3.elapsed().as_nanos() as f64 / lookups as f64;
    assert_eq!(found, lookups);
    let _ = prep;

    println!(
        "blobs:                     {n} in {pack_no} packs, {files} index files (written in {:.1} s)",
        written.as_secs_f64()
    );
    println!("entry size:                {BYTES_PER_BLOB} bytes");
    println!("index heap (accounted):    {:.1} bytes/blob", index.memory_bytes() as f64 / n as f64);
    println!("resident after load:       {:.1} bytes/blob", (after.saturating_sub(before) * 1024) as f64 / n as f64);
    println!("peak resident during load: {} MiB (process total)", peak / 1024);
    println!("load time:                 {:.2} s", loaded.as_secs_f64());
    println!("lookup:                    {per_lookup:.0} ns");
}
