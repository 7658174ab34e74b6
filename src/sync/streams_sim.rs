//! A seeded simulation of readings going up a village → township → county tree over links that
//! lose, duplicate and delay batches and acknowledgements, break, and stay down for a while, with
//! late and repeated readings at the village. After the links heal, every minute the village holds
//! is at the township and the county exactly as the village has it (counted once), every raw
//! reading of the window is there once, and the township keeps nothing it has relayed.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::Connection;
use township_drivers::{Quality, Reading};
use township_sync::AreaCode;
use township_sync::engine::{Frame, StreamRecord};

use super::streams::{Next, ack_from_upstream, land_readings, next_batch_in};
use crate::telemetry::{outbox, store, tree};

/// A small deterministic generator (splitmix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Node {
    id: &'static str,
    area: AreaCode,
    conn: Connection,
    has_upstream: bool,
}

fn node(id: &'static str, area: &str, has_upstream: bool) -> Node {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::store::migrations::migrate(&mut conn, std::path::Path::new(":memory:")).unwrap();
    Node {
        id,
        area: area.parse().unwrap(),
        conn,
        has_upstream,
    }
}

fn enroll(parent: &Node, child: &Node) {
    parent
        .conn
        .execute(
            "INSERT INTO sync_peers (node_id, public_key, area, name, relation, enrolled_ms)
             VALUES (?1, ?1, ?2, ?1, 'downstream', 0)",
            [child.id, child.area.as_str()],
        )
        .unwrap();
}

/// One direction of one link: the batch in flight (one at a time, as a session sends them) and
/// what is on the wire, possibly stale.
#[derive(Default)]
struct Link {
    streaming: bool,
    down_for: u32,
    /// Batches on their way up, and acknowledgements on their way down.
    batches: Vec<Frame>,
    acks: Vec<Frame>,
}

const WINDOW_MS: i64 = 3_600_000;

fn station(area: &str, status: &str) -> outbox::StationDoc {
    outbox::StationDoc {
        device: "rain-01".into(),
        name: "雨量站".into(),
        area: area.into(),
        driver: "mqtt".into(),
        interval_s: 10.0,
        status: status.into(),
        node_name: "village".into(),
        points: Vec::new(),
    }
}

/// The sender's side of a step: offer the next batch if none is in flight.
fn offer(sender: &Node, upstream: &Node, link: &mut Link, now: i64, rng: &mut Rng, loss: u64) {
    if link.streaming || link.down_for > 0 {
        return;
    }
    loop {
        match next_batch_in(&sender.conn, sender.id, upstream.id, now, WINDOW_MS).unwrap() {
            Next::Batch(frame) => {
                link.streaming = true;
                if !rng.chance(loss) {
                    link.batches.push(frame);
                }
                if rng.chance(loss)
                    && let Some(f) = link.batches.last().cloned()
                {
                    link.batches.push(f);
                }
                return;
            }
            Next::Skip { stream, upto } => ack_from_upstream(
                &sender.conn,
                sender.id,
                upstream.id,
                sender.id,
                stream,
                upto,
            )
            .unwrap(),
            Next::Nothing => return,
        }
    }
}

/// The receiver's side: land one batch from the wire (any of them: the wire may reorder stale
/// copies) and answer with its acknowledgement.
fn deliver(child: &Node, parent: &Node, link: &mut Link, now: i64, rng: &mut Rng, loss: u64) {
    if link.batches.is_empty() || link.down_for > 0 {
        return;
    }
    let i = rng.below(link.batches.len() as u64) as usize;
    let Frame::StreamBatch {
        stream,
        origin,
        records,
    } = link.batches.remove(i)
    else {
        unreachable!()
    };
    let below = tree::FromBelow {
        own: parent.id,
        via: child.id,
        area: &child.area,
    };
    let landed = land_readings(
        &parent.conn,
        &below,
        parent.has_upstream,
        &origin,
        &stream,
        records,
        now,
    )
    .unwrap();
    assert_eq!(
        landed.refused, 0,
        "honest records refused: {:?}",
        landed.reason
    );
    if let Some(upto) = landed.upto
        && !rng.chance(loss)
    {
        link.acks.push(Frame::StreamAck {
            stream,
            origin,
            upto,
        });
    }
}

fn acknowledge(sender: &Node, upstream: &Node, link: &mut Link, rng: &mut Rng) {
    if link.acks.is_empty() || link.down_for > 0 {
        return;
    }
    let i = rng.below(link.acks.len() as u64) as usize;
    let Frame::StreamAck {
        stream,
        origin,
        upto,
    } = link.acks.remove(i)
    else {
        unreachable!()
    };
    ack_from_upstream(&sender.conn, sender.id, upstream.id, &origin, &stream, upto).unwrap();
    link.streaming = false;
}

/// A broken connection: what was on the wire is gone and the next session starts afresh.
fn cut(link: &mut Link, down_for: u32) {
    link.batches.clear();
    link.acks.clear();
    link.streaming = false;
    link.down_for = down_for;
}

type Minutes = BTreeMap<(String, i64), (f64, f64, f64, i64)>;

/// Every minute held in `minute` (joined to `series`), as the origin computed it.
fn minutes(conn: &Connection, minute: &str, series: &str) -> Minutes {
    conn.prepare(&format!(
        "SELECT s.metric, m.bucket, m.min, m.max, m.sum, m.count FROM {minute} m
         JOIN {series} s ON s.id = m.series"
    ))
    .unwrap()
    .query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?),
            (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn village_minutes(conn: &Connection) -> Minutes {
    minutes(conn, "telemetry_minute", "telemetry_series")
}

fn tree_minutes(conn: &Connection) -> Minutes {
    minutes(conn, "tree_minute", "tree_series")
}

type Raw = BTreeSet<(String, i64, u64, i64)>;

fn raw_rows(conn: &Connection, raw: &str, series: &str, since: i64) -> Raw {
    conn.prepare(&format!(
        "SELECT s.metric, r.t, r.value, r.quality FROM {raw} r JOIN {series} s ON s.id = r.series
         WHERE r.t >= ?1"
    ))
    .unwrap()
    .query_map([since], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get::<_, f64>(2)?.to_bits(),
            r.get(3)?,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let village = node("village", "330723001001", true);
    let township = node("township", "330723001", true);
    let county = node("county", "330723", false);
    enroll(&township, &village);
    enroll(&county, &township);
    let mut up = Link::default();
    let mut top = Link::default();
    let mut now: i64 = 1_800_000_000_000;
    let mut known = store::SeriesIds::default();
    outbox::describe(&village.conn, &[station("330723001001", "online")]).unwrap();
    for _ in 0..400 {
        match rng.below(10) {
            0..=2 => {
                // Readings: mostly fresh, some late (up to two hours), some repeated.
                let n = 1 + rng.below(20);
                let batch: Vec<Reading> = (0..n)
                    .map(|_| {
                        let late = if rng.chance(20) {
                            rng.below(7_200_000) as i64
                        } else {
                            rng.below(30_000) as i64
                        };
                        Reading {
                            device: "rain-01".into(),
                            metric: if rng.chance(50) {
                                "rainfall"
                            } else {
                                "water_level"
                            }
                            .into(),
                            time_ms: (now - late) / 1000 * 1000,
                            value: rng.below(1000) as f64 / 10.0,
                            unit: None,
                            quality: if rng.chance(10) {
                                Quality::OutOfRange
                            } else {
                                Quality::Good
                            },
                        }
                    })
                    .collect();
                let inserted = store::insert_batch(&village.conn, &batch, &known, true).unwrap();
                for (key, id) in inserted.new_series {
                    known.insert(key, id);
                }
            }
            3 => now += rng.below(40_000) as i64,
            4 => {
                if rng.chance(30) {
                    let status = if rng.chance(50) { "faulty" } else { "online" };
                    outbox::describe(&village.conn, &[station("330723001001", status)]).unwrap();
                }
                if rng.chance(20) {
                    cut(&mut up, rng.below(20) as u32);
                }
                if rng.chance(20) {
                    cut(&mut top, rng.below(20) as u32);
                }
            }
            _ => {}
        }
        offer(&village, &township, &mut up, now, &mut rng, 15);
        offer(&township, &county, &mut top, now, &mut rng, 15);
        deliver(&village, &township, &mut up, now, &mut rng, 15);
        deliver(&township, &county, &mut top, now, &mut rng, 15);
        acknowledge(&village, &township, &mut up, &mut rng);
        acknowledge(&township, &county, &mut top, &mut rng);
        up.down_for = up.down_for.saturating_sub(1);
        top.down_for = top.down_for.saturating_sub(1);
    }
    // Heal: the links stay up and lose nothing; every minute is over. A session that lost its
    // batch ends and a new one starts, which is what a cut models.
    now += 120_000;
    cut(&mut up, 0);
    cut(&mut top, 0);
    let mut rng = Rng(seed ^ 0xFFFF);
    for round in 0.. {
        assert!(
            round < 100_000,
            "seed {seed}: the healed tree never settled"
        );
        offer(&village, &township, &mut up, now, &mut rng, 0);
        offer(&township, &county, &mut top, now, &mut rng, 0);
        if up.batches.is_empty() && top.batches.is_empty() {
            break;
        }
        deliver(&village, &township, &mut up, now, &mut rng, 0);
        deliver(&township, &county, &mut top, now, &mut rng, 0);
        while !up.acks.is_empty() {
            acknowledge(&village, &township, &mut up, &mut rng);
        }
        while !top.acks.is_empty() {
            acknowledge(&township, &county, &mut top, &mut rng);
        }
    }
    let want = village_minutes(&village.conn);
    assert!(
        !want.is_empty(),
        "seed {seed}: the village recorded nothing"
    );
    assert_eq!(
        tree_minutes(&township.conn),
        want,
        "seed {seed}: township minutes"
    );
    assert_eq!(
        tree_minutes(&county.conn),
        want,
        "seed {seed}: county minutes"
    );
    let since = now - WINDOW_MS;
    let raw = raw_rows(&village.conn, "telemetry_raw", "telemetry_series", since);
    assert_eq!(
        raw_rows(&county.conn, "tree_raw", "tree_series", since),
        raw,
        "seed {seed}: county raw readings of the window"
    );
    let relayed: i64 = township
        .conn
        .query_row(
            "SELECT count(*) FROM stream_records WHERE stream != 'audit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        relayed, 0,
        "seed {seed}: the township keeps what it relayed"
    );
    let stations = tree::stations(&county.conn).unwrap();
    assert_eq!(stations.len(), 1, "seed {seed}");
    let village_status: Vec<u8> = village
        .conn
        .query_row("SELECT payload FROM telemetry_stations", [], |r| r.get(0))
        .unwrap();
    let village_status: outbox::StationDoc = serde_json::from_slice(&village_status).unwrap();
    assert_eq!(
        stations[0].doc, village_status,
        "seed {seed}: the newest description"
    );
}

#[test]
fn readings_reach_the_county_exactly_once_after_heal() {
    let seeds: u64 = std::env::var("STREAM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        run(seed);
    }
}

#[test]
fn a_record_from_a_stream_never_described_is_refused_and_acknowledged() {
    let township = node("township", "330723001", false);
    let village = node("village", "330723001001", false);
    enroll(&township, &village);
    let below = tree::FromBelow {
        own: township.id,
        via: village.id,
        area: &village.area,
    };
    let landed = land_readings(
        &township.conn,
        &below,
        true,
        "village",
        outbox::RAW,
        vec![StreamRecord {
            seq: 7,
            payload: br#"{"d":"rain-01","m":"rainfall","u":null,"t":1,"v":1.0,"q":0}"#.to_vec(),
        }],
        0,
    )
    .unwrap();
    assert_eq!((landed.kept.len(), landed.upto), (0, Some(7)));
    let kept: i64 = township
        .conn
        .query_row("SELECT count(*) FROM stream_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 0, "a refused record is not relayed");
}
