//! Snapshots: one sealed file per backup, naming its root tree and saying
//! what was protected, from where, when, and how it went.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// Counts a backup reports and keeps with its snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub started: Option<DateTime<Utc>>,
    pub duration_secs: f64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Logical size of everything the snapshot holds.
    pub total_bytes: u64,
    pub total_files: u64,
    /// Bytes actually read from the source (unchanged files are not read).
    pub bytes_read: u64,
    pub blobs_new: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: u64,
    /// Bytes written to storage for new blobs (compressed, encrypted).
    pub bytes_stored: u64,
}

/// Something the backup left out, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
    /// True when the item was meant to be saved but could not be (makes the
    /// backup partial); false for things Arkiv never saves (sockets, devices).
    pub error: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub time: DateTime<Utc>,
    /// What kind of source made it: "files" here; databases later.
    pub source: String,
    pub host: String,
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Source-specific facts (a base backup's LSNs, a dump's server version).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The arkiv version that wrote it.
    pub program: String,
    /// For a copy made by `arkiv copy`: the id of the snapshot first taken
    /// (in whichever repository), so copies of copies are recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

impl Snapshot {
    pub fn new(source: &str, tree: Id) -> Snapshot {
        Snapshot {
            time: Utc::now(),
            source: source.to_string(),
            host: hostname(),
            username: username(),
            tags: Vec::new(),
            paths: Vec::new(),
            tree,
            parent: None,
            summary: Summary::default(),
            skipped: Vec::new(),
            metadata: serde_json::Value::Null,
            program: format!("arkiv {}", env!("CARGO_PKG_VERSION")),
            original: None,
        }
    }

    /// True when something that should have been saved was not.
    pub fn is_partial(&self) -> bool {
        self.skipped.iter().any(|s| s.error)
    }
}

/// A snapshot with the id it is stored under.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotEntry {
    pub id: Id,
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

impl SnapshotEntry {
    /// Which backup this is, whichever repository holds it: copies share
    /// the identity of the snapshot they were made from.
    pub fn identity(&self) -> Id {
        self.snapshot.original.unwrap_or(self.id)
    }
}

/// Narrows which snapshots `latest` and listings consider.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub host: Option<String>,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub source: Option<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.host.as_ref().is_none_or(|h| &s.host == h)
            && self.tags.iter().all(|t| s.tags.contains(t))
            && (self.paths.is_empty() || self.paths.iter().all(|p| s.paths.contains(p)))
            && self.source.as_ref().is_none_or(|k| &s.source == k)
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".to_string()
    }
}

pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }))
}
