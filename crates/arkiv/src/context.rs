//! Resolving where the repository is and what unlocks it.

use std::io::IsTerminal;
use std::path::Path;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arkiv_repo::backend::IoPolicy;
use arkiv_repo::fault::FaultConfig;
use arkiv_repo::location::{open_store, StoreOptions};
use arkiv_repo::{Backend, Credential, Repository};

use crate::cli::Global;

/// Fills in the repository from the configuration file: `--repo NAME`
/// names a configured repository; without `--repo`, the repository of the
/// named source, or the only one configured. Flags given on the command
/// line win over the file.
pub fn apply_config(g: &mut Global, config: &arkiv_control::Config, sources: &[String]) -> Result<()> {
    let chosen = match (&g.repo, sources.first()) {
        (Some(r), _) if config.repositories.contains_key(r) => Some(config.repository(Some(r))?),
        // A location given on the command line: the file has no say.
        (Some(_), _) => None,
        (None, Some(first)) => {
            let repos: std::collections::BTreeSet<&str> =
                sources.iter().map(|s| config.repository_for(s).map(|(n, _)| n)).collect::<Result<_, _>>()?;
            if repos.len() > 1 {
                return Err(crate::Usage(format!(
                    "the sources named go to different repositories ({}): back them up one at a time, or name one with --repo",
                    repos.into_iter().collect::<Vec<_>>().join(", ")
                ))
                .into());
            }
            Some(config.repository_for(first)?)
        }
        (None, None) if config.repositories.len() == 1 => Some(config.repository(None)?),
        (None, None) => None,
    };
    let Some((_, r)) = chosen else { return Ok(()) };
    g.repo = Some(r.url.clone());
    if g.data_repo.is_none() {
        g.data_repo = r.data_url.clone();
    }
    if g.password_file.is_none() && g.key_file.is_none() {
        g.password_file = r.password_file.clone();
        g.key_file = r.key_file.clone();
    }
    if g.cache_dir.is_none() {
        g.cache_dir = r.cache_dir.clone();
    }
    Ok(())
}

/// The first line of a secret file, without its line ending.
pub fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

pub fn backend(g: &Global) -> Result<Backend> {
    let Some(repo) = &g.repo else {
        bail!("no repository given: use --repo or set ARKIV_REPO");
    };
    backend_at(g, repo, g.data_repo.as_deref())
}

/// How storage requests behave, from the global flags; `ARKIV_FAULTS`
/// injects failures (for tests of flaky storage, never for real use).
pub fn store_options(g: &Global) -> Result<StoreOptions> {
    let faults = match std::env::var("ARKIV_FAULTS") {
        Ok(spec) if !spec.is_empty() => {
            tracing::warn!("ARKIV_FAULTS is set: injecting storage failures ({spec})");
            Some(FaultConfig::parse(&spec).map_err(|e| anyhow::anyhow!("ARKIV_FAULTS: {e}"))?)
        }
        _ => None,
    };
    if g.timeout == 0 || g.connections == 0 {
        return Err(crate::Usage("--timeout and --connections must be at least 1".into()).into());
    }
    let policy = IoPolicy {
        retries: g.retries,
        timeout: Duration::from_secs(g.timeout),
        // A step of a transfer (one pack's upload) carries up to 64 MiB:
        // it gets five times as long as a request without a body.
        io_timeout: Duration::from_secs(g.timeout.saturating_mul(5)),
        uploads: g.connections,
        ..IoPolicy::default()
    };
    Ok(StoreOptions { policy, faults })
}

/// The backend for a repository at `repo`, with data packs at `data` if
/// they are kept apart.
pub fn backend_at(g: &Global, repo: &str, data: Option<&str>) -> Result<Backend> {
    let opts = store_options(g)?;
    let hot = open_store(repo, &opts)?;
    let cold = data.map(|d| open_store(d, &opts)).transpose()?;
    let remote = !hot.is_local();
    let mut backend = Backend::new(hot, cold).with_policy(opts.policy);
    if remote && !g.no_cache {
        if let Some(dir) = cache_dir(g, repo) {
            backend = backend.with_cache(dir);
        }
    }
    Ok(backend)
}

/// `$ARKIV_CACHE_DIR`/--cache-dir, else `$XDG_CACHE_HOME/arkiv`, else
/// `~/.cache/arkiv`; one directory per location.
fn cache_dir(g: &Global, repo: &str) -> Option<PathBuf> {
    let base = g.cache_dir.clone().or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("arkiv"))
    })?;
    let name = arkiv_repo::Id::of_stored(arkiv_repo::location::redact(repo).as_bytes()).to_hex();
    Some(base.join(&name[..16]))
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

/// A side of a two-repository command: its own key or password file if
/// given, else the global credential.
pub fn credential_for(g: &Global, key_file: Option<&Path>, password_file: Option<&Path>) -> Result<Credential> {
    if let Some(k) = key_file {
        return Ok(Credential::from_key_file(k)?);
    }
    if let Some(f) = password_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(Credential::password(first_line(&text)));
    }
    credential(g)
}

/// Opens a repository other than --repo.
pub fn open_at(g: &Global, repo: &str, data: Option<&str>, cred: &Credential) -> Result<Repository> {
    ensure_local_repository(repo)?;
    Ok(Repository::open(backend_at(g, repo, data)?, cred)?)
}

/// Refuses a local location that holds no repository before the backend
/// is built: building it creates the directory and its `tmp/`, which would
/// leave litter at a mistyped path or inside an unrelated directory.
fn ensure_repository(g: &Global) -> Result<()> {
    match g.repo.as_deref() {
        Some(repo) => ensure_local_repository(repo),
        None => Ok(()), // `backend` says what is wrong
    }
}

fn ensure_local_repository(repo: &str) -> Result<()> {
    if repo.contains("://") {
        return Ok(());
    }
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
