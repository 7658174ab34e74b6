//! The incidents' full-text index, kept up to date once per write transaction instead of once per
//! row.
//!
//! Why deferred: FTS5 writes its pending terms to disk whenever a statement opens a savepoint in a
//! transaction that already touched the index, which in a write batch is almost every statement.
//! Maintained by triggers, the index was therefore flushed and merged once per incident: a tenth of
//! the county's CPU in a cold sync. Instead the triggers on `incidents` note which rows changed (and
//! what the index holds for them) in `incidents_fts_pending`, and the writer folds those notes into
//! the index just before it commits. Readers only ever see committed data, so they never see the
//! index behind the table.

use rusqlite::Connection;

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

    fn put(conn: &Connection, id: &str, title: &str, description: &str) {
        conn.execute(
            "INSERT INTO incidents (id, area, category, title, description, state, reporter, lead_department,
                assist_departments, assignee, escalated, created_ms, updated_ms, due_state, conflicts)
             VALUES (?1, '330723001001', '环境卫生', ?2, ?3, 'reported', 'u', NULL, '', NULL, 0, 1, 1, 'ok', 0)
             ON CONFLICT(id) DO UPDATE SET title = excluded.title, description = excluded.description",
            rusqlite::params![id, title, description],
        )
        .unwrap();
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
}
