//! Fault injection for storage: an OpenDAL layer that makes operations fail,
//! stall, hang or leave truncated objects, so tests (and `ARKIV_FAULTS` runs
//! of the binary) can prove the repository survives an unreliable store.
//!
//! Injected errors are *temporary* (`ErrorKind::Unexpected`, message
//! "injected fault"), because that is what a flaky network produces and what
//! retry logic must handle.

/// Implements the named `Service` methods by passing each call to
/// `self.inner` unchanged. Arkiv's OpenDAL layers (this one, and the FTP
/// work-arounds in `location.rs`) each change a few operations; OpenDAL's
/// `Service` has no default methods, so without this each layer would
/// spell out every other operation again. Methods returning an associated
/// type (`write`, `delete`, `copy`, `compose`) need that type to be the
/// inner service's.
macro_rules! forward_to_inner {
    ($($method:ident),* $(,)?) => { $( $crate::fault::forward_to_inner!(@ $method); )* };
    (@ info) => { fn info(&self) -> ServiceInfo { self.inner.info() } };
    (@ capability) => { fn capability(&self) -> Capability { self.inner.capability() } };
    (@ create_dir) => {
        async fn create_dir(&self, ctx: &OperationContext, path: &str, args: OpCreateDir) -> Result<RpCreateDir> {
            self.inner.create_dir(ctx, path, args).await
        }
    };
    (@ stat) => {
        async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
            self.inner.stat(ctx, path, args).await
        }
    };
    (@ write) => {
        fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
            self.inner.write(ctx, path, args)
        }
    };
    (@ delete) => {
        fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> { self.inner.delete(ctx) }
    };
    (@ copy) => {
        fn copy(&self, ctx: &OperationContext, from: &str, to: &str, args: OpCopy) -> Result<Self::Copier> {
            self.inner.copy(ctx, from, to, args)
        }
    };
    (@ compose) => {
        fn compose(&self, ctx: &OperationContext, to: &str, args: OpCompose) -> Result<Self::Composer> {
            self.inner.compose(ctx, to, args)
        }
    };
    (@ rename) => {
        async fn rename(&self, ctx: &OperationContext, from: &str, to: &str, args: OpRename) -> Result<RpRename> {
            self.inner.rename(ctx, from, to, args).await
        }
    };
    (@ restore) => {
        async fn restore(&self, ctx: &OperationContext, path: &str, args: OpRestore) -> Result<RpRestore> {
            self.inner.restore(ctx, path, args).await
        }
    };
    (@ presign) => {
        async fn presign(&self, ctx: &OperationContext, path: &str, args: OpPresign) -> Result<RpPresign> {
            self.inner.presign(ctx, path, args).await
        }
    };
}
pub(crate) use forward_to_inner;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opendal::raw::oio;
use opendal::raw::*;
use opendal::{Buffer, BytesRange, Capability, Error, ErrorKind, Metadata, OperationContext, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to inject, and how often. Rates are probabilities in `[0, 1]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that an operation (read, write, stat, list, delete) fails.
    pub error_rate: f64,
    /// Delay added before each operation.
    pub latency: Duration,
    /// Probability that a write stores only the first half of its bytes under
    /// its final path and then fails, like an upload cut mid-way on a store
    /// that keeps partial objects.
    pub truncate_rate: f64,
    /// Probability that an operation never completes.
    pub hang_rate: f64,
    /// Seed for reproducible faults; entropy when `None`.
    pub seed: Option<u64>,
}

impl FaultConfig {
    /// Parses `"errors=0.05,latency=20ms,truncate=0.01,hang=0,seed=7"`.
    /// Every key is optional; latency takes a unit (`us`, `ms`, `s`).
    pub fn parse(spec: &str) -> std::result::Result<FaultConfig, String> {
        let mut cfg = FaultConfig::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) =
                item.split_once('=').ok_or_else(|| format!("fault spec item {item:?} is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "errors" => cfg.error_rate = parse_rate(key, value)?,
                "truncate" => cfg.truncate_rate = parse_rate(key, value)?,
                "hang" => cfg.hang_rate = parse_rate(key, value)?,
                "latency" => cfg.latency = parse_duration(value)?,
                "seed" => {
                    cfg.seed = Some(value.parse().map_err(|_| format!("fault seed {value:?} is not an integer"))?)
                }
                _ => return Err(format!("unknown fault key {key:?} (expected errors, latency, truncate, hang, seed)")),
            }
        }
        Ok(cfg)
    }
}

fn parse_rate(key: &str, value: &str) -> std::result::Result<f64, String> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("fault rate {key}={value:?} must be a number between 0 and 1")),
    }
}

fn parse_duration(value: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("fault latency {value:?} must be a number with a unit: us, ms or s (e.g. 20ms)");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let n: f64 = value[..split].parse().map_err(|_| bad())?;
    let secs = match &value[split..] {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Counts of injected faults, shared by every clone of a [`FaultLayer`] and
/// the services it builds, so tests can check that faults really happened.
/// `ops` counts operations that went through fault selection; `errors` does
/// not include truncated writes.
#[derive(Debug, Clone, Default)]
pub struct FaultStats {
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    truncations: Arc<AtomicU64>,
    hangs: Arc<AtomicU64>,
}

impl FaultStats {
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    pub fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::Relaxed)
    }
    pub fn hangs(&self) -> u64 {
        self.hangs.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct State {
    cfg: FaultConfig,
    rng: Mutex<StdRng>,
    stats: FaultStats,
}

impl State {
    fn roll(&self, p: f64) -> bool {
        // Drawing only for non-zero rates keeps a seed's sequence stable when
        // other kinds of fault are switched on or off.
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).gen::<f64>() < p
    }

    /// Latency, then maybe hang, then maybe fail: the common prologue of
    /// every faulted operation.
    async fn before(&self, op: &'static str) -> Result<()> {
        self.stats.ops.fetch_add(1, Ordering::Relaxed);
        if !self.cfg.latency.is_zero() {
            tokio::time::sleep(self.cfg.latency).await;
        }
        if self.roll(self.cfg.hang_rate) {
            self.stats.hangs.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
        if self.roll(self.cfg.error_rate) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(injected(op, "injected fault"));
        }
        Ok(())
    }
}

fn injected(op: &'static str, msg: &'static str) -> Error {
    Error::new(ErrorKind::Unexpected, msg).with_operation(op).set_temporary()
}

/// The OpenDAL layer. Clones share one random stream and one [`FaultStats`].
#[derive(Debug, Clone)]
pub struct FaultLayer {
    state: Arc<State>,
}

impl FaultLayer {
    pub fn new(cfg: FaultConfig) -> FaultLayer {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        FaultLayer { state: Arc::new(State { cfg, rng: Mutex::new(rng), stats: FaultStats::default() }) }
    }

    pub fn stats(&self) -> FaultStats {
        self.state.stats.clone()
    }
}

impl Layer for FaultLayer {
    // The operator replays every layer whenever one is added, so the state
    // lives in the layer, not in the service built here.
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(FaultService { inner, state: self.state.clone() })
    }
}

#[doc(hidden)]
#[derive(Debug)]
pub struct FaultService {
    inner: Servicer,
    state: Arc<State>,
}

impl Service for FaultService {
    type Reader = FaultReader;
    type Writer = FaultWriter;
    type Lister = FaultLister;
    type Deleter = FaultDeleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    // Not faulted: Arkiv's repository never copies, composes, renames,
    // restores or presigns, and creates directories only where writes
    // would anyway.
    forward_to_inner!(info, capability, create_dir, copy, compose, rename, restore, presign);

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.state.before("stat").await?;
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        Ok(FaultReader { inner: self.inner.read(ctx, path, args)?, state: self.state.clone() })
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        Ok(FaultWriter { inner: self.inner.write(ctx, path, args)?, state: self.state.clone(), buf: Vec::new() })
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        Ok(FaultDeleter { inner: self.inner.delete(ctx)?, state: self.state.clone() })
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        Ok(FaultLister { inner: self.inner.list(ctx, path, args)?, state: self.state.clone(), started: false })
    }
}

/// Fails before any data is returned, like a GET that is refused.
#[doc(hidden)]
pub struct FaultReader {
    inner: oio::Reader,
    state: Arc<State>,
}

impl oio::Read for FaultReader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        self.state.before("read").await?;
        self.inner.open(range).await
    }

    async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
        self.state.before("read").await?;
        self.inner.read(range).await
    }
}

/// Buffers the whole object so the fault can be chosen at `close`, where an
/// upload commits: that is the only point at which "stored half of it" can
/// happen on a real store.
#[doc(hidden)]
pub struct FaultWriter {
    inner: oio::Writer,
    state: Arc<State>,
    buf: Vec<Buffer>,
}

impl oio::Write for FaultWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.buf.push(bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        let all: Buffer = std::mem::take(&mut self.buf).into_iter().flatten().collect();
        if let Err(e) = self.state.before("write").await {
            // Nothing may reach the store, but the inner writer may hold a
            // temporary file or an open multipart upload.
            let _ = self.inner.abort().await;
            return Err(e);
        }
        if self.state.roll(self.state.cfg.truncate_rate) {
            self.state.stats.truncations.fetch_add(1, Ordering::Relaxed);
            self.inner.write(all.slice(..all.len() / 2)).await?;
            self.inner.close().await?;
            return Err(injected("write", "injected fault: write truncated"));
        }
        self.inner.write(all).await?;
        self.inner.close().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.buf.clear();
        self.inner.abort().await
    }
}

/// Fails on the first page, as a refused LIST request would.
#[doc(hidden)]
pub struct FaultLister {
    inner: oio::Lister,
    state: Arc<State>,
    started: bool,
}

impl oio::List for FaultLister {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        if !self.started {
            self.state.before("list").await?;
            self.started = true;
        }
        self.inner.next().await
    }
}

#[doc(hidden)]
pub struct FaultDeleter {
    inner: oio::Deleter,
    state: Arc<State>,
}

impl oio::Delete for FaultDeleter {
    async fn delete(&mut self, path: &str, args: OpDelete) -> Result<()> {
        self.state.before("delete").await?;
        self.inner.delete(path, args).await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opendal::services::Memory;
    use opendal::Operator;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// A faulty operator and a clean one over the same memory store.
    fn ops(cfg: FaultConfig) -> (Operator, Operator, FaultStats) {
        let clean = Operator::new(Memory::default()).unwrap();
        let layer = FaultLayer::new(cfg);
        let stats = layer.stats();
        (clean.clone().layer(layer), clean, stats)
    }

    fn assert_injected<T: std::fmt::Debug>(r: Result<T>) {
        let e = r.unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert_eq!(e.kind(), ErrorKind::Unexpected);
        assert!(e.message().starts_with("injected fault"), "{e}");
    }

    #[test]
    fn parse_accepts_example_and_rejects_bad_values() {
        let cfg = FaultConfig::parse("errors=0.05,latency=20ms,truncate=0.01,hang=0,seed=7").unwrap();
        let want = FaultConfig {
            error_rate: 0.05,
            latency: Duration::from_millis(20),
            truncate_rate: 0.01,
            hang_rate: 0.0,
            seed: Some(7),
        };
        assert_eq!(cfg, want);
        assert_eq!(FaultConfig::parse("").unwrap(), FaultConfig::default());
        assert_eq!(FaultConfig::parse("latency=1.5s").unwrap().latency, Duration::from_millis(1500));
        for bad in ["errors=2", "bogus=1", "latency=abc", "latency=20", "errors", "seed=-1", "hang=NaN"] {
            let e = FaultConfig::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(FaultConfig::parse("bogus=1").unwrap_err().contains("bogus"));
    }

    #[test]
    fn error_rate_one_fails_every_op_with_a_temporary_error() {
        let (op, clean, stats) = ops(FaultConfig { error_rate: 1.0, ..Default::default() });
        block_on(async {
            clean.write("a", vec![1u8; 10]).await.unwrap();
            assert_injected(op.write("b", vec![2u8; 10]).await);
            assert_injected(op.read("a").await);
            assert_injected(op.stat("a").await);
            assert_injected(op.list("/").await);
            assert_injected(op.delete("a").await);
            // Failed operations must not have touched the store.
            assert!(clean.exists("a").await.unwrap());
            assert!(!clean.exists("b").await.unwrap());
        });
        assert_eq!(stats.errors(), 5);
        assert_eq!(stats.truncations(), 0);
    }

    #[test]
    fn error_rate_zero_passes_everything_through() {
        let (op, _, stats) = ops(FaultConfig { latency: Duration::from_millis(1), ..Default::default() });
        block_on(async {
            let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
            let mut w = op.writer("dir/obj").await.unwrap();
            w.write(data[..300].to_vec()).await.unwrap();
            w.write(data[300..].to_vec()).await.unwrap();
            w.close().await.unwrap();
            assert_eq!(op.read("dir/obj").await.unwrap().to_vec(), data);
            assert_eq!(op.stat("dir/obj").await.unwrap().content_length(), 1000);
            let names: Vec<String> = op.list("dir/").await.unwrap().iter().map(|e| e.path().to_string()).collect();
            assert!(names.contains(&"dir/obj".to_string()), "{names:?}");
            op.delete("dir/obj").await.unwrap();
            assert!(!op.exists("dir/obj").await.unwrap());
        });
        assert!(stats.ops() >= 6);
        assert_eq!(stats.errors() + stats.truncations() + stats.hangs(), 0);
    }

    #[test]
    fn truncate_rate_one_stores_half_and_errors() {
        let (op, clean, stats) = ops(FaultConfig { truncate_rate: 1.0, ..Default::default() });
        block_on(async {
            assert_injected(op.write("pack", vec![7u8; 1001]).await);
            let stored = clean.read("pack").await.unwrap().to_vec();
            assert_eq!(stored, vec![7u8; 500]);
        });
        assert_eq!(stats.truncations(), 1);
        assert_eq!(stats.errors(), 0);
    }

    #[test]
    fn seeded_error_rate_is_roughly_honoured_and_reproducible() {
        let run = || {
            let (op, _, stats) = ops(FaultConfig { error_rate: 0.3, seed: Some(42), ..Default::default() });
            let failed: Vec<bool> = block_on(async {
                let mut failed = Vec::new();
                for i in 0..200 {
                    failed.push(op.write(&format!("obj/{i}"), vec![0u8; 16]).await.is_err());
                }
                failed
            });
            assert_eq!(failed.iter().filter(|f| **f).count() as u64, stats.errors());
            failed
        };
        let first = run();
        let n = first.iter().filter(|f| **f).count();
        assert!((40..=80).contains(&n), "{n} of 200 writes failed at a 0.3 error rate");
        assert_eq!(first, run(), "the same seed must inject the same faults");
    }

    #[test]
    fn hang_rate_one_never_completes() {
        let (op, _, stats) = ops(FaultConfig { hang_rate: 1.0, ..Default::default() });
        block_on(async {
            let r = tokio::time::timeout(Duration::from_millis(50), op.stat("x")).await;
            assert!(r.is_err(), "stat should have hung");
        });
        assert_eq!(stats.hangs(), 1);
    }
}
