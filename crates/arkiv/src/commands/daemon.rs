//! `serve`, `config check`, `token` and `audit`: the daemon and the
//! catalog it keeps, from the configuration file.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use arkiv_control::catalog::Catalog;
use arkiv_control::{audit, Config};

use crate::cli::{AuditCommand, ConfigCommand, Global, TokenCommand};
use crate::output;

fn need_config(g: &Global, config: Option<&Config>) -> Result<Config> {
    match config {
        Some(c) => Ok(c.clone()),
        None => Err(crate::Usage(format!(
            "this command reads the configuration file: give --config FILE (or ARKIV_CONFIG){}",
            if g.repo.is_some() { "; --repo alone is not enough" } else { "" }
        ))
        .into()),
    }
}

pub fn serve(g: &Global, config: Option<&Config>) -> Result<ExitCode> {
    let c = need_config(g, config)?;
    let path = g.config.clone().expect("need_config checked it");
    // Jobs run as this same binary file. After an in-place upgrade, restart
    // the daemon, or it runs the new version's jobs under the old daemon.
    let exe = std::env::current_exe().context("finding the arkiv binary for jobs")?;
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    arkiv_control::serve::serve(c, &path, &exe)?;
    Ok(ExitCode::SUCCESS)
}

pub fn config(g: &Global, config: Option<&Config>, cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Check => {
            // Loading already validated every key; what is left is what the
            // file points to.
            let c = need_config(g, config)?;
            let problems = c.check_files();
            let jobs = arkiv_control::jobs::job_defs(&c);
            if g.json {
                output::json(&serde_json::json!({
                    "ok": problems.is_empty(),
                    "problems": problems,
                    "repositories": c.repositories.keys().collect::<Vec<_>>(),
                    "sources": c.sources.keys().collect::<Vec<_>>(),
                    "jobs": jobs.keys().collect::<Vec<_>>(),
                }));
            } else {
                for p in &problems {
                    eprintln!("arkiv: error: {}: {p}", c.path);
                }
                if problems.is_empty() && !g.quiet {
                    let now = chrono::Utc::now();
                    println!(
                        "{}: ok ({} repositories, {} sources, {} jobs)",
                        c.path,
                        c.repositories.len(),
                        c.sources.len(),
                        jobs.len()
                    );
                    for (name, def) in &jobs {
                        match def.schedule.as_ref().and_then(|s| s.next_due(now)) {
                            Some(t) => println!("  {name:<32} next {}", output::time(&t)),
                            None => println!("  {name:<32} on demand"),
                        }
                    }
                }
            }
            Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn catalog(c: &Config) -> Result<Catalog> {
    Ok(Catalog::open(&c.daemon.catalog)?)
}

pub fn token(g: &Global, config: Option<&Config>, cmd: TokenCommand) -> Result<ExitCode> {
    let c = need_config(g, config)?;
    let cat = catalog(&c)?;
    let now = chrono::Utc::now();
    match cmd {
        TokenCommand::Create { name, role } => {
            arkiv_control::token::check_name(&name).map_err(|e| crate::Usage(e.into()))?;
            let token = arkiv_control::token::generate();
            cat.create_token(&name, &role, &arkiv_control::token::hash(&token), "cli", now)?;
            audit::append(&cat, "cli", "token.create", &name, &serde_json::json!({ "role": role }))?;
            if g.json {
                output::json(&serde_json::json!({ "name": name, "role": role, "token": token }));
            } else {
                eprintln!("token '{name}' ({role}) created; it is shown once, keep it now:");
                println!("{token}");
            }
        }
        TokenCommand::List => {
            let list = cat.tokens()?;
            if g.json {
                output::json(&list);
            } else {
                println!("{:<24} {:<9} {:<7} {:<19} {:<19} revoked", "name", "role", "origin", "created", "last used");
                for t in list {
                    println!(
                        "{:<24} {:<9} {:<7} {:<19} {:<19} {}",
                        t.name,
                        t.role,
                        t.origin,
                        output::time(&t.created_at),
                        t.last_used_at.map(|t| output::time(&t)).unwrap_or_else(|| "never".into()),
                        t.revoked_at.map(|t| output::time(&t)).unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::Revoke { name } => {
            if !cat.revoke_token(&name, now)? {
                bail!("{}: no live token named '{name}'", c.daemon.catalog.display());
            }
            audit::append(&cat, "cli", "token.revoke", &name, &serde_json::json!({}))?;
            if !g.quiet {
                println!("token '{name}' revoked");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(g: &Global, config: Option<&Config>, cmd: AuditCommand) -> Result<ExitCode> {
    let c = need_config(g, config)?;
    let cat = catalog(&c)?;
    match cmd {
        AuditCommand::Verify => {
            let v = audit::verify(&cat)?;
            if g.json {
                output::json(&v);
            }
            match &v.problem {
                None => {
                    if !g.json && !g.quiet {
                        println!("audit log intact: {} entries, head {}", v.entries, v.head);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(p) => {
                    eprintln!("arkiv: error: audit log {}: {p}", c.daemon.catalog.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::List { after, limit } => {
            let list = audit::entries(&cat, after, limit)?;
            if g.json {
                output::json(&list);
            } else {
                for e in list {
                    println!("{:>6} {} {:<16} {:<18} {} {}", e.seq, e.time, e.actor, e.action, e.target, e.detail);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
