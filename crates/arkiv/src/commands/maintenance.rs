//! `init`, `check`, `stats`, `cat`.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arkiv_repo::check::{self, CheckProgress, ReadData};
use arkiv_repo::{BlobType, Credential, FileKind, Id, InitOptions, KdfParams, NodeKind, Repository};
use serde::Serialize;

use crate::cli::{CatArgs, CheckArgs, Global, InitArgs, StatsArgs};
use crate::output;
use crate::progress::Ticker;

pub fn init(g: &Global, a: InitArgs) -> Result<ExitCode> {
    if a.from.is_some() && !a.copy_chunker_params {
        return Err(crate::Usage("--from is only used with --copy-chunker-params".into()).into());
    }
    // Opened first: a wrong password for --from must not leave a new,
    // unrelated repository behind.
    let like = match (&a.from, a.copy_chunker_params) {
        (Some(from), true) => {
            let cred = crate::context::credential_for(g, a.from_key_file.as_deref(), a.from_password_file.as_deref())?;
            Some(crate::context::open_at(g, from, None, &cred)?)
        }
        _ => None,
    };
    let backend = crate::context::backend(g)?;
    let cred = match &a.new_key_file {
        Some(path) => {
            if path.exists() {
                bail!("{}: already exists; not overwriting a key file", path.display());
            }
            let (cred, text) = Credential::new_key_file_text();
            write_secret_file(path, &text)?;
            cred
        }
        None => {
            let p = crate::context::password(g, "new repository password: ", true)?;
            if p.is_empty() {
                bail!("an empty password is not allowed: set ARKIV_PASSWORD or --password-file to a non-empty one");
            }
            Credential::password(p)
        }
    };
    let opts = InitOptions {
        compression: a.compression,
        pack_size: a.pack_size_mib.saturating_mul(1 << 20),
        kdf: KdfParams { memory_kib: a.argon2_memory_kib, iterations: a.argon2_iterations, parallelism: 1 },
        ..Default::default()
    };
    let repo = match &like {
        Some(like) => Repository::init_like(backend, &cred, opts, like)?,
        None => Repository::init(backend, &cred, opts)?,
    };
    if g.json {
        output::json(
            &serde_json::json!({ "id": repo.config().id, "location": repo.backend().location(), "config": repo.config() }),
        );
    } else if !g.quiet {
        println!("created repository {} at {}", repo.config().id.short(), repo.backend().location());
        println!("keep the password (or key file) safe: without it the data cannot be read by anyone");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn write_secret_file(path: &std::path::Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing key file {}", path.display()))?;
    // On disk before the repository (or slot) it opens is written: a power
    // loss must not leave a repository whose only key file is empty.
    f.sync_all().with_context(|| format!("writing key file {}", path.display()))?;
    // And its name too, on file systems that need the directory synced.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!("{}: cannot sync the directory: {e}", dir.display());
    }
    Ok(())
}

pub fn check(g: &Global, a: CheckArgs) -> Result<ExitCode> {
    let read = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => ReadData::parse_subset(s).map_err(|e| crate::Usage(e.to_string()))?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let repo = crate::context::open(g)?;
    let progress = Arc::new(CheckProgress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "checking {elapsed_precise} [{bar:30}] {pos}/{len} packs {msg}", move |bar| {
        bar.set_length(p.packs_total.load(Ordering::Relaxed));
        bar.set_position(p.packs_done.load(Ordering::Relaxed));
        bar.set_message(output::bytes(p.bytes_read.load(Ordering::Relaxed)));
    });
    let report = check::check(&repo, read, &progress);
    ticker.finish();
    let report = report?;
    if g.json {
        output::json(&report);
    } else {
        for w in &report.warnings {
            eprintln!("arkiv: warning: {w}");
        }
        for e in &report.errors {
            eprintln!("arkiv: error: {e}");
        }
        if !g.quiet {
            println!(
                "checked {} snapshots, {} trees, {} blobs in {} packs ({} index files); read {} packs ({})",
                report.snapshots,
                report.trees,
                report.blobs,
                report.packs,
                report.index_files,
                report.packs_read,
                output::bytes(report.bytes_read)
            );
            if report.ok() {
                println!("no errors were found");
            }
        }
    }
    if !report.ok() {
        eprintln!("arkiv: check found {} error(s) in {}", report.errors.len(), repo.backend().location());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, Default)]
struct RepoStats {
    snapshots: usize,
    packs: usize,
    pack_bytes: u64,
    blobs: usize,
    data_blobs: usize,
    tree_blobs: usize,
    /// Plaintext bytes of all unique blobs.
    raw_bytes: u64,
    /// Bytes of blobs as stored (after compression and encryption).
    stored_blob_bytes: u64,
    compression_ratio: f64,
}

#[derive(Serialize, Default)]
struct SnapshotStats {
    snapshot: String,
    files: u64,
    dirs: u64,
    /// What a restore would write.
    restore_bytes: u64,
    unique_blobs: usize,
    /// Plaintext of the distinct blobs the snapshot needs (after dedup).
    raw_bytes: u64,
}

pub fn stats(g: &Global, a: StatsArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    match &a.snapshot {
        None => {
            let snapshots = repo.backend().list(FileKind::Snapshot)?.len();
            let packs = repo.backend().list(FileKind::Pack)?;
            let ix = repo.index()?;
            let mut s = RepoStats {
                snapshots,
                packs: packs.len(),
                pack_bytes: packs.iter().map(|(_, n)| n).sum(),
                blobs: ix.index().len(),
                ..Default::default()
            };
            for b in ix.index().iter() {
                match b.entry.blob_type {
                    BlobType::Data => s.data_blobs += 1,
                    BlobType::Tree => s.tree_blobs += 1,
                }
                s.raw_bytes += b.entry.raw_length as u64;
                s.stored_blob_bytes += b.entry.length as u64;
            }
            s.compression_ratio =
                if s.stored_blob_bytes > 0 { s.raw_bytes as f64 / s.stored_blob_bytes as f64 } else { 1.0 };
            if g.json {
                output::json(&s);
            } else {
                println!("snapshots:         {}", s.snapshots);
                println!("packs:             {} ({})", s.packs, output::bytes(s.pack_bytes));
                println!("blobs:             {} ({} data, {} tree)", s.blobs, s.data_blobs, s.tree_blobs);
                println!("unique data:       {}", output::bytes(s.raw_bytes));
                println!("stored:            {}", output::bytes(s.stored_blob_bytes));
                println!("compression ratio: {:.2}x", s.compression_ratio);
            }
        }
        Some(spec) => {
            let snap = repo.find_snapshot(spec, &arkiv_repo::SnapshotFilter::default())?;
            let ix = repo.index()?;
            let mut s = SnapshotStats { snapshot: snap.id.to_hex(), ..Default::default() };
            let mut blobs = HashSet::new();
            ix.walk_tree(&snap.snapshot.tree, &mut |_, n| {
                match n.kind {
                    NodeKind::File => {
                        s.files += 1;
                        s.restore_bytes += n.size;
                        blobs.extend(n.content.iter().copied());
                    }
                    NodeKind::Dir => s.dirs += 1,
                    NodeKind::Symlink => {}
                }
                Ok(())
            })?;
            s.unique_blobs = blobs.len();
            s.raw_bytes = blobs.iter().filter_map(|b| ix.index().get(b)).map(|l| l.entry.raw_length as u64).sum();
            if g.json {
                output::json(&s);
            } else {
                println!("snapshot:      {}", snap.id.short());
                println!("files:         {} in {} directories", s.files, s.dirs);
                println!("restore size:  {}", output::bytes(s.restore_bytes));
                println!("unique data:   {} in {} blobs", output::bytes(s.raw_bytes), s.unique_blobs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn need_id(a: &CatArgs) -> Result<&str> {
    a.id.as_deref().with_context(|| format!("`cat {}` needs an id", a.kind))
}

fn parse_id(s: &str) -> Result<Id> {
    Ok(s.parse::<Id>()?)
}

pub fn cat(g: &Global, a: CatArgs) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    match a.kind.as_str() {
        "config" => output::json(repo.config()),
        "keys" => output::json(&repo.list_keys()?),
        "snapshot" => output::json(&repo.find_snapshot(need_id(&a)?, &Default::default())?),
        "index" => {
            let f = repo.load_index_file(&parse_id(need_id(&a)?)?)?;
            let packs: Vec<_> = f
                .packs
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "id": p.id,
                        "blobs": p.entries.iter().map(|e| serde_json::json!({
                            "id": e.id, "type": e.blob_type, "offset": e.offset, "length": e.length,
                            "raw_length": e.raw_length, "encoding": e.encoding.as_str(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            output::json(&serde_json::json!({ "supersedes": f.supersedes, "packs": packs }));
        }
        "tree" => {
            let ix = repo.index()?;
            output::json(&ix.load_tree(&parse_id(need_id(&a)?)?)?);
        }
        "blob" => {
            let ix = repo.index()?;
            let data = ix.read_blob(&parse_id(need_id(&a)?)?)?;
            std::io::stdout().write_all(&data)?;
        }
        "pack" => {
            let id = parse_id(need_id(&a)?)?;
            let ix = repo.index()?;
            let blobs: Vec<_> = ix
                .index()
                .iter()
                .filter(|l| l.pack.id == id)
                .map(|l| serde_json::json!({ "id": l.entry.id, "type": l.entry.blob_type, "offset": l.entry.offset, "length": l.entry.length, "raw_length": l.entry.raw_length }))
                .collect();
            if blobs.is_empty() {
                bail!("pack {id} is not in the index");
            }
            output::json(&serde_json::json!({ "id": id, "blobs": blobs }));
        }
        other => {
            bail!("cannot cat '{other}': use config, keys, snapshot, index, tree, blob or pack")
        }
    }
    Ok(ExitCode::SUCCESS)
}
