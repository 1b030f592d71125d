//! Path patterns for `--exclude`, `--exclude-file`, and restore's
//! `--include`/`--exclude`.
//!
//! Rules (the same for backup and restore, documented in the CLI help):
//! - a pattern without `/` matches a file name anywhere (`*.tmp`, `node_modules`);
//! - a pattern with `/` matches a path: anchored at the root when it starts
//!   with `/`, anywhere below it otherwise (`cache/*.bin` is `**/cache/*.bin`);
//! - `*` and `?` stop at `/`, `**` crosses directories;
//! - a match on a directory covers everything inside it.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

#[derive(Debug, thiserror::Error)]
#[error("bad pattern '{pattern}': {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// A compiled set of patterns.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
    count: usize,
}

fn glob(p: &str) -> Result<Glob, PatternError> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PatternError { pattern: p.to_string(), reason: e.kind().to_string() })
}

impl PathFilter {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PathFilter, PatternError> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut n_names, mut n_paths) = (0, 0);
        for p in patterns {
            let p = p.as_ref().trim_end_matches('/');
            if p.is_empty() {
                continue;
            }
            if p.contains('/') {
                let anchored = if p.starts_with('/') { p.to_string() } else { format!("**/{p}") };
                paths.add(glob(&anchored)?);
                n_paths += 1;
            } else {
                names.add(glob(p)?);
                n_names += 1;
            }
        }
        let build = |b: GlobSetBuilder, n: usize| -> Result<Option<GlobSet>, PatternError> {
            if n == 0 {
                return Ok(None);
            }
            b.build().map(Some).map_err(|e| PatternError { pattern: "(set)".into(), reason: e.to_string() })
        };
        Ok(PathFilter { names: build(names, n_names)?, paths: build(paths, n_paths)?, count: n_names + n_paths })
    }

    /// Reads patterns from files, one a line; blank lines and `#` comments
    /// are ignored (the format restic and borg use).
    pub fn read_pattern_files(files: &[std::path::PathBuf]) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?;
            out.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `path` itself matches (not its ancestors).
    pub fn matches(&self, path: &Path) -> bool {
        if let (Some(n), Some(name)) = (&self.names, path.file_name()) {
            if n.is_match(Path::new(name)) {
                return true;
            }
        }
        self.paths.as_ref().is_some_and(|p| p.is_match(path))
    }

    /// Whether `path` or any of its ancestors matches.
    pub fn matches_or_inside(&self, path: &Path) -> bool {
        path.ancestors().any(|a| a.as_os_str().len() > 1 && self.matches(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_anywhere_and_paths_anchor_as_documented() {
        let f = PathFilter::new(&["*.tmp", "/srv/cache", "logs/*.log"]).unwrap();
        assert!(f.matches(Path::new("/a/b/x.tmp")));
        assert!(!f.matches(Path::new("/a/b/x.tmpl")));
        assert!(f.matches(Path::new("/srv/cache")));
        assert!(!f.matches(Path::new("/other/srv/cache")));
        assert!(f.matches(Path::new("/app/logs/a.log")));
        assert!(!f.matches(Path::new("/app/logs/deep/a.log")), "* does not cross /");
        assert!(f.matches_or_inside(Path::new("/srv/cache/x/y")));
        assert!(!PathFilter::new::<&str>(&[]).unwrap().matches(Path::new("/x")));
    }

    #[test]
    fn bad_patterns_name_themselves() {
        let e = PathFilter::new(&["a[", "ok"]).err().unwrap();
        assert!(e.to_string().contains("'a['"), "{e}");
    }
}
