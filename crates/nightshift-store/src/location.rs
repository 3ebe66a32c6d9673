//! Where a project's store lives: a SQLite file, or a PostgreSQL database named by URL.

use std::fmt;
use std::path::PathBuf;

/// Where the metadata store lives. Shown to users through [`fmt::Display`], which never
/// includes a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several hosts.
    Postgres(PgLocation),
}

/// A PostgreSQL store: `postgresql://user@host:port/db?sslmode=…`. The password comes from
/// the environment, never from the project's files: the variable `password_env` names, or
/// `PGPASSWORD` as libpq reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLocation {
    pub url: String,
    pub password_env: Option<String>,
}

impl Location {
    /// The feature that builds this backend in.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        }
    }

    /// A stable name for this store, the same from every host that uses it: what a try's
    /// processes are tagged with, so two stores on one machine never mix their tries.
    pub fn identity(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(pg) => identity_url(&pg.url),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(pg) => f.write_str(&redact_url(&pg.url)),
        }
    }
}

pub use nightshift_core::redact::redact_url;

/// The database a URL names, without its password or query: a store's identity (two
/// databases on one server are two stores).
fn identity_url(url: &str) -> String {
    let (base, _query) = url.split_once('?').unwrap_or((url, ""));
    let Some((scheme, rest)) = base.split_once("://") else {
        return base.to_owned();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_owned(),
    };
    if path.is_empty() && !rest.contains('/') {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            identity_url("postgresql://ns:s3cret@db.example:5433/ns?sslmode=require&password=x"),
            "postgresql://ns:***@db.example:5433/ns"
        );
        assert_eq!(
            identity_url("postgresql://ns@localhost/ns"),
            "postgresql://ns@localhost/ns"
        );
        assert_eq!(
            identity_url("postgresql://localhost"),
            "postgresql://localhost"
        );
        let loc = Location::Postgres(PgLocation {
            url: "postgres://a:b@h/d".into(),
            password_env: None,
        });
        assert_eq!(loc.to_string(), "postgres://h/…");
        assert_eq!(loc.identity(), "postgres://a:***@h/d");
    }
}
