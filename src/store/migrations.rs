//! Embedded, numbered schema migrations tracked by `PRAGMA user_version`.
//!
//! One function per version, each applied in its own transaction together with the version bump, so
//! a crash mid-upgrade leaves the database at the last complete version. A database whose version is
//! newer than [`LATEST`] was written by a newer binary and is refused rather than guessed at.

use std::path::Path;

use rusqlite::{Connection, Transaction};

use super::StoreError;

type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Index `i` upgrades the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[Migration] = &[v1_node_meta];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

fn v1_node_meta(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // The node's identity and settings fixed at init: node id, public key, area, name, role.
    tx.execute_batch(
        "CREATE TABLE node_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;",
    )
}

pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

pub fn check_not_newer(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found = schema_version(conn)?;
    if found > LATEST {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: LATEST,
            binary: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(found)
}

/// Brings the database up to [`LATEST`], one transaction per version.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let mut version = check_not_newer(conn, path)?;
    while version < LATEST {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let index = usize::try_from(version)
            .map_err(|_| StoreError::Job("negative schema version".into()))?;
        MIGRATIONS[index](&tx)?;
        version += 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_fresh_database_to_latest_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), LATEST);
        migrate(&mut conn, &path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), LATEST);
    }
}
