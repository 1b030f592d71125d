//! `forget` and `prune`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use arkiv_repo::prune::{PruneOptions, PruneReport};
use arkiv_repo::retention::{self, GroupBy, KeepPolicy};
use arkiv_repo::Repository;

use crate::cli::{ForgetArgs, Global, PruneArgs, PruneCmd};
use crate::output;
use crate::progress::Ticker;
use crate::Usage;

fn policy(a: &ForgetArgs) -> Result<KeepPolicy> {
    Ok(KeepPolicy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a
            .keep_within
            .as_deref()
            .map(retention::parse_duration)
            .transpose()
            .map_err(|e| Usage(format!("--keep-within: {e}")))?,
        tags: a.keep_tags.clone(),
    })
}

pub fn forget(g: &Global, a: ForgetArgs) -> Result<ExitCode> {
    // Every argument is checked before anything is read or deleted: a bad
    // --grace must not surface after the snapshots are gone.
    let policy = policy(&a)?;
    let group_by = GroupBy::parse(&a.group_by).map_err(|e| Usage(format!("--group-by: {e}")))?;
    if a.prune {
        options(&a.prune_opts, false)?;
    }
    if !a.snapshots.is_empty() && !policy.is_empty() {
        return Err(Usage("give snapshot ids or a --keep-* policy, not both".into()).into());
    }
    if a.snapshots.is_empty() && policy.is_empty() {
        return Err(Usage(
            "no --keep-* rule given: forget would remove every snapshot; give a policy or snapshot ids".into(),
        )
        .into());
    }
    let repo = crate::context::open(g)?;
    repo.require_full_access("forget")?;
    let filter = super::snapshot_filter(&a.filter);

    let (groups, remove): (Vec<retention::Group>, Vec<arkiv_repo::Id>) = if !a.snapshots.is_empty() {
        // By name only: a damaged snapshot, which cannot be loaded, can
        // still be forgotten.
        let mut ids = Vec::new();
        for spec in &a.snapshots {
            ids.push(repo.resolve_snapshot_id(spec)?);
        }
        (Vec::new(), ids)
    } else {
        let snaps: Vec<_> = repo.list_snapshots()?.into_iter().filter(|e| filter.matches(&e.snapshot)).collect();
        let groups = retention::apply(&snaps, &policy, group_by);
        let remove = groups.iter().flat_map(|gr| gr.decisions.iter()).filter(|d| !d.keep).map(|d| d.id).collect();
        (groups, remove)
    };

    if !a.dry_run {
        for id in &remove {
            repo.delete_snapshot(id).with_context(|| format!("forgetting snapshot {}", id.short()))?;
        }
    }
    if g.json {
        // One document for scripts, with prune's report inside when it ran.
        let pruned = if a.prune && !a.dry_run { Some(prune_report(g, &repo, &a.prune_opts, false)?) } else { None };
        output::json(
            &serde_json::json!({ "dry_run": a.dry_run, "groups": groups, "removed": remove, "prune": pruned }),
        );
        return Ok(ExitCode::SUCCESS);
    } else if !g.quiet {
        for gr in &groups {
            let mut label = Vec::new();
            if let Some(h) = &gr.key.host {
                label.push(format!("host {h}"));
            }
            if let Some(s) = &gr.key.source {
                label.push(format!("source {s}"));
            }
            if let Some(p) = &gr.key.paths {
                label.push(format!("paths {}", p.join(", ")));
            }
            if let Some(t) = &gr.key.tags {
                label.push(format!("tags {}", t.join(", ")));
            }
            let kept = gr.decisions.iter().filter(|d| d.keep).count();
            println!(
                "{}: keep {kept}, remove {}",
                if label.is_empty() { "all snapshots".to_string() } else { label.join(", ") },
                gr.decisions.len() - kept
            );
            for d in &gr.decisions {
                println!(
                    "  {} {}  {:<6} {}",
                    d.id.short(),
                    output::time(&d.time),
                    if d.keep { "keep" } else { "remove" },
                    d.reasons.join(", ")
                );
            }
        }
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("{verb} {} snapshot(s)", remove.len());
    }
    if a.prune && !a.dry_run {
        return run_prune(g, &repo, &a.prune_opts, false);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn prune(g: &Global, a: PruneCmd) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    run_prune(g, &repo, &a.opts, a.dry_run)
}

fn options(a: &PruneArgs, dry_run: bool) -> Result<PruneOptions> {
    let grace = if a.instant {
        chrono::Duration::zero()
    } else {
        retention::parse_duration(&a.grace).map_err(|e| Usage(format!("--grace: {e}")))?
    };
    let pct = a.max_unused.trim().trim_end_matches('%');
    let max_unused: f64 = pct
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| Usage(format!("--max-unused: '{}' is not a percentage like 5%", a.max_unused)))?;
    Ok(PruneOptions { grace, max_unused: max_unused / 100.0, dry_run })
}

fn prune_report(g: &Global, repo: &Repository, a: &PruneArgs, dry_run: bool) -> Result<PruneReport> {
    let opts = options(a, dry_run)?;
    let ticker = Ticker::new(g, "prune");
    let report = arkiv_repo::prune::prune(repo, &opts, &|stage| ticker.set_message(stage))?;
    ticker.finish();
    Ok(report)
}

fn run_prune(g: &Global, repo: &Repository, a: &PruneArgs, dry_run: bool) -> Result<ExitCode> {
    let report = prune_report(g, repo, a, dry_run)?;
    if g.json {
        output::json(&report);
    } else if !g.quiet {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &PruneReport) {
    let would = if r.dry_run { "would be " } else { "" };
    println!(
        "{} snapshots, {} packs; used {} in {} blobs, unused {}",
        r.snapshots,
        r.packs,
        output::bytes(r.bytes_used),
        r.blobs_used,
        output::bytes(r.bytes_unused)
    );
    println!(
        "marked for deletion: {} unused pack(s) ({}) and {} stray pack(s) {would}held for the grace period",
        r.packs_marked,
        output::bytes(r.bytes_marked),
        r.orphans_marked
    );
    println!(
        "repacked: {} pack(s), {} blob(s), {}",
        r.packs_repacked,
        r.blobs_repacked,
        output::bytes(r.bytes_repacked)
    );
    println!("deleted now: {} pack(s), {}", r.packs_deleted, output::bytes(r.bytes_deleted));
    if r.packs_resurrected > 0 {
        println!("restored to the index: {} pack(s) a newer snapshot needs", r.packs_resurrected);
    }
    if r.packs_waiting > 0 || r.packs_young > 0 {
        println!("waiting: {} pack(s) in their grace period, {} too new to judge", r.packs_waiting, r.packs_young);
    }
    if r.dry_run {
        println!("dry run: nothing was changed");
    }
}
