//! The configuration file (TOML): repositories and named sources.
//!
//! One file serves the CLI (`arkiv --config arkiv.toml backup --source
//! shop`) and the daemon, so a source is described once. Unknown keys are
//! errors, not silently ignored: a misspelt `pasword_file` must not turn
//! into a backup that cannot be opened. Every key is documented in
//! `docs/config.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The TOML parser's message names the line and column.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Repositories by name.
    #[serde(default)]
    pub repositories: BTreeMap<String, RepositoryConfig>,
    /// Sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where the file was read from, for error messages.
    #[serde(skip)]
    pub path: String,
}

/// Where snapshots go and what opens them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A directory or a storage URL (`s3://…`, `sftp://…`), as `--repo`.
    pub url: String,
    /// A second location for data packs (a cold tier), as `--data-repo`.
    #[serde(default)]
    pub data_url: Option<String>,
    /// A file whose first line is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A key file, instead of a password.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The local cache of a remote repository's metadata.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// Something to back up: a database or bucket (`url`), a command
/// (`url = "command:…"`) or files (`paths`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A source URL: `postgres://…`, `mysql://…`, `sqlite:///…`,
    /// `redis://…`, `command:…`, `s3://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// Files and directories (the files source).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Exclude patterns (files source).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The repository it goes to; may be left out when there is only one.
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Recorded instead of this machine's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Source options, the same as the URL's query parameters
    /// (`only = "schema"`): kept apart so the URL stays readable.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// How a test restore of this source is checked.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
}

/// A test restore's sandbox and assertions, as `arkiv verify` takes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// A server URL to restore on instead of the source's own, or
    /// `cluster` (PostgreSQL: a temporary cluster).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Queries whose answer must be true.
    #[serde(default)]
    pub sql: Vec<String>,
    /// Tables that must exist.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Minimum row counts, `"TABLE>=N"`.
    #[serde(default)]
    pub rows: Vec<String>,
    /// Commands that must exit 0.
    #[serde(default)]
    pub commands: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Config::parse(&shown, &text)
    }

    /// Parses and checks a configuration; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_string(), message: one_line(&e.to_string()) })?;
        config.path = path.to_string();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.path.clone(), message }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, r) in &self.repositories {
            if r.url.trim().is_empty() {
                return Err(self.invalid(format!("repositories.{name}.url is empty")));
            }
            if r.password_file.is_some() && r.key_file.is_some() {
                return Err(self.invalid(format!("repositories.{name}: give password_file or key_file, not both")));
            }
        }
        for (name, s) in &self.sources {
            match (&s.url, s.paths.is_empty()) {
                (Some(_), false) => {
                    return Err(self.invalid(format!("sources.{name}: give url or paths, not both")));
                }
                (None, true) => {
                    return Err(self.invalid(format!(
                        "sources.{name}: needs url (a database, bucket or command) or paths (files)"
                    )));
                }
                (Some(url), true) => {
                    if !arkiv_source::spec::is_source_url(url) {
                        return Err(self.invalid(format!(
                            "sources.{name}.url '{url}' is not a source URL (postgres://, mysql://, sqlite://, redis://, command:, s3://, gs://, azblob://); for files use paths"
                        )));
                    }
                    if !s.exclude.is_empty() {
                        return Err(self.invalid(format!("sources.{name}.exclude applies to paths, not to a url")));
                    }
                }
                (None, false) => {
                    if !s.options.is_empty() {
                        return Err(self.invalid(format!("sources.{name}.options apply to a url, not to paths")));
                    }
                }
            }
            self.source_url(name)?;
            self.repository_for(name)?;
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            self.invalid(format!(
                "no source named '{name}' (configured: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })
    }

    /// A repository by name; with no name, the only one there is.
    pub fn repository(&self, name: Option<&str>) -> Result<(&str, &RepositoryConfig), ConfigError> {
        match name {
            Some(n) => self.repositories.get_key_value(n).map(|(k, v)| (k.as_str(), v)).ok_or_else(|| {
                let known: Vec<&str> = self.repositories.keys().map(String::as_str).collect();
                self.invalid(format!(
                    "no repository named '{n}' (configured: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
            }),
            None => match self.repositories.len() {
                1 => Ok(self.repositories.iter().next().map(|(k, v)| (k.as_str(), v)).expect("one repository")),
                0 => Err(self.invalid("no repositories configured".into())),
                _ => Err(self.invalid("several repositories configured: name one".into())),
            },
        }
    }

    /// The repository a source goes to.
    pub fn repository_for(&self, source: &str) -> Result<(&str, &RepositoryConfig), ConfigError> {
        let s = self.source(source)?;
        self.repository(s.repository.as_deref()).map_err(|e| match e {
            ConfigError::Invalid { path, message } => {
                ConfigError::Invalid { path, message: format!("sources.{source}: {message}") }
            }
            other => other,
        })
    }

    /// The source's URL with its `options` appended as query parameters,
    /// or `None` for a files source.
    pub fn source_url(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let s = self.source(name)?;
        let Some(url) = &s.url else { return Ok(None) };
        if s.options.is_empty() {
            return Ok(Some(url.clone()));
        }
        if arkiv_source::spec::kind_of(url) == Some("command") {
            return Err(self.invalid(format!("sources.{name}.options: a command takes no options")));
        }
        let mut out = url.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        for (k, v) in &s.options {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Array(items) => {
                    let mut parts = Vec::new();
                    for i in items {
                        match i {
                            toml::Value::String(s) => parts.push(s.clone()),
                            other => parts.push(other.to_string()),
                        }
                    }
                    parts.join(",")
                }
                other => {
                    return Err(self.invalid(format!("sources.{name}.options.{k}: {other} is not a plain value")));
                }
            };
            out.push(sep);
            out.push_str(&encode(k));
            out.push('=');
            out.push_str(&encode(&v));
            sep = '&';
        }
        Ok(Some(out))
    }
}

/// Percent-encodes a query component (RFC 3986 unreserved kept).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b',' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[repositories.main]
url = "/var/backups/arkiv"
password_file = "/etc/arkiv/password"

[sources.shop]
url = "command:pg_dump shop"
tags = ["prod"]

[sources.shop.verify]
sql = ["select count(*) > 0 from orders"]
rows = ["orders>=10"]

[sources.uploads]
paths = ["/srv/uploads"]
exclude = ["*.tmp"]
"#;

    #[test]
    fn the_documented_shape_parses() {
        let c = Config::parse("arkiv.toml", EXAMPLE).unwrap();
        assert_eq!(c.repository_for("shop").unwrap().0, "main");
        assert_eq!(c.source_url("uploads").unwrap(), None);
        assert_eq!(c.sources["shop"].verify.as_ref().unwrap().rows, ["orders>=10"]);
    }

    #[test]
    fn a_misspelt_key_is_an_error_naming_it_and_its_line() {
        let text = EXAMPLE.replace("password_file", "pasword_file");
        let e = Config::parse("arkiv.toml", &text).unwrap_err().to_string();
        assert!(e.starts_with("arkiv.toml: ") && e.contains("pasword_file") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn options_become_query_parameters() {
        let text = r#"
[repositories.r]
url = "/r"
[sources.db]
url = "postgres://app@db:5432/shop"
options = { only = "schema", "exclude-table" = ["a b", "c"] }
"#;
        let c = Config::parse("c.toml", text).unwrap();
        assert_eq!(
            c.source_url("db").unwrap().unwrap(),
            "postgres://app@db:5432/shop?exclude-table=a%20b,c&only=schema"
        );
    }

    #[test]
    fn a_source_needs_exactly_one_of_url_and_paths() {
        let both = "[repositories.r]\nurl='/r'\n[sources.x]\nurl='command:true'\npaths=['/a']\n";
        assert!(Config::parse("c", both).unwrap_err().to_string().contains("not both"));
        let neither = "[repositories.r]\nurl='/r'\n[sources.x]\ntags=['a']\n";
        assert!(Config::parse("c", neither).unwrap_err().to_string().contains("needs url"));
        let bad = "[repositories.r]\nurl='/r'\n[sources.x]\nurl='/srv/data'\n";
        assert!(Config::parse("c", bad).unwrap_err().to_string().contains("not a source URL"));
    }

    #[test]
    fn a_source_must_name_an_existing_repository_when_there_are_several() {
        let text = "[repositories.a]\nurl='/a'\n[repositories.b]\nurl='/b'\n[sources.x]\npaths=['/x']\n";
        assert!(Config::parse("c", text).unwrap_err().to_string().contains("name one"));
        let text = "[repositories.a]\nurl='/a'\n[sources.x]\npaths=['/x']\nrepository='zz'\n";
        let e = Config::parse("c", text).unwrap_err().to_string();
        assert!(e.contains("no repository named 'zz'") && e.contains("sources.x"), "{e}");
    }
}
