//! Per-core throughput of each stage of the write path, on the same data
//! `bench/stages.sh` feeds to `b3sum` and `zstd -3` for reference.
//!
//!     cargo bench -p arkiv-repo --bench throughput
//!
//! The input is ARKIV_BENCH_FILE when set (a sample of the benchmark
//! dataset), otherwise 32 MiB of mixed text-like and random data.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use arkiv_repo::chunker::{Chunker, ChunkerParams};
use arkiv_repo::crypto::{offset_nonce, random_salt, MasterKey};

fn input() -> Vec<u8> {
    if let Ok(path) = std::env::var("ARKIV_BENCH_FILE") {
        let mut d = std::fs::read(&path).expect("ARKIV_BENCH_FILE is readable");
        d.truncate(64 << 20);
        return d;
    }
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let words = ["backup ", "restore ", "snapshot ", "index ", "pack ", "chunk ", "{\"id\": ", "42, ", "\n"];
    let mut out = Vec::with_capacity(32 << 20);
    while out.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    while out.len() < 32 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn stages(c: &mut Criterion) {
    let data = input();
    let key = MasterKey::generate();
    let chunker = Chunker::new(key.gear_table(), ChunkerParams::default());
    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("chunk (keyed FastCDC)", |b| b.iter(|| chunker.split_all(&data).len()));
    g.bench_function("hash (keyed BLAKE3)", |b| b.iter(|| key.blob_id(&data)));
    g.bench_function("compress (zstd -3)", |b| {
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        b.iter(|| z.compress(&data).unwrap().len())
    });
    g.bench_function("encrypt (AES-256-GCM)", |b| {
        let cipher = key.pack_cipher(&random_salt());
        let mut buf = Vec::with_capacity(data.len() + 16);
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&data);
            cipher.seal_tail(&offset_nonce(40), &[], &mut buf, 0);
            buf.len()
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
