//! Trees: one blob per directory, listing its entries sorted by name.
//!
//! A tree is JSON (readable with `arkiv cat tree`), stored as a tree blob,
//! so identical directories share one blob. File names are bytes on Unix;
//! a name that is valid UTF-8 is stored as a JSON string, any other as
//! `{"bytes": "<base64>"}`, so every name round-trips exactly.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Id;

/// A file name (or symlink target) as raw bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl Name {
    pub fn from_os(s: &OsStr) -> Name {
        Name(s.as_bytes().to_vec())
    }

    pub fn as_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.as_bytes().to_vec())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.lossy())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Bytes { bytes: String },
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => NameRepr::Text(t.to_string()).serialize(s),
            Err(_) => NameRepr::Bytes { bytes: B64.encode(&self.0) }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NameRepr::deserialize(d)? {
            NameRepr::Text(t) => Ok(Name(t.into_bytes())),
            NameRepr::Bytes { bytes } => B64.decode(bytes).map(Name).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// An extended attribute; the value is base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Name,
    pub value: String,
}

impl Xattr {
    pub fn new(name: Name, value: &[u8]) -> Xattr {
        Xattr { name, value: B64.encode(value) }
    }

    pub fn value_bytes(&self) -> Vec<u8> {
        B64.decode(&self.value).unwrap_or_default()
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One directory entry with the metadata a restore puts back and the
/// fields (size, mtime, ctime, inode) an incremental backup compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits, setuid/setgid/sticky included (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    #[serde(default)]
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device: u64,
    /// Hard link count when the node was saved; >1 lets restore relink.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    /// Data blob ids, in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// The directory's own tree (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Name>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// The object's entity tag, for files read from object storage: with
    /// the size, what tells an incremental bucket backup the object is
    /// unchanged (buckets have no inode or ctime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl Node {
    pub fn new(name: Name, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            inode: 0,
            device: 0,
            links: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
            xattrs: Vec::new(),
            etag: None,
        }
    }
}

/// A directory's entries, sorted by name bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    pub fn find(&self, name: &Name) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.cmp(name)).ok().map(|i| &self.nodes[i])
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees serialise")
    }

    pub fn decode(object: &str, b: &[u8]) -> crate::Result<Tree> {
        serde_json::from_slice(b).map_err(|e| crate::Error::corrupt(object, format!("not a tree: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<u8>(), 1..20),
            0u8..3,
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..3),
            proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..8), proptest::collection::vec(any::<u8>(), 0..8)),
                0..2,
            ),
        )
            .prop_map(|(name, k, mode, mtime, size, content, xattrs)| {
                let kind = [NodeKind::File, NodeKind::Dir, NodeKind::Symlink][k as usize];
                let mut n = Node::new(Name(name.clone()), kind);
                n.mode = mode & 0o7777;
                n.mtime_ns = mtime;
                n.size = size;
                n.content = content.into_iter().map(Id).collect();
                n.target = (kind == NodeKind::Symlink).then(|| Name(name));
                n.subtree = (kind == NodeKind::Dir).then_some(Id([9; 32]));
                n.xattrs = xattrs.into_iter().map(|(k, v)| Xattr::new(Name(k), &v)).collect();
                n
            })
    }

    proptest! {
        #[test]
        fn trees_round_trip_with_any_names(nodes in proptest::collection::vec(arb_node(), 0..10)) {
            let mut t = Tree { nodes };
            t.sort();
            let back = Tree::decode("t", &t.encode()).unwrap();
            prop_assert_eq!(back, t);
        }
    }

    #[test]
    fn non_utf8_names_are_stored_as_bytes() {
        let n = Name(vec![0x66, 0xff, 0x6f]);
        let j = serde_json::to_string(&n).unwrap();
        assert!(j.contains("bytes"), "{j}");
        assert_eq!(serde_json::from_str::<Name>(&j).unwrap(), n);
        assert_eq!(serde_json::to_string(&Name::from("plain")).unwrap(), "\"plain\"");
    }
}
