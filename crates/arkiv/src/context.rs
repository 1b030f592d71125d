//! Resolving where the repository is and what unlocks it.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use arkiv_repo::{Backend, Credential, Repository};

use crate::cli::Global;

/// The first line of a secret file, without its line ending.
pub fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

pub fn backend(g: &Global) -> Result<Backend> {
    let Some(repo) = &g.repo else {
        bail!("no repository given: use --repo or set ARKIV_REPO");
    };
    if repo.contains("://") {
        bail!("{repo}: only local repositories (a directory path) are supported by this build");
    }
    Ok(Backend::local(Path::new(repo))?)
}

/// The password from --password-file, ARKIV_PASSWORD, or a prompt on a
/// terminal — in that order.
pub fn password(g: &Global, prompt: &str, confirm: bool) -> Result<String> {
    if let Some(f) = &g.password_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(first_line(&text));
    }
    if let Ok(p) = std::env::var("ARKIV_PASSWORD") {
        return Ok(p);
    }
    prompt_password(prompt, confirm)
}

pub fn prompt_password(prompt: &str, confirm: bool) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set ARKIV_PASSWORD, use --password-file, or run on a terminal to be asked");
    }
    let p = rpassword::prompt_password(prompt).context("reading password")?;
    if confirm {
        let again = rpassword::prompt_password("enter it again: ").context("reading password")?;
        if again != p {
            bail!("the passwords do not match");
        }
    }
    if p.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(p)
}

pub fn credential(g: &Global) -> Result<Credential> {
    if let Some(k) = &g.key_file {
        return Ok(Credential::from_key_file(k)?);
    }
    Ok(Credential::password(password(g, "repository password: ", false)?))
}

/// Refuses a local location that holds no repository before the backend
/// is built: building it creates the directory and its `tmp/`, which would
/// leave litter at a mistyped path or inside an unrelated directory.
fn ensure_repository(g: &Global) -> Result<()> {
    let Some(repo) = g.repo.as_deref().filter(|r| !r.contains("://")) else {
        return Ok(()); // `backend` says what is wrong
    };
    let path = Path::new(repo);
    match std::fs::metadata(path.join("config")) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            let location = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            Err(arkiv_repo::Error::NotARepository { location: location.display().to_string() }.into())
        }
        // Anything else (e.g. no permission) is reported by the backend.
        _ => Ok(()),
    }
}

pub fn open(g: &Global) -> Result<Repository> {
    ensure_repository(g)?;
    let backend = backend(g)?;
    let cred = credential(g)?;
    Ok(Repository::open(backend, &cred)?)
}
