//! Where the task store lives, from `[store] url`: the embedded SQLite database (the default,
//! under the data directory) or a PostgreSQL server that several replicas share. Parsed once at
//! start-up, so a bad URL stops the server before it binds anything else.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use deltaspace_core::secret::Secret;

/// The database file of the embedded store, under the data directory.
pub const DATABASE_FILE: &str = "tasks.sqlite3";

/// Which store the server (or `deltaspace import` / `export`) opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The SQLite database file, on this machine only.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/db?sslmode=...`); it may
    /// hold a password, so it never prints.
    Postgres(Secret),
}

/// Why `[store] url` names no store this build can open.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error(
        "[store] url must be empty (SQLite under the data directory), sqlite://PATH or \
         postgres://…; its scheme is {0:?}"
    )]
    Scheme(String),
    #[error("[store] url sqlite:// names no file")]
    EmptyPath,
    /// The message of the PostgreSQL URL parser; it never quotes the password.
    #[error("[store] url is not a PostgreSQL connection URL")]
    Postgres(#[source] tokio_postgres::Error),
}

impl StoreLocation {
    /// The store `url` names; empty means SQLite in `data_dir`.
    pub fn parse(url: &str, data_dir: &Path) -> Result<Self, LocationError> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(Self::sqlite_in(data_dir));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(LocationError::EmptyPath);
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            tokio_postgres::Config::from_str(url).map_err(LocationError::Postgres)?;
            return Ok(Self::Postgres(Secret::new(url)));
        }
        // Only a scheme is echoed: anything else may hold a password (libpq's `password=…` form).
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme)
            .filter(|scheme| {
                scheme.len() <= 20
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            })
            .unwrap_or("(none)");
        Err(LocationError::Scheme(scheme.to_string()))
    }

    /// The embedded database under `data_dir` (`tasks.sqlite3`), as before `[store] url` existed.
    pub fn sqlite_in(data_dir: &Path) -> Self {
        Self::Sqlite(data_dir.join(DATABASE_FILE))
    }

    /// The backend's name in `/health/ready` and logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// `deltaspace import` and benches name a data directory: its SQLite database.
impl From<&Path> for StoreLocation {
    fn from(data_dir: &Path) -> Self {
        Self::sqlite_in(data_dir)
    }
}

impl From<&StoreLocation> for StoreLocation {
    fn from(location: &StoreLocation) -> Self {
        location.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        let data = Path::new("data");
        assert_eq!(
            StoreLocation::parse("", data).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("data/tasks.sqlite3"))
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///var/lib/ds/t.db", data).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/var/lib/ds/t.db"))
        );
        let postgres =
            StoreLocation::parse("postgres://u:hunter2@db:5432/ds?sslmode=require", data).unwrap();
        assert_eq!(postgres.backend(), "postgres");
        assert!(!format!("{postgres:?}").contains("hunter2"));
        assert!(matches!(
            StoreLocation::parse("mysql://db/ds", data),
            Err(LocationError::Scheme(_))
        ));
        assert!(StoreLocation::parse("sqlite://", data).is_err());
        let bad =
            StoreLocation::parse("postgres://u:hunter2@db/ds?sslmode=sometimes", data).unwrap_err();
        assert!(!format!("{bad:?} {bad}").contains("hunter2"));
    }
}
