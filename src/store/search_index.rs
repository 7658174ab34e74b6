//! The incidents' full-text index, kept up to date once per write transaction instead of once per
//! row.
//!
//! Why deferred: FTS5 writes its pending terms to disk whenever a statement opens a savepoint in a
//! transaction that already touched the index, which in a write batch is almost every statement.
//! Maintained by triggers, the index was therefore flushed and merged once per incident: a tenth of
//! the county's CPU in a cold sync. Instead `incidents_fts_pending` notes which rows changed (and
//! what the index holds for them), and the writer folds those notes into the index just before it
//! commits. Readers only ever see committed data, so they never see the index behind the table.
//!
//! Who notes: the incidents projection, for the rows it inserts and the titles and descriptions it
//! changes ([`note_inserted`], [`note_changed`]); a trigger, for rows deleted. Inserts and updates
//! are noted by code rather than by triggers because a trigger makes every write of `incidents` a
//! multi-write statement, which SQLite runs with a statement journal: each page it touches copied to
//! a temporary file first. The projection is the only writer of those columns.

use rusqlite::Connection;

/// Notes that `row` of `incidents` was just inserted: the index holds nothing for it yet. Only the
/// first note of a row between flushes counts (it says what the index holds).
pub fn note_inserted(conn: &Connection, row: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO incidents_fts_pending (row, indexed) VALUES (?1, 0)",
    )?
    .execute([row])?;
    Ok(())
}

/// Notes that the title or description of `row` is about to change from these values, which are
/// what the index holds for it (unless an earlier note since the last flush says otherwise).
pub fn note_changed(
    conn: &Connection,
    row: i64,
    title: &str,
    description: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO incidents_fts_pending (row, indexed, title, description)
         VALUES (?1, 1, ?2, ?3)",
    )?
    .execute(rusqlite::params![row, title, description])?;
    Ok(())
}

/// Brings `incidents_fts` up to date with every row noted since the last call, inside the caller's
/// transaction. Cheap when nothing is pending.
pub fn flush(conn: &Connection) -> rusqlite::Result<()> {
    let pending: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM incidents_fts_pending)")?
        .query_row([], |r| r.get(0))?;
    if !pending {
        return Ok(());
    }
    // What the index holds for a changed or deleted row must be removed with exactly those values
    // (an external-content table cannot look them up any more).
    conn.prepare_cached(
        "INSERT INTO incidents_fts (incidents_fts, rowid, title, description)
         SELECT 'delete', row, title, description FROM incidents_fts_pending WHERE indexed = 1",
    )?
    .execute([])?;
    conn.prepare_cached(
        "INSERT INTO incidents_fts (rowid, title, description)
         SELECT i.row, i.title, i.description
         FROM incidents_fts_pending p JOIN incidents i ON i.row = p.row",
    )?
    .execute([])?;
    conn.prepare_cached("DELETE FROM incidents_fts_pending")?
        .execute([])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = Connection::open(&path).unwrap();
        super::super::migrations::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    /// Writes a row as the incidents projection does: noting it for the index itself.
    fn put(conn: &Connection, id: &str, title: &str, description: &str) {
        use rusqlite::OptionalExtension;
        let held: Option<(i64, String, String)> = conn
            .query_row(
                "SELECT row, title, description FROM incidents WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .unwrap();
        match held {
            None => {
                conn.execute(
                    "INSERT INTO incidents (id, area, category, title, description, state, reporter, lead_department,
                        assist_departments, assignee, escalated, created_ms, updated_ms, due_state, conflicts)
                     VALUES (?1, '330723001001', '环境卫生', ?2, ?3, 'reported', 'u', NULL, '', NULL, 0, 1, 1, 'ok', 0)",
                    rusqlite::params![id, title, description],
                )
                .unwrap();
                note_inserted(conn, conn.last_insert_rowid()).unwrap();
            }
            Some((row, held_title, held_description)) => {
                if held_title != title || held_description != description {
                    note_changed(conn, row, &held_title, &held_description).unwrap();
                }
                conn.execute(
                    "UPDATE incidents SET title = ?2, description = ?3 WHERE id = ?1",
                    rusqlite::params![id, title, description],
                )
                .unwrap();
            }
        }
    }

    /// Trigram search: terms of three characters or more.
    fn found(conn: &Connection, term: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(
                "SELECT i.id FROM incidents i WHERE i.row IN
                 (SELECT rowid FROM incidents_fts WHERE incidents_fts MATCH ?1) ORDER BY i.id",
            )
            .unwrap();
        stmt.query_map([term], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn integrity(conn: &Connection) {
        conn.execute(
            "INSERT INTO incidents_fts (incidents_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn the_index_follows_inserts_edits_and_deletes_once_flushed() {
        let (_dir, conn) = db();
        put(&conn, "a", "河道垃圾堆积", "请尽快处理");
        put(&conn, "b", "路灯损坏", "村口路灯不亮");
        assert!(found(&conn, "河道垃圾").is_empty(), "not before the flush");
        flush(&conn).unwrap();
        assert_eq!(found(&conn, "河道垃圾"), vec!["a"]);
        assert_eq!(found(&conn, "路灯损"), vec!["b"]);

        // Edited twice and another deleted before one flush: the index drops what it held.
        put(&conn, "a", "河道漂浮物", "请尽快处理");
        put(&conn, "a", "河道漂浮物较多", "已上报");
        conn.execute("DELETE FROM incidents WHERE id = 'b'", [])
            .unwrap();
        put(&conn, "c", "河道垃圾桶满溢", "");
        flush(&conn).unwrap();
        assert_eq!(found(&conn, "河道垃圾"), vec!["c"]);
        assert_eq!(found(&conn, "漂浮物"), vec!["a"]);
        assert!(found(&conn, "路灯损").is_empty());
        assert!(found(&conn, "请尽快").is_empty());
        integrity(&conn);

        // Inserted and deleted before a flush: nothing reaches the index. An edit that leaves the
        // text alone notes nothing.
        put(&conn, "d", "井盖缺失", "");
        conn.execute("DELETE FROM incidents WHERE id = 'd'", [])
            .unwrap();
        conn.execute("UPDATE incidents SET state = 'accepted' WHERE id = 'a'", [])
            .unwrap();
        flush(&conn).unwrap();
        assert!(found(&conn, "井盖缺").is_empty());
        let left: i64 = conn
            .query_row("SELECT count(*) FROM incidents_fts_pending", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(left, 0);
        integrity(&conn);
    }

    /// Writes to `incidents` must stay single-write statements: an insert or update trigger would make
    /// SQLite journal every page each projection write touches (see the module's comment).
    #[test]
    fn only_deletes_from_incidents_fire_a_trigger() {
        let (_dir, conn) = db();
        let triggers: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'incidents'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(triggers, vec!["incidents_fts_delete".to_string()]);
    }
}
