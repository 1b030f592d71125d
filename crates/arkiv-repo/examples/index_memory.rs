//! Measures the in-memory index with N synthetic blobs (default 10
//! million): bytes per blob as the index accounts them, the process's
//! resident memory before and after, and lookup speed.
//!
//!     cargo run --release -p arkiv-repo --example index_memory [N]

use std::time::Instant;

use arkiv_repo::id::Id;
use arkiv_repo::index::{Index, IndexFile, IndexedPack, BYTES_PER_BLOB};
use arkiv_repo::pack::{BlobType, PackEntry};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k * 1024)
        .unwrap_or(0)
}

fn synthetic_id(i: u64) -> Id {
    Id(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let per_pack = 4096u64;
    let before = rss_bytes();
    let t0 = Instant::now();
    let mut index = Index::new();
    index.reserve(n as usize);
    let mut i = 0u64;
    let mut pack_no = 0u64;
    while i < n {
        let count = per_pack.min(n - i);
        // One index file per pack here; a real repository has fewer, larger
        // ones, which only lowers the transient cost.
        let entries = (0..count)
            .map(|k| PackEntry {
                id: synthetic_id(i + k),
                blob_type: BlobType::Data,
                compressed: true,
                offset: (k * 1024) as u32,
                length: 1024,
                raw_length: 2048,
            })
            .collect();
        index.add_file(
            Id::default(),
            IndexFile {
                supersedes: vec![],
                packs: vec![IndexedPack { id: synthetic_id(u64::MAX - pack_no), salt: [0; 32], entries }],
            },
        );
        i += count;
        pack_no += 1;
    }
    index.finish();
    let built = t0.elapsed();
    let after = rss_bytes();
    let t1 = Instant::now();
    let lookups = 1_000_000u64;
    let mut found = 0;
    for k in 0..lookups {
        found += index.contains(&synthetic_id((k * 7919) % n)) as u64;
    }
    let per_lookup = t1.elapsed().as_nanos() as f64 / lookups as f64;
    assert_eq!(found, lookups);
    println!("blobs:                    {n}");
    println!("packs:                    {pack_no}");
    println!("entry size:               {BYTES_PER_BLOB} bytes");
    println!(
        "index heap (accounted):   {} bytes = {:.1} bytes/blob",
        index.memory_bytes(),
        index.memory_bytes() as f64 / n as f64
    );
    println!(
        "process RSS growth:       {} bytes = {:.1} bytes/blob",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );
    println!("build time:               {:.2} s", built.as_secs_f64());
    println!("lookup:                   {per_lookup:.0} ns");
}
