//! Verifying the audit chain: every entry's hash, every link, contiguous sequence numbers, the head
//! recorded beside the chain, and every checkpoint signature against the node's key.

use rusqlite::{Connection, OptionalExtension};
use township_sync::PublicKey;

use super::{GENESIS, HEAD_KEY, checkpoint_message, entry_hash, head_message};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: i64,
    pub checkpoints: i64,
    /// Entries after the last signed checkpoint: chained, not yet signed.
    pub unsigned_tail: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("audit chain broken at sequence {seq}: {reason}")]
    Broken { seq: i64, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for VerifyError {
    fn from(e: rusqlite::Error) -> Self {
        VerifyError::Store(e.into())
    }
}

fn broken(seq: i64, reason: impl Into<String>) -> VerifyError {
    VerifyError::Broken {
        seq,
        reason: reason.into(),
    }
}

pub fn verify(conn: &Connection, key: &PublicKey) -> Result<Report, VerifyError> {
    let mut stmt = conn.prepare(
        "SELECT seq, at_ms, actor, action, target, detail, prev_hash, hash FROM audit_log ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1i64;
    let mut prev = GENESIS.to_string();
    // Only the hashes a checkpoint signs are kept, not the whole chain's: a hub's memory stays flat
    // however long its log grows.
    let signed: std::collections::HashSet<i64> = conn
        .prepare("SELECT seq FROM audit_checkpoints")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut hashes = std::collections::HashMap::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let (at_ms, actor, action, target, detail, prev_hash, hash): (
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
        ) = (
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
            row.get(7)?,
        );
        if seq != expected_seq {
            return Err(broken(
                expected_seq.min(seq),
                format!(
                    "expected sequence {expected_seq}, found {seq} (an entry was removed or inserted)"
                ),
            ));
        }
        if prev_hash != prev {
            return Err(broken(
                seq,
                "its previous-hash does not match the entry before it (removed, reordered or inserted)",
            ));
        }
        if entry_hash(seq, at_ms, &actor, &action, &target, &detail, &prev_hash) != hash {
            return Err(broken(seq, "its content does not match its hash (altered)"));
        }
        if signed.contains(&seq) {
            hashes.insert(seq, hash.clone());
        }
        prev = hash;
        expected_seq += 1;
    }
    let entries = expected_seq - 1;

    let head: Option<String> = conn
        .query_row(
            "SELECT value FROM node_meta WHERE key = ?1",
            [HEAD_KEY],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(head) = head {
        let parsed = super::parse_head(&head);
        let (head_seq, head_hash, signature) = (
            parsed.seq.unwrap_or(-1),
            parsed.hash,
            parsed.signature.unwrap_or(""),
        );
        if head_seq != entries || (entries > 0 && prev != head_hash) {
            return Err(broken(
                (entries + 1).min(head_seq.max(1)),
                format!(
                    "the recorded head is entry {head_seq} but the chain ends at {entries} (entries were cut off the end or rewritten)"
                ),
            ));
        }
        let signed_by_node = hex::decode(signature)
            .is_ok_and(|sig| key.verify(&head_message(head_seq, head_hash), &sig));
        if !signed_by_node {
            return Err(broken(
                head_seq.max(1),
                "the head is not signed by the node key (the newest entries were rewritten without it)",
            ));
        }
    } else if entries > 0 {
        return Err(broken(1, "the chain head record is missing"));
    }

    let mut stmt =
        conn.prepare("SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq")?;
    let checkpoints: Vec<(i64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut last_signed = 0;
    for (seq, hash, signature) in &checkpoints {
        match hashes.get(seq) {
            Some(h) if h == hash => {}
            Some(_) => {
                return Err(broken(
                    *seq,
                    "the signed checkpoint does not match this entry's hash",
                ));
            }
            None => {
                return Err(broken(
                    *seq,
                    "a signed checkpoint names an entry that is missing",
                ));
            }
        }
        let sig =
            hex::decode(signature).map_err(|_| broken(*seq, "checkpoint signature is not hex"))?;
        if !key.verify(&checkpoint_message(*seq, hash), &sig) {
            return Err(broken(
                *seq,
                "the checkpoint signature is not the node key's",
            ));
        }
        last_signed = *seq;
    }
    Ok(Report {
        entries,
        checkpoints: checkpoints.len() as i64,
        unsigned_tail: entries - last_signed,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Event, append, checkpoint_if_due};
    use super::*;
    use township_sync::NodeKey;

    fn setup(n: i64) -> (Connection, NodeKey) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::store::migrations::AUDIT_SCHEMA)
            .unwrap();
        conn.execute_batch("CREATE TABLE node_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        let (key, _) = NodeKey::generate().unwrap();
        for i in 0..n {
            append(
                &conn,
                &key,
                1_000 + i,
                Event::new("admin", "user.add", &format!("user-{i}")),
            )
            .unwrap();
        }
        (conn, key)
    }

    fn first_bad(conn: &Connection, key: &NodeKey) -> i64 {
        match verify(conn, &key.public_key()) {
            Err(VerifyError::Broken { seq, .. }) => seq,
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn intact_chain_verifies_with_checkpoints() {
        let (conn, key) = setup(250);
        let report = verify(&conn, &key.public_key()).unwrap();
        assert_eq!(
            report,
            Report {
                entries: 250,
                checkpoints: 2,
                unsigned_tail: 50
            }
        );
        assert_eq!(
            checkpoint_if_due(
                &conn,
                &key,
                1_000 + super::super::CHECKPOINT_INTERVAL_MS * 2
            )
            .unwrap(),
            Some(250)
        );
        assert_eq!(verify(&conn, &key.public_key()).unwrap().unsigned_tail, 0);
    }

    #[test]
    fn altered_entry_is_named() {
        let (conn, key) = setup(30);
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 17", [])
            .unwrap();
        assert_eq!(first_bad(&conn, &key), 17);
    }

    #[test]
    fn removed_entry_is_named() {
        let (conn, key) = setup(30);
        conn.execute("DELETE FROM audit_log WHERE seq = 12", [])
            .unwrap();
        assert_eq!(first_bad(&conn, &key), 12);
    }

    #[test]
    fn removed_tail_is_noticed() {
        let (conn, key) = setup(30);
        conn.execute("DELETE FROM audit_log WHERE seq > 27", [])
            .unwrap();
        assert_eq!(first_bad(&conn, &key), 28);
    }

    #[test]
    fn reordered_entries_are_named() {
        let (conn, key) = setup(30);
        conn.execute_batch(
            "UPDATE audit_log SET seq = -1 WHERE seq = 8; UPDATE audit_log SET seq = 8 WHERE seq = 9; UPDATE audit_log SET seq = 9 WHERE seq = -1;",
        )
        .unwrap();
        assert_eq!(first_bad(&conn, &key), 8);
    }

    #[test]
    fn inserted_entry_is_named() {
        let (conn, key) = setup(30);
        // Shift the tail up and slip a forged entry in at 20 with a correctly computed hash.
        conn.execute_batch("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 20; UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1020;").unwrap();
        let prev: String = conn
            .query_row("SELECT hash FROM audit_log WHERE seq = 19", [], |r| {
                r.get(0)
            })
            .unwrap();
        let hash = entry_hash(20, 5, "mallory", "user.add", "x", "{}", &prev);
        conn.execute(
            "INSERT INTO audit_log (seq, at_ms, actor, action, target, detail, prev_hash, hash) VALUES (20, 5, 'mallory', 'user.add', 'x', '{}', ?1, ?2)",
            [prev, hash],
        )
        .unwrap();
        assert_eq!(first_bad(&conn, &key), 21);
    }

    #[test]
    fn a_rewritten_unsigned_tail_is_noticed() {
        // 130 entries: the last 30 are after the last checkpoint. Rewrite entry 125 and re-chain
        // everything after it, as someone with the database but not the key would.
        let (conn, key) = setup(130);
        let mut prev: String = conn
            .query_row("SELECT hash FROM audit_log WHERE seq = 124", [], |r| {
                r.get(0)
            })
            .unwrap();
        for seq in 125..=130 {
            let (at_ms, actor, action, target, detail): (i64, String, String, String, String) =
                conn.query_row(
                    "SELECT at_ms, actor, action, target, detail FROM audit_log WHERE seq = ?1",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap();
            let actor = if seq == 125 {
                "someone-else".to_string()
            } else {
                actor
            };
            let hash = entry_hash(seq, at_ms, &actor, &action, &target, &detail, &prev);
            conn.execute(
                "UPDATE audit_log SET actor = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
                rusqlite::params![seq, actor, prev, hash],
            )
            .unwrap();
            prev = hash;
        }
        // The attacker rewrites the head too, but cannot sign it.
        conn.execute(
            "UPDATE node_meta SET value = ?1 WHERE key = 'audit_head'",
            [format!("130:{prev}")],
        )
        .unwrap();
        assert_eq!(first_bad(&conn, &key), 130);
        // Nor can they wait for the node to sign it at its next start: that happens only once, right
        // after the upgrade that introduced head signatures.
        assert!(!super::super::sign_head_if_unsigned(&conn, &key).unwrap());
        assert_eq!(first_bad(&conn, &key), 130);
        // Signed with another key, it is no better.
        let (other, _) = NodeKey::generate().unwrap();
        let forged = hex::encode(other.sign(&head_message(130, &prev)));
        conn.execute(
            "UPDATE node_meta SET value = ?1 WHERE key = 'audit_head'",
            [format!("130:{prev}:{forged}")],
        )
        .unwrap();
        assert_eq!(first_bad(&conn, &key), 130);
    }

    #[test]
    fn forged_checkpoint_is_named() {
        let (conn, key) = setup(120);
        let (other, _) = NodeKey::generate().unwrap();
        let hash: String = conn
            .query_row("SELECT hash FROM audit_log WHERE seq = 100", [], |r| {
                r.get(0)
            })
            .unwrap();
        let forged = hex::encode(other.sign(&checkpoint_message(100, &hash)));
        conn.execute(
            "UPDATE audit_checkpoints SET signature = ?1 WHERE seq = 100",
            [forged],
        )
        .unwrap();
        assert_eq!(first_bad(&conn, &key), 100);
    }
}
