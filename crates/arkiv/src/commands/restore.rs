//! `arkiv restore`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use arkiv_source::files::{self, restore::RestoreProgress, PathFilter, RestoreOptions};

use crate::cli::{Global, RestoreArgs};
use crate::output;
use crate::progress::Ticker;

pub fn run(g: &Global, a: RestoreArgs) -> Result<ExitCode> {
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: PathFilter::new(&a.includes)?,
        excludes: PathFilter::new(&a.excludes)?,
        overwrite: a.overwrite,
        dry_run: a.dry_run,
    };
    let repo = crate::context::open(g)?;
    let snap = repo.find_snapshot(&a.snapshot, &super::snapshot_filter(&a.filter))?;
    let indexed = repo.index()?;
    let progress = Arc::new(RestoreProgress::default());
    let p = progress.clone();
    let ticker = Ticker::start(g, "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {msg}", move |bar| {
        bar.set_length(p.total_bytes.load(Ordering::Relaxed));
        bar.set_position(p.bytes.load(Ordering::Relaxed));
    });
    let out = files::restore(&indexed, &snap.snapshot.tree, &opts, &progress);
    ticker.finish();
    let out = out?;
    if g.json {
        output::json(
            &serde_json::json!({ "snapshot": snap.id, "target": a.target, "dry_run": a.dry_run, "result": out }),
        );
    } else {
        // --quiet keeps errors and warnings: only the report of what was
        // done is left out.
        for w in &out.warnings {
            eprintln!("arkiv: warning: {w}");
        }
    }
    if !g.json && !g.quiet {
        if a.dry_run {
            for p in &out.planned {
                println!("would restore {} ({})", p.path, output::bytes(p.size));
            }
        }
        for s in &out.skipped_existing {
            println!("left alone (exists; use --overwrite): {s}");
        }
        let verb = if a.dry_run { "would restore" } else { "restored" };
        println!(
            "{verb} snapshot {} to {}: {} files ({}), {} directories, {} symlinks, {} hard links",
            snap.id.short(),
            a.target.display(),
            out.files,
            output::bytes(out.bytes),
            out.dirs,
            out.symlinks,
            out.hardlinks
        );
    }
    if let Some(e) = &out.storage_error {
        // Not damage: the storage could not be read. One line, not one per
        // file, and a plain failure: rerun once the store is back.
        anyhow::bail!("{} file(s) not restored: cannot read the repository: {e}", out.damaged.len());
    }
    if !out.damaged.is_empty() {
        for d in &out.damaged {
            eprintln!("arkiv: damaged: {}: {}", d.path, d.reason);
        }
        eprintln!("arkiv: restore is partial: {} file(s) could not be restored intact", out.damaged.len());
        return Ok(ExitCode::from(crate::EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}
