//! `copy` and `replication-status`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use arkiv_repo::copy;
use arkiv_repo::Repository;

use crate::cli::{CopyArgs, Global, ReplicationArgs, RepoPair};
use crate::output;
use crate::progress::Ticker;

fn open_pair(g: &Global, p: &RepoPair) -> Result<(Repository, Repository)> {
    let Some(from) = p.from.as_deref().or(g.repo.as_deref()) else {
        bail!("no source repository: give --from or --repo");
    };
    let from_data = p.from_data_repo.as_deref().or(if p.from.is_none() { g.data_repo.as_deref() } else { None });
    let from_cred = crate::context::credential_for(g, p.from_key_file.as_deref(), p.from_password_file.as_deref())?;
    let src = crate::context::open_at(g, from, from_data, &from_cred)?;
    let to_cred = crate::context::credential_for(g, p.to_key_file.as_deref(), p.to_password_file.as_deref())?;
    let dst = crate::context::open_at(g, &p.to, p.to_data_repo.as_deref(), &to_cred)?;
    if src.config().id == dst.config().id && src.backend().location() == dst.backend().location() {
        bail!("--from and --to are the same repository");
    }
    Ok((src, dst))
}

pub fn copy(g: &Global, a: CopyArgs) -> Result<ExitCode> {
    let (src, dst) = open_pair(g, &a.pair)?;
    let filter = super::snapshot_filter(&a.filter);
    let snapshots = if a.snapshots.is_empty() {
        src.list_snapshots()?.into_iter().filter(|e| filter.matches(&e.snapshot)).collect()
    } else {
        let mut v = Vec::new();
        for spec in &a.snapshots {
            v.push(src.find_snapshot(spec, &filter)?);
        }
        v
    };
    let src = src.index()?;
    let dst = dst.index()?;
    let ticker = Ticker::new(g, "copy");
    let report = copy::copy(&src, &dst, &snapshots, &|e| {
        ticker.set_message(&format!("snapshot {} of {}", e.id.short(), output::time(&e.snapshot.time)))
    })?;
    ticker.finish();
    if g.json {
        output::json(&report);
    } else if !g.quiet {
        for (from, to) in &report.copied {
            println!("copied snapshot {} as {}", from.short(), to.short());
        }
        println!(
            "{} copied, {} already present; {} new blobs, {} uploaded{}",
            report.copied.len(),
            report.already_present,
            report.write.blobs_new,
            output::bytes(report.write.bytes_stored),
            if report.same_chunking { "" } else { " (chunked again: the repositories have different keys)" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(g: &Global, a: ReplicationArgs) -> Result<ExitCode> {
    let (first, second) = open_pair(g, &a.pair)?;
    let status = copy::replication_status(&first.list_snapshots()?, &second.list_snapshots()?);
    if g.json {
        output::json(&serde_json::json!({
            "first": first.backend().location(),
            "second": second.backend().location(),
            "status": status,
        }));
    } else if !g.quiet {
        let (a_loc, b_loc) = (first.backend().location(), second.backend().location());
        println!("A = {a_loc}\nB = {b_loc}");
        println!("{:<10} {:<19} {:<10} {:<10} {:<16} paths", "identity", "time", "in A", "in B", "host");
        for e in &status.entries {
            let side = |id: &Option<arkiv_repo::Id>| id.map(|i| i.short()).unwrap_or_else(|| "MISSING".into());
            println!(
                "{:<10} {:<19} {:<10} {:<10} {:<16} {}",
                e.identity.short(),
                output::time(&e.time),
                side(&e.in_first),
                side(&e.in_second),
                e.host,
                e.paths.join(", ")
            );
        }
        println!("missing in A: {}, missing in B: {}", status.missing_in_first, status.missing_in_second);
        match (status.newest_common, status.lag_secs) {
            (Some(t), Some(lag)) => println!(
                "newest snapshot in both: {} ({} old); B lags A by {}",
                output::time(&t),
                human_secs((chrono::Utc::now() - t).num_seconds()),
                human_secs(lag)
            ),
            _ => println!("no snapshot is in both"),
        }
    }
    // Missing snapshots are a finding, not a failure of the command; scripts
    // read the counts from --json.
    Ok(ExitCode::SUCCESS)
}

fn human_secs(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
