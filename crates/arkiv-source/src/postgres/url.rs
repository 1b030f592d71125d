//! `postgres://[user@]host[:port]/[dbname][?options]`: what a PostgreSQL
//! source, restore target or sandbox is named by.
//!
//! The URL never carries a password: libpq finds it in `PGPASSWORD`,
//! `~/.pgpass` or `PGPASSFILE`, as for every other PostgreSQL tool, so it
//! cannot leak into logs, shell history, process lists or a snapshot's
//! recorded location.

use crate::error::{Error, Result};
use crate::process::Tool;

/// How a connection is opened: everything but the password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conn {
    /// A host name, an address, or (starting with `/`) a socket directory.
    /// `None`: libpq's default (`PGHOST`, else the local socket).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

impl Conn {
    /// `host:port` for messages, with libpq's defaults spelled out as such.
    pub fn server(&self) -> String {
        let host = self.host.clone().unwrap_or_else(|| "default host".into());
        match self.port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// A PostgreSQL client program set up to reach this server (and
    /// database `db`). Never prompts: a missing password is an error, not
    /// a hang on a terminal nobody watches.
    pub fn tool(&self, program: &str, db: Option<&str>) -> Tool {
        let mut t = Tool::new(program).arg("--no-password");
        if let Some(h) = &self.host {
            t = t.arg("--host").arg(h);
        }
        if let Some(p) = self.port {
            t = t.arg("--port").arg(p.to_string());
        }
        if let Some(u) = &self.user {
            t = t.arg("--username").arg(u);
        }
        if let Some(db) = db {
            // As a connection string, so that a database named like one
            // (`a=b`, `postgres://x`) is still taken as a name.
            t = t.arg(format!("--dbname=dbname={}", conninfo_value(db)));
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            // An unreachable host behind a firewall would otherwise hang
            // for the kernel's TCP timeout (minutes).
            t = t.env("PGCONNECT_TIMEOUT", "15");
        }
        t
    }

    /// The password-free URL of this server and database `db`.
    pub fn url(&self, db: Option<&str>) -> String {
        let mut s = String::from("postgres://");
        if let Some(u) = &self.user {
            s.push_str(&pct_encode(u));
            s.push('@');
        }
        let socket = self.host.as_deref().filter(|h| h.starts_with('/'));
        match self.host.as_deref() {
            Some(h) if socket.is_none() && h.contains(':') => s.push_str(&format!("[{h}]")),
            Some(h) if socket.is_none() => s.push_str(h),
            _ => {}
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push('/');
        if let Some(db) = db {
            s.push_str(&pct_encode(db));
        }
        if let Some(dir) = socket {
            s.push_str("?host=");
            s.push_str(&pct_encode_path(dir));
        }
        s
    }
}

/// What a dump holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Schema,
    Data,
}

impl Only {
    pub fn as_str(self) -> &'static str {
        match self {
            Only::Schema => "schema",
            Only::Data => "data",
        }
    }
}

/// A parsed PostgreSQL URL. Options only some uses understand are checked
/// by those uses ([`PgUrl::reject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub conn: Conn,
    /// The database; `None` means every database on the server.
    pub dbname: Option<String>,
    /// Backup: `only=schema|data`.
    pub only: Option<Only>,
    /// Backup: `globals=true|false` (default: true for a whole server,
    /// false for one database).
    pub globals: Option<bool>,
    /// Backup of a whole server: databases left out (exact names).
    pub exclude_databases: Vec<String>,
    /// Backup: `role-passwords=false` dumps roles without their password
    /// hashes (needed where `pg_authid` is unreadable, e.g. managed servers).
    pub role_passwords: bool,
    /// Restore: `owner=false` restores without ownership and privileges
    /// (for a server that lacks the original roles).
    pub owner: bool,
    /// Restore: `single-transaction=false` lets a huge restore commit as
    /// it goes instead of all at once.
    pub single_transaction: bool,
    /// Sandbox: which database of a snapshot of several to restore.
    pub database: Option<String>,
    /// The option keys given, for [`PgUrl::reject`].
    given: Vec<String>,
}

pub const BACKUP_OPTIONS: &[&str] = &["all", "only", "globals", "exclude-database", "role-passwords"];
pub const RESTORE_OPTIONS: &[&str] = &["owner", "single-transaction"];
pub const SANDBOX_OPTIONS: &[&str] = &["owner", "database"];

const PASSWORD_REFUSED: &str = "a password in a postgres URL is refused (it would end up in logs and shell history): \
     set PGPASSWORD, or put it in ~/.pgpass or the file PGPASSFILE names";

impl PgUrl {
    pub fn parse(spec: &str) -> Result<PgUrl> {
        let bad = |why: &str| Error::Invalid(format!("{}: {why}", redact(spec)));
        let (scheme, rest) =
            spec.split_once("://").ok_or_else(|| bad("expected postgres://[user@]host[:port]/[db]"))?;
        if !matches!(scheme.to_ascii_lowercase().as_str(), "postgres" | "postgresql") {
            return Err(bad("expected a postgres:// or postgresql:// URL"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let mut url = PgUrl {
            conn: Conn::default(),
            dbname: None,
            only: None,
            globals: None,
            exclude_databases: Vec::new(),
            role_passwords: true,
            owner: true,
            single_transaction: true,
            database: None,
            given: Vec::new(),
        };
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                if userinfo.contains(':') {
                    return Err(Error::Invalid(PASSWORD_REFUSED.into()));
                }
                url.conn.user = Some(pct_decode(userinfo).map_err(|e| bad(&e))?).filter(|u| !u.is_empty());
                hp
            }
            None => authority,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            url.conn.host = Some(pct_decode(host).map_err(|e| bad(&e))?);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            url.conn.port = Some(p.parse().map_err(|_| bad(&format!("'{p}' is not a port")))?);
        }
        if path.contains('/') {
            return Err(bad("the path is one database name (encode a '/' in it as %2F)"));
        }
        if !path.is_empty() {
            url.dbname = Some(pct_decode(path).map_err(|e| bad(&e))?);
        }
        let mut all = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = pct_decode(v).map_err(|e| bad(&e))?;
            let flag = |v: &str| -> Result<bool> {
                match v {
                    "true" | "1" | "yes" | "on" => Ok(true),
                    "false" | "0" | "no" | "off" => Ok(false),
                    _ => Err(bad(&format!("{k}={v}: expected true or false"))),
                }
            };
            match k {
                "password" => return Err(Error::Invalid(PASSWORD_REFUSED.into())),
                "host" => url.conn.host = Some(v).filter(|h| !h.is_empty()),
                "port" => url.conn.port = Some(v.parse().map_err(|_| bad(&format!("'{v}' is not a port")))?),
                "user" => url.conn.user = Some(v).filter(|u| !u.is_empty()),
                "all" => all = flag(&v)?,
                "only" => {
                    url.only = Some(match v.as_str() {
                        "schema" => Only::Schema,
                        "data" => Only::Data,
                        _ => return Err(bad(&format!("only={v}: expected only=schema or only=data"))),
                    })
                }
                "globals" => url.globals = Some(flag(&v)?),
                "exclude-database" => url.exclude_databases.push(v),
                "role-passwords" => url.role_passwords = flag(&v)?,
                "owner" => url.owner = flag(&v)?,
                "single-transaction" => url.single_transaction = flag(&v)?,
                "database" => url.database = Some(v),
                other => {
                    return Err(bad(&format!(
                        "unknown option '{other}' (known: host, port, user, {}, {}, database)",
                        BACKUP_OPTIONS.join(", "),
                        RESTORE_OPTIONS.join(", ")
                    )))
                }
            }
            if !url.given.iter().any(|g| g == k) {
                url.given.push(k.to_string());
            }
        }
        if all && url.dbname.is_some() {
            return Err(bad("all=true means every database: give it without a database name"));
        }
        if url.dbname.is_some() && !url.exclude_databases.is_empty() {
            return Err(bad("exclude-database applies to a backup of every database (no database name)"));
        }
        Ok(url)
    }

    /// Fails naming the options given that `what` does not use.
    pub fn reject(&self, what: &str, allowed: &[&str]) -> Result<()> {
        let conn = ["host", "port", "user"];
        let bad: Vec<&str> =
            self.given.iter().map(String::as_str).filter(|k| !conn.contains(k) && !allowed.contains(k)).collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!("{}: option {} cannot be used for {what}", self.location(), bad.join(", "))))
        }
    }

    /// The password-free location recorded for a backup: the server, the
    /// database, and `only=` (a schema-only snapshot is not a full one,
    /// and retention must not count it as one).
    pub fn location(&self) -> String {
        let mut s = self.conn.url(self.dbname.as_deref());
        if let Some(o) = self.only {
            s.push(if s.contains('?') { '&' } else { '?' });
            s.push_str("only=");
            s.push_str(o.as_str());
        }
        s
    }
}

/// The URL with anything that looks like a password replaced, for an
/// error message about a URL that failed to parse.
fn redact(spec: &str) -> String {
    match spec.split_once("://") {
        Some((scheme, rest)) => {
            let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..auth_end].rsplit_once('@') {
                Some((_, hp)) => format!("{scheme}://…@{hp}{}", &rest[auth_end..]),
                None => spec.to_string(),
            }
        }
        None => spec.to_string(),
    }
}

/// A value for a libpq connection string: quoted, with `\` and `'`
/// escaped.
pub fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn pct_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad escape in '{s}'"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape '%{hex}' in '{s}'"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' does not decode to UTF-8"))
}

fn pct_encode_with(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) || keep(c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn pct_encode(s: &str) -> String {
    pct_encode_with(s, |_| false)
}

fn pct_encode_path(s: &str) -> String {
    pct_encode_with(s, |c| c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(host: Option<&str>, port: Option<u16>, user: Option<&str>) -> Conn {
        Conn { host: host.map(Into::into), port, user: user.map(Into::into) }
    }

    #[test]
    fn full_url_parses() {
        let u = PgUrl::parse("postgres://app@db.example:6432/shop").unwrap();
        assert_eq!(u.conn, conn(Some("db.example"), Some(6432), Some("app")));
        assert_eq!(u.dbname.as_deref(), Some("shop"));
        assert_eq!(u.only, None);
        assert!(u.owner && u.single_transaction && u.role_passwords);
        assert_eq!(u.location(), "postgres://app@db.example:6432/shop");
    }

    #[test]
    fn postgresql_scheme_and_defaults() {
        let u = PgUrl::parse("postgresql://localhost").unwrap();
        assert_eq!(u.conn, conn(Some("localhost"), None, None));
        assert_eq!(u.dbname, None);
        let u = PgUrl::parse("postgres:///shop").unwrap();
        assert_eq!(u.conn, Conn::default());
        assert_eq!(u.dbname.as_deref(), Some("shop"));
        assert_eq!(u.location(), "postgres:///shop");
    }

    #[test]
    fn socket_directory_in_the_query() {
        let u = PgUrl::parse("postgres://postgres@/shop?host=/var/run/postgresql&port=5433").unwrap();
        assert_eq!(u.conn, conn(Some("/var/run/postgresql"), Some(5433), Some("postgres")));
        assert_eq!(u.location(), "postgres://postgres@:5433/shop?host=/var/run/postgresql");
        assert_eq!(PgUrl::parse(&u.location()).unwrap().conn, u.conn);
    }

    #[test]
    fn ipv6_host() {
        let u = PgUrl::parse("postgres://[::1]:5432/x").unwrap();
        assert_eq!(u.conn, conn(Some("::1"), Some(5432), None));
        assert_eq!(u.location(), "postgres://[::1]:5432/x");
    }

    #[test]
    fn names_are_percent_decoded_and_the_location_round_trips() {
        let u = PgUrl::parse("postgres://my%20user@h/my%2Fdb%3F").unwrap();
        assert_eq!(u.conn.user.as_deref(), Some("my user"));
        assert_eq!(u.dbname.as_deref(), Some("my/db?"));
        let again = PgUrl::parse(&u.location()).unwrap();
        assert_eq!(again.dbname, u.dbname);
        assert_eq!(again.conn, u.conn);
    }

    #[test]
    fn passwords_are_refused_without_being_echoed() {
        for spec in ["postgres://app:s3cret@h/db", "postgres://h/db?password=s3cret"] {
            let e = PgUrl::parse(spec).unwrap_err().to_string();
            assert!(e.contains("PGPASSWORD") && e.contains(".pgpass") && e.contains("PGPASSFILE"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn options() {
        let u =
            PgUrl::parse("postgres://h/?only=schema&globals=false&exclude-database=a&exclude-database=b%20c").unwrap();
        assert_eq!(u.only, Some(Only::Schema));
        assert_eq!(u.globals, Some(false));
        assert_eq!(u.exclude_databases, ["a", "b c"]);
        assert_eq!(u.location(), "postgres://h/?only=schema");
        assert!(u.reject("a restore target", RESTORE_OPTIONS).unwrap_err().to_string().contains("only, globals"));
        assert!(u.reject("a backup", BACKUP_OPTIONS).is_ok());
        let u = PgUrl::parse("postgres://h/db?only=data&owner=false").unwrap();
        assert_eq!(u.only, Some(Only::Data));
        assert!(!u.owner);
        assert!(PgUrl::parse("postgres://h/?all=true").unwrap().dbname.is_none());
    }

    #[test]
    fn bad_urls_say_why() {
        for (spec, why) in [
            ("postgres://h:99999/db", "not a port"),
            ("postgres://h/db?only=everything", "only=schema or only=data"),
            ("postgres://h/db?frobnicate=1", "unknown option 'frobnicate'"),
            ("postgres://h/db?all=true", "without a database name"),
            ("postgres://h/db?exclude-database=x", "every database"),
            ("postgres://h/a/b", "one database name"),
            ("postgres://h/db?globals=maybe", "true or false"),
            ("mysql://h/db", "postgres://"),
            ("postgres://h/%zz", "bad escape"),
        ] {
            let e = PgUrl::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn database_names_are_quoted_for_conninfo() {
        assert_eq!(conninfo_value("shop"), "'shop'");
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
    }
}
