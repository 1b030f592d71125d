//! Looking into snapshots: `snapshots`, `ls`, `diff`, `find`.

use std::process::ExitCode;

use anyhow::Result;
use arkiv_repo::{Id, Indexed, Node, NodeKind, Tree};
use arkiv_source::files::PathFilter;
use serde::Serialize;

use crate::cli::{DiffArgs, FilterArgs, FindArgs, Global, LsArgs};
use crate::output;

pub fn snapshots(g: &Global, f: FilterArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let filter = super::snapshot_filter(&f);
    let list: Vec<_> = repo.list_snapshots()?.into_iter().filter(|e| filter.matches(&e.snapshot)).collect();
    if g.json {
        output::json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if !g.quiet {
        println!("{:<9} {:<19} {:<16} {:<12} {:>11}  paths", "id", "time", "host", "tags", "size");
    }
    for e in &list {
        let s = &e.snapshot;
        let partial = if s.is_partial() { " (partial)" } else { "" };
        println!(
            "{:<9} {:<19} {:<16} {:<12} {:>11}  {}{partial}",
            e.id.short(),
            output::time(&s.time),
            s.host,
            s.tags.join(","),
            output::bytes(s.summary.total_bytes),
            s.paths.join(" ")
        );
    }
    if !g.quiet {
        println!("{} snapshot(s)", list.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Entry<'a> {
    path: &'a str,
    #[serde(flatten)]
    node: &'a Node,
}

fn long_line(path: &str, n: &Node) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(n.mtime_ns);
    let mut s = format!(
        "{} {:>5} {:>5} {:>12} {} {path}",
        output::mode_string(n.kind, n.mode),
        n.uid,
        n.gid,
        n.size,
        output::time(&t)
    );
    if let Some(target) = &n.target {
        s.push_str(&format!(" -> {}", target.lossy()));
    }
    s
}

pub fn ls(g: &Global, a: LsArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &super::snapshot_filter(&a.filter))?;
    let ix = repo.index()?;
    let base = a.path.clone().unwrap_or_default();
    let base = base.trim_end_matches('/');
    let root = ix.find_subtree(&snap.snapshot.tree, base)?;
    let mut entries = Vec::new();
    ix.walk_tree(&root, &mut |p, n| {
        let path = format!("{base}{p}");
        if g.json {
            entries.push(serde_json::to_value(Entry { path: &path, node: n }).expect("serialisable"));
        } else if a.long {
            println!("{}", long_line(&path, n));
        } else {
            println!("{path}");
        }
        Ok(())
    })?;
    if g.json {
        output::json(&serde_json::json!({ "snapshot": snap.id, "entries": entries }));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, Debug, PartialEq, Eq)]
struct Change {
    /// `+` added, `-` removed, `M` content changed, `T` type changed,
    /// `m` metadata (mode, owner, times) changed.
    change: &'static str,
    path: String,
}

fn diff_trees(ix: &Indexed, a: Option<&Id>, b: Option<&Id>, prefix: &str, out: &mut Vec<Change>) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<&Id>| -> Result<Tree> { Ok(id.map(|i| ix.load_tree(i)).transpose()?.unwrap_or_default()) };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let (na, nb) = (ta.nodes.get(i), tb.nodes.get(j));
        let order = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let n = na.unwrap();
                out.push(Change { change: "-", path: format!("{prefix}/{}", n.name.lossy()) });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = nb.unwrap();
                out.push(Change { change: "+", path: format!("{prefix}/{}", n.name.lossy()) });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.unwrap(), nb.unwrap());
                let path = format!("{prefix}/{}", x.name.lossy());
                if x.kind != y.kind {
                    out.push(Change { change: "T", path });
                } else {
                    let meta_changed = x.mode != y.mode
                        || x.uid != y.uid
                        || x.gid != y.gid
                        || x.mtime_ns != y.mtime_ns
                        || x.xattrs != y.xattrs;
                    match x.kind {
                        NodeKind::File if x.content != y.content => out.push(Change { change: "M", path }),
                        NodeKind::Symlink if x.target != y.target => out.push(Change { change: "M", path }),
                        NodeKind::Dir => {
                            if meta_changed {
                                out.push(Change { change: "m", path: path.clone() });
                            }
                            diff_trees(ix, x.subtree.as_ref(), y.subtree.as_ref(), &path, out)?;
                        }
                        _ if meta_changed => out.push(Change { change: "m", path }),
                        _ => {}
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

pub fn diff(g: &Global, a: DiffArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let filter = arkiv_repo::SnapshotFilter::default();
    let (s1, s2) = (repo.find_snapshot(&a.first, &filter)?, repo.find_snapshot(&a.second, &filter)?);
    let ix = repo.index()?;
    let mut changes = Vec::new();
    diff_trees(&ix, Some(&s1.snapshot.tree), Some(&s2.snapshot.tree), "", &mut changes)?;
    if g.json {
        output::json(&serde_json::json!({ "first": s1.id, "second": s2.id, "changes": changes }));
    } else {
        for c in &changes {
            println!("{}  {}", c.change, c.path);
        }
        if !g.quiet {
            let count = |k: &str| changes.iter().filter(|c| c.change == k).count();
            println!(
                "{} added, {} removed, {} changed, {} type changed, {} metadata only",
                count("+"),
                count("-"),
                count("M"),
                count("T"),
                count("m")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn find(g: &Global, a: FindArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    let pattern = PathFilter::new(&a.patterns)?;
    let snaps = match &a.snapshot {
        Some(s) => vec![repo.find_snapshot(s, &super::snapshot_filter(&a.filter))?],
        None => {
            let f = super::snapshot_filter(&a.filter);
            repo.list_snapshots()?.into_iter().filter(|e| f.matches(&e.snapshot)).collect()
        }
    };
    let ix = repo.index()?;
    let mut found = Vec::new();
    for s in &snaps {
        ix.walk_tree(&s.snapshot.tree, &mut |p, n| {
            if pattern.matches(std::path::Path::new(p)) {
                if g.json {
                    found.push(serde_json::json!({ "snapshot": s.id, "path": p, "node": n }));
                } else {
                    println!("{}  {}", s.id.short(), long_line(p, n));
                }
            }
            Ok(())
        })?;
    }
    if g.json {
        output::json(&found);
    }
    Ok(ExitCode::SUCCESS)
}
