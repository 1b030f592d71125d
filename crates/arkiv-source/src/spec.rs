//! Naming a stream source or restore target on the command line: a URL
//! whose scheme says what it is (`postgres://…`, `mysql://…`,
//! `sqlite:///path`, `redis://…`, `command:…`, `s3://…` for a bucket).
//! Anything else is a path, for the files source.

use crate::error::Result;
use crate::stream::{StreamSource, StreamTarget};
use crate::verify::Sandbox;

/// The kinds of stream source, by URL scheme.
pub fn kind_of(spec: &str) -> Option<&'static str> {
    let scheme = spec.split_once(':')?.0.to_ascii_lowercase();
    Some(match scheme.as_str() {
        "command" => "command",
        "postgres" | "postgresql" => "postgres",
        "sqlite" => "sqlite",
        "mysql" | "mariadb" => "mysql",
        // rediss:// is named so that its refusal says why.
        "redis" | "rediss" => "redis",
        _ => return None,
    })
}

/// Whether `spec` names a source rather than a path: a stream source's URL
/// or a bucket's (`s3://`, `gs://`, `azblob://`), which is a tree source of
/// its own (`crate::bucket`).
pub fn is_source_url(spec: &str) -> bool {
    kind_of(spec).is_some() || crate::bucket::is_bucket_url(spec)
}

/// Passwords a URL carries (userinfo, or a `password=`-like query value):
/// every source refuses them, and whichever of its checks fires first, its
/// message must not repeat them.
fn secrets_in(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (head, query) = spec.split_once('?').unwrap_or((spec, ""));
    if let Some(rest) = head.split_once("://").map(|(_, r)| r) {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                out.push(pw.to_string());
            }
        }
    }
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if matches!(k.to_ascii_lowercase().as_str(), "password" | "pass" | "passwd" | "pwd") {
                out.push(v.to_string());
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Whether `spec` carries a password (see [`secrets_in`]): the
/// configuration file refuses such URLs before any source sees them.
pub fn carries_password(spec: &str) -> bool {
    !secrets_in(spec).is_empty()
}

/// `r` with any password of `spec` blanked out of its error.
fn scrubbed<T>(spec: &str, r: Result<T>) -> Result<T> {
    let secrets = secrets_in(spec);
    r.map_err(|e| {
        let text = e.to_string();
        if secrets.iter().any(|s| text.contains(s.as_str())) {
            let mut clean = text;
            for s in &secrets {
                clean = clean.replace(s.as_str(), "***");
            }
            crate::error::Error::Invalid(clean)
        } else {
            e
        }
    })
}

/// The source a URL names, or `None` if it is not a source URL (a path).
pub fn source(spec: &str) -> Option<Result<Box<dyn StreamSource>>> {
    let kind = kind_of(spec)?;
    let rest = &spec[spec.find(':').expect("has a scheme") + 1..];
    Some(scrubbed(
        spec,
        match kind {
            "command" => crate::command::CommandSource::new(rest).map(|s| Box::new(s) as Box<dyn StreamSource>),
            "postgres" => crate::postgres::PgDumpSource::new(spec).map(|s| Box::new(s) as Box<dyn StreamSource>),
            "sqlite" => crate::sqlite::SqliteSource::new(rest).map(|s| Box::new(s) as Box<dyn StreamSource>),
            "mysql" => crate::mysql::MysqlSource::new(spec).map(|s| Box::new(s) as Box<dyn StreamSource>),
            "redis" => crate::redis::RedisSource::new(spec).map(|s| Box::new(s) as Box<dyn StreamSource>),
            _ => unreachable!("every kind is handled"),
        },
    ))
}

/// The restore target a URL names, or `None` if it is a directory.
pub fn target(spec: &str) -> Option<Result<Box<dyn StreamTarget>>> {
    let kind = kind_of(spec)?;
    let rest = &spec[spec.find(':').expect("has a scheme") + 1..];
    Some(scrubbed(
        spec,
        match kind {
            "command" => {
                Ok(Box::new(crate::command::CommandTarget { command: rest.to_string() }) as Box<dyn StreamTarget>)
            }
            "postgres" => crate::postgres::PgTarget::new(spec).map(|t| Box::new(t) as Box<dyn StreamTarget>),
            "sqlite" => crate::sqlite::SqliteTarget::new(rest).map(|t| Box::new(t) as Box<dyn StreamTarget>),
            "mysql" => crate::mysql::MysqlTarget::new(spec).map(|t| Box::new(t) as Box<dyn StreamTarget>),
            "redis" => crate::redis::RedisFileTarget::new(spec).map(|t| Box::new(t) as Box<dyn StreamTarget>),
            _ => unreachable!("every kind is handled"),
        },
    ))
}

/// The sandbox a verified restore of a `kind` snapshot uses. `location` is
/// where the snapshot was taken (its recorded path, e.g. the database
/// server); `spec` is what the operator gave `--sandbox`, if anything (a
/// server URL to restore on instead, or `cluster` for a temporary
/// PostgreSQL). `None`: this kind has no sandbox of its own, and its
/// streams are restored as files into a temporary directory.
pub fn sandbox(kind: &str, location: &str, spec: Option<&str>) -> Option<Result<Box<dyn Sandbox>>> {
    match kind {
        "postgres" => Some(crate::postgres::sandbox::sandbox(location, spec)),
        // `--sandbox DIR`: where the temporary directory is made.
        "sqlite" => Some(Ok(Box::new(crate::sqlite::SqliteSandbox::new(spec)))),
        // `--sandbox mysql://…`: another server for the scratch database.
        "mysql" => Some(crate::mysql::MysqlSandbox::new(location, spec).map(|s| Box::new(s) as Box<dyn Sandbox>)),
        "redis" => Some(crate::redis::RedisSandbox::new(spec).map(|s| Box::new(s) as Box<dyn Sandbox>)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_not_sources() {
        for p in ["/srv/data", "data", "./x:y", "C"] {
            assert!(source(p).is_none(), "{p}");
        }
    }

    #[test]
    fn a_password_is_never_repeated_whichever_check_fails_first() {
        for url in [
            "postgres://h/db?sslmode=require&password=s3cret-pw",
            "mysql://db/shop?ssl=1&password=s3cret-pw",
            "redis://h/0?password=s3cret-pw",
            "mysql://u:s3cret-pw@h:notaport/db",
        ] {
            let e = source(url).unwrap().err().expect("refused").to_string();
            assert!(!e.contains("s3cret-pw"), "{url}: {e}");
            let e = target(url).unwrap().err().expect("refused").to_string();
            assert!(!e.contains("s3cret-pw"), "{url}: {e}");
        }
    }

    #[test]
    fn a_command_url_is_a_command_source() {
        let s = source("command:echo hi").unwrap().unwrap();
        assert_eq!(s.kind(), "command");
        assert_eq!(s.location(), "command:echo hi");
    }
}
