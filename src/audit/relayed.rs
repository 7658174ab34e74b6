//! Audit chains from below, checked where they land. Every node ships its chain up (see
//! `sync::streams`) and townships relay their villages' chains with the origin kept, so a county holds
//! one chain per node of its tree, some of them passed on by nodes that could have altered them.
//! Each chain is checked as its batches are stored, in the same transaction: every entry must hash
//! to its recorded hash and point back to the entry before it, and every signed checkpoint must
//! verify against the origin's key — the key whose digest is the origin's node id, and for a node
//! enrolled here the enrolled key. A relaying node can drop entries (the chain then waits at the gap)
//! but not alter, insert or re-sign them without the origin's key. The first fault freezes the
//! chain's status as broken, audits it once, and shows in `/api/v1/sync/chains`, on the nodes page
//! and in the `township_audit_chains_broken` metric.

use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use township_sync::PublicKey;

use super::{CHECKPOINT_EVERY, GENESIS, checkpoint_message, entry_hash};
use crate::store::StoreError;

/// Entries looked at per pass; the rest wait for the next batch.
const PASS: i64 = 5_000;
/// More entries than this past the last signed checkpoint means checkpoints were stripped: a node
/// signs one at least every [`CHECKPOINT_EVERY`] entries.
const UNSIGNED_TOLERATED: i64 = 2 * CHECKPOINT_EVERY;

/// One entry as shipped: the stored fields, and on checkpoint entries the signature and the key.
#[derive(Debug, Deserialize)]
struct Shipped {
    seq: i64,
    at_ms: i64,
    actor: String,
    action: String,
    target: String,
    detail: String,
    prev_hash: String,
    hash: String,
    #[serde(default)]
    checkpoint: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
}

/// How far one origin's chain has been checked.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChainStatus {
    pub origin: String,
    /// Entries checked, contiguous from the first.
    pub entries: i64,
    /// The last entry covered by a verified checkpoint signature.
    pub signed_seq: i64,
    pub intact: bool,
    pub broken_seq: Option<i64>,
    pub problem: Option<String>,
    pub checked_ms: i64,
}

struct State {
    verified: i64,
    last_hash: String,
    signed: i64,
    public_key: Option<String>,
    broken: bool,
}

fn state(conn: &Connection, origin: &str) -> Result<State, StoreError> {
    Ok(conn
        .query_row(
            "SELECT verified_seq, last_hash, signed_seq, public_key, broken_seq FROM audit_chains WHERE origin = ?1",
            [origin],
            |r| {
                Ok(State {
                    verified: r.get(0)?,
                    last_hash: r.get(1)?,
                    signed: r.get(2)?,
                    public_key: r.get(3)?,
                    broken: r.get::<_, Option<i64>>(4)?.is_some(),
                })
            },
        )
        .optional()?
        .unwrap_or(State {
            verified: 0,
            last_hash: GENESIS.to_string(),
            signed: 0,
            public_key: None,
            broken: false,
        }))
}

/// A fault found in a chain: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub seq: i64,
    pub problem: String,
}

/// Checks the entries of `origin`'s chain stored since the last check. Returns the fault if this
/// check found one (a chain already broken is not looked at again).
pub fn check(conn: &Connection, origin: &str, now_ms: i64) -> Result<Option<Fault>, StoreError> {
    let mut st = state(conn, origin)?;
    if st.broken {
        return Ok(None);
    }
    let enrolled: Option<String> = conn
        .query_row(
            "SELECT public_key FROM sync_peers WHERE node_id = ?1 AND relation = 'downstream'",
            [origin],
            |r| r.get(0),
        )
        .optional()?;
    let mut fault = None;
    let mut stmt = conn.prepare_cached(
        "SELECT seq, payload FROM stream_records WHERE origin = ?1 AND stream = 'audit' AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map(params![origin, st.verified, PASS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (seq, payload) in rows {
        if seq != st.verified + 1 {
            // A gap: the missing entries have not arrived (or were withheld); wait for them.
            break;
        }
        match check_entry(seq, &payload, &st, origin, enrolled.as_deref()) {
            Ok((hash, signed_by)) => {
                if let Some(key) = signed_by {
                    st.signed = seq;
                    st.public_key = Some(key);
                }
                st.verified = seq;
                st.last_hash = hash;
            }
            Err(problem) => {
                fault = Some(Fault { seq, problem });
                break;
            }
        }
    }
    if fault.is_none() && st.verified - st.signed > UNSIGNED_TOLERATED {
        fault = Some(Fault {
            seq: st.signed + 1,
            problem: format!(
                "{} entries without a signed checkpoint (the node signs one at least every {CHECKPOINT_EVERY})",
                st.verified - st.signed
            ),
        });
    }
    conn.execute(
        "INSERT INTO audit_chains (origin, verified_seq, last_hash, signed_seq, public_key, broken_seq, problem, checked_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(origin) DO UPDATE SET verified_seq = excluded.verified_seq, last_hash = excluded.last_hash,
           signed_seq = excluded.signed_seq, public_key = excluded.public_key, broken_seq = excluded.broken_seq,
           problem = excluded.problem, checked_ms = excluded.checked_ms",
        params![
            origin,
            st.verified,
            st.last_hash,
            st.signed,
            st.public_key,
            fault.as_ref().map(|f| f.seq),
            fault.as_ref().map(|f| f.problem.clone()),
            now_ms
        ],
    )?;
    Ok(fault)
}

/// One entry against the chain so far: its hash and, for a checkpoint, the key that signed it.
fn check_entry(
    seq: i64,
    payload: &[u8],
    st: &State,
    origin: &str,
    enrolled: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let e: Shipped =
        serde_json::from_slice(payload).map_err(|_| "not an audit entry".to_string())?;
    if e.seq != seq {
        return Err(format!("the entry says it is number {}", e.seq));
    }
    let hash = entry_hash(
        e.seq,
        e.at_ms,
        &e.actor,
        &e.action,
        &e.target,
        &e.detail,
        &e.prev_hash,
    );
    if hash != e.hash {
        return Err("the entry does not hash to its recorded hash (altered)".into());
    }
    if e.prev_hash != st.last_hash {
        return Err("the entry does not point back to the entry before it".into());
    }
    let Some(signature) = e.checkpoint else {
        return Ok((hash, None));
    };
    let key_text = e
        .public_key
        .ok_or_else(|| "a checkpoint without the key that signed it".to_string())?;
    let key = PublicKey::from_str(&key_text)
        .map_err(|_| "a checkpoint signed by a malformed key".to_string())?;
    if key.node_id().to_string() != origin {
        return Err("a checkpoint signed by a key that is not this node's".into());
    }
    if enrolled.is_some_and(|k| k != key_text) {
        return Err("a checkpoint signed by a key other than the enrolled one".into());
    }
    if st.public_key.as_deref().is_some_and(|k| k != key_text) {
        return Err("a checkpoint signed by a different key than the ones before".into());
    }
    let signature =
        hex::decode(&signature).map_err(|_| "a checkpoint signature that is not hex")?;
    if !key.verify(&checkpoint_message(seq, &hash), &signature) {
        return Err("the checkpoint signature does not verify".into());
    }
    Ok((hash, Some(key_text)))
}

/// Every chain checked here, broken ones first.
pub fn chains(conn: &Connection) -> Result<Vec<ChainStatus>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT origin, verified_seq, signed_seq, broken_seq, problem, checked_ms FROM audit_chains
         ORDER BY broken_seq IS NULL, origin",
    )?;
    let rows = stmt.query_map([], |r| {
        let broken_seq: Option<i64> = r.get(3)?;
        Ok(ChainStatus {
            origin: r.get(0)?,
            entries: r.get(1)?,
            signed_seq: r.get(2)?,
            intact: broken_seq.is_none(),
            broken_seq,
            problem: r.get(4)?,
            checked_ms: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many chains are broken (the metric).
pub fn broken_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM audit_chains WHERE broken_seq IS NOT NULL",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Event, append};
    use crate::store::migrations;
    use township_sync::NodeKey;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
        conn
    }

    /// A chain as shipped: sequence numbers and payloads.
    type Chain = Vec<(i64, Vec<u8>)>;

    /// A village's chain of `n` entries, shipped as its upstream would receive it.
    fn shipped(n: usize) -> (NodeKey, Chain) {
        let key = NodeKey::generate().unwrap().0;
        let village = db();
        for i in 0..n {
            append(
                &village,
                &key,
                1_000 + i as i64,
                Event::new("li", "incident.create", &format!("incident/{i}")),
            )
            .unwrap();
        }
        let chain = crate::audit::chain_after(&village, 0, 100_000).unwrap();
        (key, chain)
    }

    fn land(conn: &Connection, origin: &str, chain: &[(i64, Vec<u8>)]) {
        for (seq, payload) in chain {
            conn.execute(
                "INSERT OR IGNORE INTO stream_records (origin, stream, seq, payload, via, received_ms) VALUES (?1, 'audit', ?2, ?3, 'township', 0)",
                params![origin, seq, payload],
            )
            .unwrap();
        }
    }

    #[test]
    fn an_honest_chain_is_intact_and_signed_up_to_its_last_checkpoint() {
        let (key, chain) = shipped(250);
        let origin = key.node_id().to_string();
        let county = db();
        land(&county, &origin, &chain[..120]);
        assert_eq!(check(&county, &origin, 1).unwrap(), None);
        land(&county, &origin, &chain[120..]);
        assert_eq!(check(&county, &origin, 2).unwrap(), None);
        let status = &chains(&county).unwrap()[0];
        assert!(status.intact);
        assert_eq!(status.entries, 250);
        assert_eq!(status.signed_seq, 200);
    }

    #[test]
    fn altered_inserted_rehashed_or_re_signed_entries_are_found() {
        let (key, chain) = shipped(150);
        let origin = key.node_id().to_string();
        let edit = |seq: usize, f: &dyn Fn(&mut serde_json::Value)| {
            let mut forged = chain.clone();
            let mut v: serde_json::Value = serde_json::from_slice(&forged[seq - 1].1).unwrap();
            f(&mut v);
            forged[seq - 1].1 = v.to_string().into_bytes();
            forged
        };
        let rehash = |v: &mut serde_json::Value| {
            let h = entry_hash(
                v["seq"].as_i64().unwrap(),
                v["at_ms"].as_i64().unwrap(),
                v["actor"].as_str().unwrap(),
                v["action"].as_str().unwrap(),
                v["target"].as_str().unwrap(),
                v["detail"].as_str().unwrap(),
                v["prev_hash"].as_str().unwrap(),
            );
            v["hash"] = h.into();
        };
        let stranger = NodeKey::generate().unwrap().0;
        let cases: Vec<(&str, Chain, i64)> = vec![
            (
                "altered",
                edit(7, &|v| v["action"] = "incident.delete".into()),
                7,
            ),
            (
                "altered and rehashed",
                edit(7, &|v| {
                    v["actor"] = "someone.else".into();
                    rehash(v);
                }),
                8,
            ),
            (
                "a rehashed chain re-signed by the relaying node",
                {
                    // The whole chain rewritten from entry 50 on and the checkpoint re-signed by a
                    // key that is not the origin's.
                    let mut forged = chain.clone();
                    let mut prev = String::new();
                    for (i, item) in forged.iter_mut().enumerate().skip(49) {
                        let mut v: serde_json::Value = serde_json::from_slice(&item.1).unwrap();
                        if i == 49 {
                            v["target"] = "incident/forged".into();
                        } else {
                            v["prev_hash"] = prev.clone().into();
                        }
                        rehash(&mut v);
                        prev = v["hash"].as_str().unwrap().to_string();
                        if v.get("checkpoint").is_some() {
                            let msg = checkpoint_message(v["seq"].as_i64().unwrap(), &prev);
                            v["checkpoint"] = hex::encode(stranger.sign(&msg)).into();
                            v["public_key"] = stranger.public_key().to_string().into();
                        }
                        item.1 = v.to_string().into_bytes();
                    }
                    forged
                },
                100,
            ),
            ("not json", edit(3, &|v| *v = serde_json::json!([1, 2])), 3),
        ];
        for (name, forged, at) in cases {
            let county = db();
            land(&county, &origin, &forged);
            let fault = check(&county, &origin, 1)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: not found"));
            assert_eq!(fault.seq, at, "{name}: {}", fault.problem);
            let status = &chains(&county).unwrap()[0];
            assert!(!status.intact, "{name}");
            assert_eq!(broken_count(&county).unwrap(), 1);
            // Found once: looking again reports nothing new.
            assert_eq!(check(&county, &origin, 2).unwrap(), None, "{name}");
        }
    }

    #[test]
    fn a_chain_without_checkpoints_for_too_long_is_broken() {
        let (key, chain) = shipped(260);
        let origin = key.node_id().to_string();
        let stripped: Vec<(i64, Vec<u8>)> = chain
            .into_iter()
            .map(|(seq, payload)| {
                let mut v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                if let Some(o) = v.as_object_mut() {
                    o.remove("checkpoint");
                    o.remove("public_key");
                }
                (seq, v.to_string().into_bytes())
            })
            .collect();
        let county = db();
        land(&county, &origin, &stripped);
        let fault = check(&county, &origin, 1).unwrap().unwrap();
        assert_eq!(fault.seq, 1);
        assert!(fault.problem.contains("without a signed checkpoint"));
    }

    #[test]
    fn a_gap_waits_and_the_chain_continues_when_the_entries_arrive() {
        let (key, chain) = shipped(30);
        let origin = key.node_id().to_string();
        let county = db();
        land(&county, &origin, &chain[..10]);
        land(&county, &origin, &chain[20..]);
        assert_eq!(check(&county, &origin, 1).unwrap(), None);
        assert_eq!(chains(&county).unwrap()[0].entries, 10);
        land(&county, &origin, &chain[10..20]);
        assert_eq!(check(&county, &origin, 2).unwrap(), None);
        assert_eq!(chains(&county).unwrap()[0].entries, 30);
    }
}
