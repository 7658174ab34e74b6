//! Deterministic simulation of the sync tree: a county, two townships and villages under them, random
//! record edits and workflow transitions at every node, random partitions, message loss, duplication,
//! reordering and node restarts, then a heal. For every seed: all replicas in scope hold identical
//! documents and projections, no node holds a record outside its scope, every edit made anywhere is
//! present everywhere in its scope, and the heal converges within a bound (a stall is a failure).
//!
//! `SIM_SEEDS=n` runs more seeds (default 200); `SIM_SEED=s` runs one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash};
use rusqlite::Connection;
use township_sync::docstore::{DocMeta, DocStore, Projection, ProjectionError, SCHEMA};
use township_sync::engine::{self, Link, PeerInfo, Relation};

use township_sync::workflow::{self, Machine, Transition};
use township_sync::{AreaCode, Author, Authors, Person, Timestamp, fields};
use uuid::Uuid;

/// A small deterministic random source (SplitMix64), so a seed reproduces a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Ticket;

impl Machine for Ticket {
    type State = String;
    fn initial(&self) -> String {
        "open".into()
    }
    fn apply(&self, s: &String, t: &Transition) -> Result<String, String> {
        match (s.as_str(), t.action.as_str()) {
            ("open", "accept") => Ok("accepted".into()),
            ("open", "reject") => Ok("rejected".into()),
            ("accepted", "close") => Ok("closed".into()),
            ("closed", "reopen") => Ok("accepted".into()),
            (state, action) => Err(format!("{action} in {state}")),
        }
    }
}

struct NoteProjection;

impl Projection for NoteProjection {
    fn kind(&self) -> &'static str {
        "note"
    }
    fn project(
        &self,
        conn: &Connection,
        meta: &DocMeta,
        doc: &AutoCommit,
        authors: &Authors,
    ) -> Result<(), ProjectionError> {
        let folded = workflow::fold(&Ticket, &workflow::read(doc, authors));
        conn.execute(
            "INSERT INTO notes (id, title, state, conflicts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET title = excluded.title, state = excluded.state, conflicts = excluded.conflicts",
            rusqlite::params![meta.id.to_string(), fields::text(doc, "title"), folded.state, folded.conflicts.len() as i64],
        )?;
        Ok(())
    }
    fn clear(&self, conn: &Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM notes", [])?;
        Ok(())
    }
}

struct Node {
    area: AreaCode,
    conn: Connection,
    store: DocStore,
    hlc_ms: u64,
}

impl Node {
    fn new(area: &str, actor: u8) -> Node {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, state TEXT, conflicts INTEGER)",
        )
        .unwrap();
        let store = DocStore::new(
            ActorId::from(vec![actor; 16]),
            vec![Arc::new(NoteProjection)],
            || 0,
        );
        Node {
            area: area.parse().unwrap(),
            conn,
            store,
            hlc_ms: 0,
        }
    }
}

/// One link in the tree between a child and its parent, with a queue each way.
struct Wire {
    child: usize,
    parent: usize,
    up: Option<Link>,
    down: Option<Link>,
    to_parent: VecDeque<Vec<u8>>,
    to_child: VecDeque<Vec<u8>>,
    connected: bool,
}

struct World {
    nodes: Vec<Node>,
    wires: Vec<Wire>,
    /// Acknowledged sequence numbers, as the nodes persist them: (node, peer) -> seq.
    acked: HashMap<(usize, usize), i64>,
    /// Every edit made: the record and the heads right after it.
    edits: Vec<(Uuid, Vec<ChangeHash>)>,
    refused: usize,
}

const TOPOLOGY: [(&str, Option<usize>); 6] = [
    ("330723", None),
    ("330723001", Some(0)),
    ("330723002", Some(0)),
    ("330723001001", Some(1)),
    ("330723001002", Some(1)),
    ("330723002001", Some(2)),
];

impl World {
    fn new() -> World {
        let nodes: Vec<Node> = TOPOLOGY
            .iter()
            .enumerate()
            .map(|(i, (a, _))| Node::new(a, i as u8 + 1))
            .collect();
        let wires = TOPOLOGY
            .iter()
            .enumerate()
            .filter_map(|(i, (_, parent))| {
                parent.map(|p| Wire {
                    child: i,
                    parent: p,
                    up: None,
                    down: None,
                    to_parent: VecDeque::new(),
                    to_child: VecDeque::new(),
                    connected: false,
                })
            })
            .collect();
        let mut w = World {
            nodes,
            wires,
            acked: HashMap::new(),
            edits: Vec::new(),
            refused: 0,
        };
        for i in 0..w.wires.len() {
            w.connect(i);
        }
        w
    }

    fn connect(&mut self, i: usize) {
        let (child, parent) = (self.wires[i].child, self.wires[i].parent);
        let up_peer = PeerInfo {
            node_id: format!("n{parent}"),
            area: self.nodes[parent].area.clone(),
            relation: Relation::Upstream,
        };
        let down_peer = PeerInfo {
            node_id: format!("n{child}"),
            area: self.nodes[child].area.clone(),
            relation: Relation::Downstream,
        };
        let mut up = Link::new(
            self.nodes[child].area.clone(),
            up_peer,
            *self.acked.get(&(child, parent)).unwrap_or(&0),
        );
        let mut down = Link::new(
            self.nodes[parent].area.clone(),
            down_peer,
            *self.acked.get(&(parent, child)).unwrap_or(&0),
        );
        let from_child = up
            .start(&self.nodes[child].conn, &self.nodes[child].store)
            .unwrap();
        let from_parent = down
            .start(&self.nodes[parent].conn, &self.nodes[parent].store)
            .unwrap();
        let wire = &mut self.wires[i];
        wire.to_parent = from_child
            .iter()
            .map(|f| engine::encode(f).expect("frames encode"))
            .collect();
        wire.to_child = from_parent
            .iter()
            .map(|f| engine::encode(f).expect("frames encode"))
            .collect();
        wire.up = Some(up);
        wire.down = Some(down);
        wire.connected = true;
    }

    fn disconnect(&mut self, i: usize) {
        let wire = &mut self.wires[i];
        wire.connected = false;
        wire.up = None;
        wire.down = None;
        wire.to_parent.clear();
        wire.to_child.clear();
    }

    /// Tells every live link at `node` that its records changed, as a commit does in the node.
    fn propagate(&mut self, node: usize) {
        for i in 0..self.wires.len() {
            if !self.wires[i].connected {
                continue;
            }
            let (child, parent) = (self.wires[i].child, self.wires[i].parent);
            let n = &self.nodes[node];
            if child == node {
                let frames = self.wires[i]
                    .up
                    .as_mut()
                    .unwrap()
                    .advance(&n.conn, &n.store)
                    .unwrap();
                self.wires[i].to_parent.extend(
                    frames
                        .iter()
                        .map(|f| engine::encode(f).expect("frames encode")),
                );
            } else if parent == node {
                let frames = self.wires[i]
                    .down
                    .as_mut()
                    .unwrap()
                    .advance(&n.conn, &n.store)
                    .unwrap();
                self.wires[i].to_child.extend(
                    frames
                        .iter()
                        .map(|f| engine::encode(f).expect("frames encode")),
                );
            }
        }
    }

    fn edit(&mut self, rng: &mut Rng, counter: &mut u64) {
        let node = rng.below(self.nodes.len());
        *counter += 1;
        let n = &mut self.nodes[node];
        n.hlc_ms += 1 + rng.below(3) as u64;
        // Every edit is made by a person at this node, and says so in its change.
        let author = Author::person(
            n.area.clone(),
            Person {
                name: format!("user{node}"),
                role: "staff".into(),
                area: n.area.clone(),
            },
        );
        let writable: Vec<(Uuid, AreaCode)> = DocStore::changed_since(&n.conn, 0, 100_000)
            .unwrap()
            .into_iter()
            .filter(|m| n.area.contains(&m.scope))
            .map(|m| (m.id, m.scope))
            .collect();
        let meta = if writable.is_empty() || rng.chance(30) {
            // Create, in this node's area or one of its descendants'.
            let candidates: Vec<AreaCode> = TOPOLOGY
                .iter()
                .map(|(a, _)| a.parse::<AreaCode>().unwrap())
                .filter(|a| n.area.contains(a))
                .collect();
            let scope = candidates[rng.below(candidates.len())].clone();
            let title = format!("note {counter}");
            n.store
                .create(&n.conn, &author, "note", &scope, |d| {
                    d.put(automerge::ROOT, "title", title.as_str())?;
                    workflow::init(d)?;
                    Ok(())
                })
                .unwrap()
        } else {
            let (id, _) = writable[rng.below(writable.len())].clone();
            let actions = ["accept", "reject", "close", "reopen"];
            let transition = Transition {
                id: format!("t{node}-{counter}"),
                at: Timestamp {
                    wall_ms: n.hlc_ms,
                    counter: 0,
                },
                actor: format!("user{node}"),
                role: "staff".into(),
                action: actions[rng.below(actions.len())].into(),
                data: Default::default(),
                written: Default::default(),
            };
            let retitle = rng.chance(40);
            let title = format!("title {counter} at {node}");
            n.store
                .change(&n.conn, &author, id, |d| {
                    if retitle {
                        d.put(automerge::ROOT, "title", title.as_str())?;
                    } else {
                        workflow::append(d, &transition)?;
                    }
                    Ok(())
                })
                .unwrap()
                .0
        };
        self.edits.push((meta.id, meta.heads.clone()));
        self.propagate(node);
    }

    /// Delivers one frame on wire `i` towards `to_parent`; returns false if nothing was queued.
    fn deliver(&mut self, i: usize, to_parent: bool, rng: Option<&mut Rng>) -> bool {
        let wire = &mut self.wires[i];
        if !wire.connected {
            return false;
        }
        let queue = if to_parent {
            &mut wire.to_parent
        } else {
            &mut wire.to_child
        };
        if queue.is_empty() {
            return false;
        }
        let (bytes, lost) = match rng {
            Some(rng) => {
                let index = if rng.chance(15) {
                    rng.below(queue.len())
                } else {
                    0
                };
                let duplicate = rng.chance(5);
                let bytes = if duplicate {
                    queue[index].clone()
                } else {
                    queue.remove(index).unwrap()
                };
                (bytes, rng.chance(5))
            }
            None => (queue.pop_front().unwrap(), false),
        };
        if lost {
            return true;
        }
        let frame = engine::decode(&bytes).unwrap();
        let (node, link) = if to_parent {
            (wire.parent, wire.down.as_mut().unwrap())
        } else {
            (wire.child, wire.up.as_mut().unwrap())
        };
        let n = &self.nodes[node];
        let outcome = link.receive(&n.conn, &n.store, frame).unwrap();
        let acked = link.acked_seq();
        let peer = if to_parent { wire.child } else { wire.parent };
        let back = if to_parent {
            &mut wire.to_child
        } else {
            &mut wire.to_parent
        };
        back.extend(
            outcome
                .frames
                .iter()
                .map(|f| engine::encode(f).expect("frames encode")),
        );
        self.acked.insert((node, peer), acked);
        self.refused += outcome.refused.len();
        if !outcome.changed.is_empty() {
            self.propagate(node);
        }
        true
    }

    fn tick(&mut self) {
        for i in 0..self.wires.len() {
            if !self.wires[i].connected {
                continue;
            }
            let (child, parent) = (self.wires[i].child, self.wires[i].parent);
            let frames = self.wires[i]
                .up
                .as_mut()
                .unwrap()
                .tick(&self.nodes[child].conn, &self.nodes[child].store)
                .unwrap();
            self.wires[i].to_parent.extend(
                frames
                    .iter()
                    .map(|f| engine::encode(f).expect("frames encode")),
            );
            let frames = self.wires[i]
                .down
                .as_mut()
                .unwrap()
                .tick(&self.nodes[parent].conn, &self.nodes[parent].store)
                .unwrap();
            self.wires[i].to_child.extend(
                frames
                    .iter()
                    .map(|f| engine::encode(f).expect("frames encode")),
            );
        }
    }

    fn quiet(&self) -> bool {
        self.wires
            .iter()
            .all(|w| w.to_parent.is_empty() && w.to_child.is_empty())
    }
}

fn holds(node: &AreaCode, scope: &AreaCode) -> bool {
    node.contains(scope) || scope.contains(node)
}

fn run(seed: u64) -> Result<(usize, usize), String> {
    let mut rng = Rng(seed);
    let mut world = World::new();
    let mut counter = 0;
    let steps = 150 + rng.below(150);
    for _ in 0..steps {
        match rng.below(100) {
            0..=29 => world.edit(&mut rng, &mut counter),
            30..=79 => {
                let i = rng.below(world.wires.len());
                let up = rng.chance(50);
                world.deliver(i, up, Some(&mut rng));
            }
            80..=84 => {
                let i = rng.below(world.wires.len());
                if world.wires[i].connected {
                    world.disconnect(i)
                } else {
                    world.connect(i)
                }
            }
            85..=87 => {
                // A node restarts: every connection it has drops and comes back with fresh state.
                let node = rng.below(world.nodes.len());
                for i in 0..world.wires.len() {
                    if world.wires[i].connected
                        && (world.wires[i].child == node || world.wires[i].parent == node)
                    {
                        world.disconnect(i);
                        world.connect(i);
                    }
                }
            }
            _ => world.tick(),
        }
    }

    // Heal: every link up with fresh state, then deliver everything in order until quiet.
    for i in 0..world.wires.len() {
        world.disconnect(i);
        world.connect(i);
    }
    let mut deliveries = 0;
    let mut quiet_ticks = 0;
    let bound = 200_000;
    while quiet_ticks <= engine::STALL_TICKS as usize + 1 {
        let mut moved = false;
        for i in 0..world.wires.len() {
            while world.deliver(i, true, None) || world.deliver(i, false, None) {
                moved = true;
                deliveries += 1;
                if deliveries > bound {
                    return Err(format!(
                        "seed {seed}: no convergence after {bound} deliveries (stall)"
                    ));
                }
            }
        }
        if !moved && world.quiet() {
            world.tick();
            quiet_ticks += 1;
        } else {
            quiet_ticks = 0;
        }
    }

    // Every record in scope everywhere, identical; nothing out of scope anywhere.
    let mut all: BTreeMap<Uuid, AreaCode> = BTreeMap::new();
    for n in &world.nodes {
        for m in DocStore::changed_since(&n.conn, 0, 1_000_000).unwrap() {
            all.insert(m.id, m.scope);
        }
    }
    for (id, scope) in &all {
        let mut heads: BTreeSet<Vec<String>> = BTreeSet::new();
        let mut rows: BTreeSet<(Option<String>, Option<String>, i64)> = BTreeSet::new();
        for (i, n) in world.nodes.iter().enumerate() {
            let meta = DocStore::meta(&n.conn, *id).unwrap();
            match (holds(&n.area, scope), meta) {
                (true, Some((m, _))) => {
                    let mut h: Vec<String> = m.heads.iter().map(|h| h.to_string()).collect();
                    h.sort();
                    heads.insert(h);
                    let row = n
                        .conn
                        .query_row(
                            "SELECT title, state, conflicts FROM notes WHERE id = ?1",
                            [id.to_string()],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .map_err(|e| {
                            format!("seed {seed}: node {i} lacks the projection of {id}: {e}")
                        })?;
                    rows.insert(row);
                }
                (true, None) => {
                    return Err(format!(
                        "seed {seed}: node {i} ({}) lacks record {id} scoped {scope}",
                        n.area
                    ));
                }
                (false, Some(_)) => {
                    return Err(format!(
                        "seed {seed}: node {i} ({}) holds {id} scoped {scope}, outside its scope",
                        n.area
                    ));
                }
                (false, None) => {}
            }
        }
        if heads.len() != 1 {
            return Err(format!("seed {seed}: replicas of {id} differ: {heads:?}"));
        }
        if rows.len() != 1 {
            return Err(format!("seed {seed}: projections of {id} differ: {rows:?}"));
        }
    }
    for (id, edit_heads) in &world.edits {
        let scope = &all[id];
        for (i, n) in world.nodes.iter().enumerate() {
            if holds(&n.area, scope) && !n.store.has_heads(&n.conn, *id, edit_heads).unwrap() {
                return Err(format!(
                    "seed {seed}: an edit to {id} is missing at node {i}"
                ));
            }
        }
    }
    Ok((all.len(), deliveries))
}

#[test]
fn every_seed_converges_within_scope() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => {
            let n: u64 = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            (1..=n).collect()
        }
    };
    let mut records = 0;
    let mut failures = Vec::new();
    for seed in &seeds {
        match run(*seed) {
            Ok((n, _)) => records += n,
            Err(e) => failures.push(e),
        }
    }
    println!(
        "simulation: {} seeds, {} passed, {records} records checked",
        seeds.len(),
        seeds.len() - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed; first: {}",
        failures.len(),
        seeds.len(),
        failures[0]
    );
}
