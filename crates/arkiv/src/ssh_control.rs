//! A private home for the `ssh` control masters SFTP starts.
//!
//! OpenDAL's SFTP backend runs `ssh -M -f -o ControlPersist=yes` with its
//! control socket under `$XDG_STATE_HOME`, and only its session's drop sends
//! `ssh -O exit`. A connection still being set up when the process ends
//! (a pool filling up while the command finishes, on a loaded machine) has
//! no session yet, so its master would persist for ever. Neither OpenDAL nor
//! the `openssh` crate lets a caller bound ControlPersist, so each arkiv
//! process gets its own state directory and, at exit, tells every master
//! left in it to exit and removes it. Being private, it never touches the
//! masters of another arkiv running at the same time.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct SshControl {
    dir: PathBuf,
}

impl SshControl {
    /// Points `XDG_STATE_HOME` at a new private directory inside the
    /// current one. Must run before any thread starts (it sets the
    /// environment); `None` when no such directory can be made, and SFTP
    /// then works as before.
    pub fn isolate() -> Option<SshControl> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        reap(&base);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.subsec_nanos();
        let dir = base.join(format!("arkiv-ssh-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&base).ok()?;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
        std::env::set_var("XDG_STATE_HOME", &dir);
        Some(SshControl { dir })
    }

    /// Ends every control master still running from this process's
    /// directory and removes it.
    pub fn cleanup(self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let socket = e.path().join("master");
            if e.file_name().to_string_lossy().starts_with(".ssh-connection") && socket.exists() {
                let _ = Command::new("ssh")
                    .arg("-S")
                    .arg(&socket)
                    .args(["-O", "exit", "arkiv-exit"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ends what processes that died without cleaning up (SIGKILL) left in
/// `base`: directories of arkiv processes that no longer exist.
fn reap(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("arkiv-ssh-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            SshControl { dir: e.path() }.cleanup();
        }
    }
}
