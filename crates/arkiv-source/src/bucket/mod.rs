//! Buckets: an object-storage prefix (S3 and S3-compatible servers, GCS,
//! Azure Blob, through OpenDAL) as a source, and as a restore target.
//!
//! A bucket snapshot is an ordinary tree: keys are split on `/` into
//! directories and files, so `ls`, `find`, `check` and a plain directory
//! restore work on it like on any snapshot. Each file node keeps the
//! object's size, last-modified time (as `mtime_ns`) and ETag; the next
//! backup reuses the content of every object whose size and ETag (or, where
//! the service gives no ETag, size and last-modified time) are unchanged,
//! without reading it.
//!
//! Credentials come only from each provider's environment variables and
//! files (see `arkiv_repo::location`); what a snapshot records is the
//! location without its query and the endpoint's host.

pub mod backup;
pub mod restore;

use std::io::Read;
use std::time::Duration;

use arkiv_repo::backend::opendal::{self, ErrorKind, Operator};
use arkiv_repo::backend::{block_on, describe, IoPolicy, Store};
use arkiv_repo::location::{open_store, Location, Scheme, StoreOptions};

use crate::error::{Error, Result};

pub use backup::{backup, BucketSource};
pub use restore::{restore, BucketRestoreOptions, BucketRestoreReport};

/// The snapshot `source` of a bucket backup.
pub const KIND: &str = "bucket";

/// Size of each ranged read of an object (and of each part written on
/// restore): large objects are streamed in pieces this big, so memory per
/// object in flight stays bounded whatever the object's size.
const PIECE: u64 = 8 << 20;

/// Objects read or written at once: network round trips, not CPU, limit a
/// bucket backup, so more requests in flight than cores pays off.
const IN_FLIGHT: usize = 8;

/// Whether `spec` names an object-storage prefix (`s3://`, `gs://`,
/// `azblob://`, …) rather than a path or another kind of source.
pub fn is_bucket_url(spec: &str) -> bool {
    let Some((scheme, _)) = spec.split_once("://") else { return false };
    matches!(scheme.to_ascii_lowercase().as_str(), "s3" | "gs" | "gcs" | "azblob" | "az")
}

/// One object-storage prefix, opened.
pub struct Bucket {
    store: Store,
    /// The location without query or credentials.
    location: String,
    /// Host (and port) of the endpoint, or `default` for the provider's own.
    endpoint: String,
    policy: IoPolicy,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.location)
    }
}

/// An object as listed.
#[derive(Debug, Clone)]
struct Object {
    /// Key relative to the prefix.
    key: String,
    size: u64,
    etag: Option<String>,
    mtime_ns: Option<i64>,
}

impl Bucket {
    /// Opens the prefix `spec` names. No request is made yet: a wrong
    /// endpoint, credential or bucket shows at the first listing.
    pub fn open(spec: &str, opts: &StoreOptions) -> Result<Bucket> {
        if !is_bucket_url(spec) {
            return Err(Error::Invalid(format!(
                "'{}' is not a bucket location (use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or azblob://CONTAINER/PREFIX)",
                arkiv_repo::location::redact(spec)
            )));
        }
        let loc = Location::parse(spec)?;
        debug_assert!(matches!(loc.scheme, Scheme::S3 | Scheme::Gcs | Scheme::Azblob));
        let endpoint = loc.options.get("endpoint").map(|e| endpoint_host(e)).unwrap_or_else(|| "default".to_string());
        let store = open_store(spec, opts)?;
        Ok(Bucket { store, location: loc.display(), endpoint, policy: opts.policy })
    }

    /// The location as messages and snapshots show it.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The endpoint's host and port (`default` for the provider's own).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn op(&self) -> &Operator {
        self.store.op()
    }

    /// Runs `f` until it succeeds, fails permanently or runs out of retries,
    /// as the repository's own storage calls do.
    fn retry<T, F, Fut>(&self, f: F) -> std::result::Result<T, opendal::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::IntoFuture<Output = std::result::Result<T, opendal::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match block_on(f().into_future()) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_temporary() && attempt < self.policy.retries => {
                    let cap = self.policy.backoff.saturating_mul(1 << attempt.min(16)).min(Duration::from_secs(30));
                    let wait = cap.mul_f64(jitter());
                    attempt += 1;
                    tracing::debug!("{}: {} (retry {attempt} in {wait:?})", self.location, describe(&e));
                    std::thread::sleep(wait);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// An error naming the bucket, what was being done and the key.
    fn error(&self, doing: &str, key: &str, e: &opendal::Error) -> Error {
        let what = if key.is_empty() { String::new() } else { format!(" {key}") };
        let said = describe(e);
        // S3 reports a missing bucket as a configuration error, not a 404.
        let no_bucket = said.contains("NoSuchBucket") || said.contains("ContainerNotFound");
        let hint = match e.kind() {
            _ if no_bucket => " (does the bucket exist?)",
            ErrorKind::NotFound if key.is_empty() => " (does the bucket exist?)",
            ErrorKind::PermissionDenied => " (check the credentials in the provider's environment variables)",
            _ => "",
        };
        Error::Source { location: self.location.clone(), message: format!("{doing}{what}: {said}{hint}") }
    }

    /// Every object under the prefix, sorted by key. Zero-length keys
    /// ending in `/` (the "folder" markers of some consoles) are not
    /// objects of the application and are left out.
    fn list(&self) -> Result<Vec<Object>> {
        let entries =
            self.retry(|| self.op().list_with("/").recursive(true)).map_err(|e| self.error("cannot list", "", &e))?;
        let mut out: Vec<Object> = entries
            .into_iter()
            .filter(|e| !e.metadata().is_dir() && !e.path().ends_with('/'))
            .map(|e| {
                let m = e.metadata();
                Object {
                    key: e.path().trim_start_matches('/').to_string(),
                    size: m.content_length(),
                    etag: m.etag().filter(|t| !t.is_empty()).map(str::to_string),
                    mtime_ns: m.last_modified().map(|t| {
                        let t = t.into_inner();
                        t.as_second().saturating_mul(1_000_000_000).saturating_add(t.subsec_nanosecond() as i64)
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// `host[:port]` of an endpoint URL, without scheme, user or path: a user
/// name or password put in an endpoint must not reach a snapshot.
fn endpoint_host(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map(|(_, r)| r).unwrap_or(endpoint);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority).to_string()
}

/// A factor in [0, 1) for backoff jitter; the low bits of the clock are
/// random enough to keep parallel retries apart.
fn jitter() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos % 1_000_000) as f64 / 1_000_000.0
}

/// Why reading an object stopped.
enum ReadStop {
    /// The object is gone or was replaced since it was listed.
    Changed,
    Gone,
    Failed(opendal::Error),
}

/// One object's bytes as a `Read`, fetched in ranged requests of [`PIECE`]
/// bytes. Each request carries the listed ETag (`If-Match`), so pieces of
/// two versions of an object replaced mid-read are never stitched together.
struct ObjectReader<'a> {
    bucket: &'a Bucket,
    key: &'a str,
    etag: Option<&'a str>,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    at: usize,
    stop: Option<ReadStop>,
}

impl<'a> ObjectReader<'a> {
    fn new(bucket: &'a Bucket, key: &'a str, etag: Option<&'a str>, size: u64) -> ObjectReader<'a> {
        ObjectReader { bucket, key, etag, size, pos: 0, buf: Vec::new(), at: 0, stop: None }
    }

    fn fetch(&mut self) -> std::result::Result<Vec<u8>, opendal::Error> {
        let end = (self.pos + PIECE).min(self.size);
        let range = self.pos..end;
        let (op, key, etag) = (self.bucket.op(), self.key, self.etag);
        self.bucket.retry(|| {
            let range = range.clone();
            async move {
                let mut r = op.read_with(key).range(range);
                if let Some(t) = etag {
                    r = r.if_match(t);
                }
                r.await.map(|b| b.to_vec())
            }
        })
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            match self.fetch() {
                // An object that shrank since it was listed (possible only
                // without an ETag to hold it to) ends where it ends now.
                Ok(b) if b.is_empty() => return Ok(0),
                Ok(b) => {
                    self.pos += b.len() as u64;
                    self.buf = b;
                    self.at = 0;
                }
                Err(e) => {
                    let msg = describe(&e);
                    self.stop = Some(match e.kind() {
                        ErrorKind::ConditionNotMatch => ReadStop::Changed,
                        ErrorKind::NotFound => ReadStop::Gone,
                        ErrorKind::RangeNotSatisfied => return Ok(0),
                        _ => ReadStop::Failed(e),
                    });
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_endpoint_is_host_and_port_only() {
        assert_eq!(endpoint_host("http://127.0.0.1:3900"), "127.0.0.1:3900");
        assert_eq!(endpoint_host("https://user:hunter2@s3.example.net:9000/base?x=1"), "s3.example.net:9000");
        assert_eq!(endpoint_host("s3.example.net"), "s3.example.net");
    }

    #[test]
    fn only_object_storage_urls_are_buckets() {
        for s in ["s3://b/p", "S3://b", "gs://b/p", "gcs://b", "azblob://c/p", "az://c"] {
            assert!(is_bucket_url(s), "{s}");
        }
        for s in ["/srv/data", "sftp://h/p", "postgres://db", "command:ls", "s3:/b"] {
            assert!(!is_bucket_url(s), "{s}");
        }
        let e = Bucket::open("sftp://host/p", &StoreOptions::default()).unwrap_err().to_string();
        assert!(e.contains("not a bucket location"), "{e}");
    }
}
