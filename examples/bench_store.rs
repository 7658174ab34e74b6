//! Record-store figures for the README, run by `tests/bench/records.sh` in release mode: records
//! created per second through the store (one writer at a time, and many at once sharing group
//! commits), the same rows inserted as plain SQLite rows with the same durability as the peer
//! baseline, projection rebuild time for 10,000 documents, and password verification time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use township_node::auth::password;
use township_node::config::StoreConfig;
use township_node::store::{DB_FILE, Store, StoreError, migrations};
use township_sync::DocStore;
use township_sync::docstore::{DocMeta, Projection, ProjectionError};

struct NoteProjection;

impl Projection for NoteProjection {
    fn kind(&self) -> &'static str {
        "note"
    }
    fn project(
        &self,
        conn: &rusqlite::Connection,
        meta: &DocMeta,
        doc: &automerge::AutoCommit,
        _authors: &township_sync::Authors,
    ) -> Result<(), ProjectionError> {
        conn.execute(
            "INSERT INTO notes (id, title, category, area) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET title = excluded.title, category = excluded.category",
            rusqlite::params![
                meta.id.to_string(),
                township_sync::fields::text(doc, "title"),
                township_sync::fields::text(doc, "category"),
                meta.scope.as_str()
            ],
        )?;
        Ok(())
    }
    fn clear(&self, conn: &rusqlite::Connection) -> Result<(), ProjectionError> {
        conn.execute("DELETE FROM notes", [])?;
        Ok(())
    }
}

fn fields(i: usize) -> [(&'static str, String); 5] {
    [
        ("title", format!("路灯损坏 第{i}号")),
        (
            "description",
            "熟溪路与解放街交叉口路灯不亮，夜间行人通行存在安全隐患。".to_string(),
        ),
        ("category", "安全隐患".to_string()),
        ("reporter", format!("grid{}", i % 40)),
        ("location", "28.8921,119.8165".to_string()),
    ]
}

async fn open(dir: &std::path::Path) -> (Store, DocStore) {
    let store = Store::create(&dir.join(DB_FILE), &StoreConfig::default()).unwrap();
    store
        .write(|c| {
            Ok::<_, StoreError>(c.execute_batch(
                "CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT, category TEXT, area TEXT)",
            )?)
        })
        .await
        .unwrap();
    let docs = DocStore::new(
        automerge::ActorId::from([3u8; 16]),
        vec![Arc::new(NoteProjection)],
        township_node::clock::system_now_ms,
    );
    (store, docs)
}

async fn create_records(
    store: &Store,
    docs: &DocStore,
    count: usize,
    concurrency: usize,
) -> Duration {
    let scope: township_sync::AreaCode = "330723001001".parse().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (store, docs, scope) = (store.clone(), docs.clone(), scope.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(concurrency) {
                let (docs, scope) = (docs.clone(), scope.clone());
                store
                    .write(move |conn| {
                        let author = township_sync::Author::node(scope.clone());
                        docs.create(conn, &author, "note", &scope, |d| {
                            for (k, v) in fields(i) {
                                d.put(automerge::ROOT, k, v)?;
                            }
                            Ok(())
                        })?;
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// The peer: the same fields as one plain row each, one transaction per row, synchronous=FULL.
fn plain_sqlite(dir: &std::path::Path, count: usize) -> Duration {
    let conn = rusqlite::Connection::open(dir.join("plain.db")).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)").unwrap();
    let started = Instant::now();
    for i in 0..count {
        let body = serde_json::to_string(
            &fields(i)
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap();
        conn.execute(
            "INSERT INTO notes (id, body) VALUES (?1, ?2)",
            rusqlite::params![uuid::Uuid::now_v7().to_string(), body],
        )
        .unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rebuild_n: usize = std::env::var("REBUILD_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    println!(
        "schema version {}; {n} records per run, synchronous=FULL",
        migrations::LATEST
    );

    let tmp = tempfile::tempdir().unwrap();
    let plain = plain_sqlite(tmp.path(), n);
    let plain_rate = n as f64 / plain.as_secs_f64();
    println!("peer: plain SQLite rows, one transaction each: {plain_rate:.0} rows/s");

    for concurrency in [1, 32] {
        let tmp = tempfile::tempdir().unwrap();
        let (store, docs) = open(tmp.path()).await;
        let took = create_records(&store, &docs, n, concurrency).await;
        let rate = n as f64 / took.as_secs_f64();
        let writes = store.write_metrics();
        println!(
            "record store, {concurrency} concurrent writer(s): {rate:.0} records/s ({:.2}x the peer), {} commits for {} records",
            rate / plain_rate,
            writes.batches(),
            writes.jobs()
        );
        store.close().await;
    }

    let tmp = tempfile::tempdir().unwrap();
    let (store, docs) = open(tmp.path()).await;
    create_records(&store, &docs, rebuild_n, 64).await;
    let size = store.size_on_disk();
    let rebuild_docs = docs.clone();
    let started = Instant::now();
    let count = store
        .write(move |conn| Ok::<_, StoreError>(rebuild_docs.rebuild_projections(conn)?))
        .await
        .unwrap();
    println!(
        "rebuild of projections for {count} documents: {:.2} s ({:.0} documents/s); database {:.1} MB",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );
    store.close().await;

    let stored = password::hash("correct horse battery", password::MIN_ITERATIONS).unwrap();
    let mut times = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        assert!(password::verify("correct horse battery", &stored).unwrap());
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "password verification at {} PBKDF2-HMAC-SHA256 iterations: median {:.0} ms",
        password::MIN_ITERATIONS,
        times[times.len() / 2].as_secs_f64() * 1000.0
    );
}
