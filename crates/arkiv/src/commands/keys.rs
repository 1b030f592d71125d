//! `arkiv key list|add|remove|passwd`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use arkiv_repo::{Credential, KdfParams};

use crate::cli::{Global, KeyAddArgs, KeyCommand};
use crate::output;

fn new_credential(a: &KeyAddArgs) -> Result<Credential> {
    if let Some(path) = &a.new_key_file {
        if path.exists() {
            anyhow::bail!("{}: already exists; not overwriting a key file", path.display());
        }
        let (cred, text) = Credential::new_key_file_text();
        super::maintenance::write_secret_file(path, &text)?;
        return Ok(cred);
    }
    let p = if let Some(f) = &a.new_password_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        crate::context::first_line(&text)
    } else if let Ok(p) = std::env::var("ARKIV_NEW_PASSWORD") {
        p
    } else {
        crate::context::prompt_password("new password: ", true)?
    };
    if p.is_empty() {
        anyhow::bail!("an empty password is not allowed");
    }
    Ok(Credential::password(p))
}

fn kdf(a: &KeyAddArgs) -> KdfParams {
    KdfParams { memory_kib: a.argon2_memory_kib, iterations: a.argon2_iterations, parallelism: 1 }
}

pub fn run(g: &Global, k: KeyCommand) -> Result<ExitCode> {
    let repo = crate::context::open(g)?;
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if g.json {
                output::json(&keys);
            } else {
                println!("  {:<10} {:<9} {:<16} {:<12} created", "id", "kind", "host", "user");
                for k in keys {
                    let kind = match k.slot.kind {
                        arkiv_repo::keys::SlotKind::Password => "password",
                        arkiv_repo::keys::SlotKind::KeyFile => "key-file",
                    };
                    println!(
                        "{} {:<10} {:<9} {:<16} {:<12} {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8],
                        kind,
                        k.slot.host,
                        k.slot.username,
                        output::time(&k.slot.created)
                    );
                }
            }
        }
        KeyCommand::Add(a) => {
            if !a.append_only {
                repo.require_full_access("adding a full-access key")?;
            }
            let cred = new_credential(&a)?;
            let id = repo.add_key_with(&cred, kdf(&a), a.append_only)?;
            report(g, "added", &id);
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(&id, false)?;
            report(g, "removed", &removed);
        }
        KeyCommand::Passwd(a) => {
            repo.require_full_access("changing a key")?;
            let cred = new_credential(&a)?;
            let id = repo.add_key(&cred, kdf(&a))?;
            let old = repo.remove_key(repo.current_key(), true)?;
            if g.json {
                output::json(&serde_json::json!({ "added": id, "removed": old }));
            } else if !g.quiet {
                println!("password changed: key slot {} replaces {}", &id[..8], &old[..8]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(g: &Global, verb: &str, id: &str) {
    if g.json {
        output::json(&serde_json::json!({ verb: id }));
    } else if !g.quiet {
        println!("{verb} key slot {}", &id[..8.min(id.len())]);
    }
}
