//! The SQLite store: one writer thread that owns the write connection and group-commits jobs, and a
//! small pool of read-only connections for queries.
//!
//! Why one writer: SQLite allows one writer at a time anyway, and funnelling writes through one owner
//! lets many small writes share one `fsync` (synchronous=FULL) without any of them waiting on
//! `SQLITE_BUSY`. Each job runs inside its own savepoint, so one failing job never undoes another's
//! work in the same batch, and no job is acknowledged before its batch is durably committed.

pub mod migrations;
pub(crate) mod search_index;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::config::StoreConfig;
pub use writer::WriteMetrics;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "township.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the database at {path} has schema version {found}, but this township-node (v{binary}) supports up to {supported}: it was last used by a newer township-node. Install that version or newer; do not downgrade a data directory"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
        binary: &'static str,
    },
    #[error("no database at {0}: run `township-node init` first, or check --data-dir")]
    Missing(PathBuf),
    #[error("a database already exists at {0}")]
    Exists(PathBuf),
    #[error("the store is shutting down")]
    Closed,
    #[error("a store job failed: {0}")]
    JobFailed(&'static str),
    #[error("the commit failed: {0}")]
    Commit(String),
    #[error("database files: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} fails its integrity check: {verdict}")]
    Corrupt { what: String, verdict: String },
    #[error("record store: {0}")]
    Record(#[from] township_sync::DocError),
}

impl StoreError {
    /// Whether the same operation may succeed if tried again later: lock contention and shutdown races
    /// are transient, schema and constraint problems are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Closed => true,
            StoreError::Record(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    path: PathBuf,
    writer: std::sync::Mutex<Option<mpsc::Sender<writer::Job>>>,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    config: StoreConfig,
    write_metrics: Arc<WriteMetrics>,
    reads: AtomicU64,
    /// Counts committed write transactions; a receiver wakes after each commit.
    commits: tokio::sync::watch::Sender<u64>,
}

/// Applies the connection settings every connection must have; the write connection also gets WAL.
fn configure(conn: &Connection, config: &StoreConfig, writer: bool) -> Result<(), StoreError> {
    conn.busy_timeout(config.busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Every statement of a record merge, its projection and its audit entry stays prepared: parsing
    // SQL again was a quarter of the county's CPU in a cold sync (rusqlite keeps 16 by default).
    conn.set_prepared_statement_cache_capacity(256);
    if writer {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Records and everything acknowledged to a person must survive a power cut.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The checkpointer thread folds the WAL back into the database file (see `writer`); the
        // writer does it itself only if the WAL grows past this (pages of 4 KiB), as a safety net.
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            writer::WAL_PAGES_BEFORE_WRITER_CHECKPOINTS,
        )?;
        // temp_store stays at its default on purpose: statement journals then live in one 64 KiB
        // buffer and spill to a file only beyond it, where temp_store=MEMORY builds them from 1 KiB
        // chunks, which cost the writer a tenth of its time in a cold sync.
    }
    Ok(())
}

fn open_write_connection(
    path: &Path,
    config: &StoreConfig,
    create: bool,
) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    configure(&conn, config, true)?;
    Ok(conn)
}

/// The connection that folds the WAL back into the database file, beside the writer.
fn open_checkpoint_connection(path: &Path, config: &StoreConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, config, false)?;
    // A checkpoint that reports done must have reached the disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Opens the database read-only for CLI commands that run beside (or without) the serving node.
pub fn open_read_only(path: &Path, config: &StoreConfig) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, config, false)?;
    migrations::check_not_newer(&conn, path)?;
    Ok(conn)
}

impl Store {
    /// Creates a new database (refusing an existing file) at the current schema version.
    pub fn create(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Exists(path.to_path_buf()));
        }
        Store::start(path, config, true)
    }

    /// Opens an existing database, migrating it forward; refuses one from a newer binary.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Store::start(path, config, false)
    }

    fn start(path: &Path, config: &StoreConfig, create: bool) -> Result<Store, StoreError> {
        let mut conn = open_write_connection(path, config, create)?;
        migrations::migrate(&mut conn, path)?;

        let read_count = config.read_connections.max(1);
        let mut readers = Vec::with_capacity(read_count);
        for _ in 0..read_count {
            readers.push(open_reader(path, config)?);
        }

        let write_metrics = Arc::new(WriteMetrics::default());
        let (tx, rx) = mpsc::channel(config.write_batch_max.max(1) * 4);
        let commits = tokio::sync::watch::Sender::new(0);
        let checkpointer = open_checkpoint_connection(path, config)?;
        let thread = writer::spawn(
            conn,
            checkpointer,
            rx,
            config.write_batch_max.max(1),
            write_metrics.clone(),
            commits.clone(),
        )
        .map_err(StoreError::Io)?;

        Ok(Store {
            inner: Arc::new(StoreInner {
                path: path.to_path_buf(),
                writer: std::sync::Mutex::new(Some(tx)),
                writer_thread: std::sync::Mutex::new(Some(thread)),
                readers: Mutex::new(readers),
                read_permits: Semaphore::new(read_count),
                config: config.clone(),
                write_metrics,
                reads: AtomicU64::new(0),
                commits,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Wakes after every committed write transaction that wrote something (the value counts them), so what follows records
    /// reads them once they are visible to readers, without polling.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    /// Runs `job` inside a write transaction and returns its result once the transaction that holds it
    /// has committed. If the job fails, its changes are rolled back and nothing else in the batch is.
    pub async fn write<T, E, F>(&self, job: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let sender = {
            let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
            guard.clone().ok_or(StoreError::Closed)?
        };
        let (job, reply) = writer::Job::new(job);
        sender.send(job).await.map_err(|_| StoreError::Closed)?;
        reply.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `query` on a pooled read-only connection off the async runtime.
    pub async fn read<T, E, F>(&self, query: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = match self.inner.readers.lock().await.pop() {
            Some(conn) => conn,
            None => open_reader(&self.inner.path, &self.inner.config).map_err(E::from)?,
        };
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
        let joined = tokio::task::spawn_blocking(move || {
            let result = query(&conn);
            (conn, result)
        })
        .await;
        match joined {
            Ok((conn, result)) => {
                self.inner.readers.lock().await.push(conn);
                result
            }
            // The connection went down with the panicking query; the next read opens a fresh one.
            Err(_) => Err(E::from(StoreError::JobFailed("a read job panicked"))),
        }
    }

    pub fn write_metrics(&self) -> &WriteMetrics {
        &self.inner.write_metrics
    }

    pub fn reads_total(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// Bytes on disk for the database, its WAL and shared-memory index.
    pub fn size_on_disk(&self) -> u64 {
        database_size_on_disk(&self.inner.path)
    }

    /// Stops accepting writes, lets the writer finish what is queued, checkpoints the WAL and waits.
    pub async fn close(&self) {
        let sender = self.inner.writer.lock().ok().and_then(|mut g| g.take());
        drop(sender);
        let thread = self
            .inner
            .writer_thread
            .lock()
            .ok()
            .and_then(|mut g| g.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.inner.readers.lock().await.clear();
    }
}

fn open_reader(path: &Path, config: &StoreConfig) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, config, false)?;
    Ok(conn)
}

/// Size of the database file plus its `-wal` and `-shm` companions.
pub fn database_size_on_disk(path: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if let Ok(meta) = std::fs::metadata(PathBuf::from(name)) {
            total += meta.len();
        }
    }
    total
}

/// Copies the database with SQLite's online backup API into a new file at `out`, safe while the node
/// is serving. The copy is written beside `out` and renamed into place only once complete and synced,
/// so an interrupted backup never leaves a file that looks whole.
pub fn online_backup(db: &Path, out: &Path, config: &StoreConfig) -> Result<u64, StoreError> {
    if out.exists() {
        return Err(StoreError::Exists(out.to_path_buf()));
    }
    let source = open_read_only(db, config)?;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    {
        let mut dest = Connection::open(&partial)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut dest)?;
        // Small steps let the serving node's writer interleave with the copy.
        backup.run_to_completion(256, Duration::from_millis(5), None)?;
    }
    {
        let copy = Connection::open(&partial)?;
        let verdict: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if verdict != "ok" {
            return Err(StoreError::Corrupt {
                what: "the backup copy".into(),
                verdict,
            });
        }
        // Leave the copy self-contained: no WAL beside it.
        copy.pragma_update(None, "journal_mode", "DELETE")?;
    }
    let file = std::fs::File::open(&partial)?;
    file.sync_all()?;
    std::fs::rename(&partial, out)?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StoreConfig {
        StoreConfig::default()
    }

    #[tokio::test]
    async fn the_wal_is_folded_back_beside_the_writer_and_the_search_index_kept_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let store = Store::create(&path, &config()).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // 2 MiB: far below the WAL size at which the writer would checkpoint by itself.
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE big (v BLOB)")?;
                c.execute("INSERT INTO big (v) VALUES (zeroblob(2097152))", [])?;
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + 2_097_152 {
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpointer never folded the WAL into the database file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // An incident written through the writer is found by search once its batch committed.
        store
            .write(|c| {
                c.execute(
                    "INSERT INTO incidents (id, area, category, title, description, state, reporter,
                        assist_departments, escalated, created_ms, updated_ms, due_state, conflicts)
                     VALUES ('i1', '330723001001', '环境卫生', '河道垃圾堆积', '', 'reported', 'u', '', 0, 1, 1, 'ok', 0)",
                    [],
                )?;
                search_index::note_inserted(c, c.last_insert_rowid())?;
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();
        let found: i64 = store
            .read(|c| {
                Ok::<i64, StoreError>(c.query_row(
                    "SELECT count(*) FROM incidents_fts WHERE incidents_fts MATCH '河道垃圾'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(found, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn writes_are_visible_to_readers_and_failures_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join(DB_FILE), &config()).unwrap();
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")?;
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();

        // Many concurrent jobs, every third failing after it wrote: the failing ones leave nothing.
        let mut tasks = Vec::new();
        for i in 0..60i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [i])?;
                        if i % 3 == 0 {
                            return Err(StoreError::JobFailed("refused by the test"));
                        }
                        Ok::<_, StoreError>(i)
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                ok += 1;
            }
        }
        assert_eq!(ok, 40);
        let count: i64 = store
            .read(|c| {
                Ok::<i64, StoreError>(c.query_row(
                    "SELECT count(*) FROM t WHERE v % 3 != 0",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        let bad: i64 = store
            .read(|c| {
                Ok::<i64, StoreError>(c.query_row(
                    "SELECT count(*) FROM t WHERE v % 3 = 0",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!((count, bad), (40, 0));
        assert!(store.write_metrics().batches() <= 61);
        store.close().await;
        assert!(matches!(
            store.write(|_| Ok(())).await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_kill_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join(DB_FILE), &config()).unwrap();
        let result: Result<(), StoreError> = store.write(|_| panic!("boom")).await;
        assert!(result.is_err());
        store
            .write(|c| Ok::<(), StoreError>(c.execute_batch("CREATE TABLE ok (x)")?))
            .await
            .unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn newer_database_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Store::create(&path, &config()).unwrap().close().await;
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        let err = Store::open(&path, &config()).err().unwrap().to_string();
        assert!(err.contains("999"), "{err}");
        assert!(err.contains(&migrations::LATEST.to_string()), "{err}");
        assert!(open_read_only(&path, &config()).is_err());
    }

    #[tokio::test]
    async fn backup_makes_a_consistent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let store = Store::create(&path, &config()).unwrap();
        store
            .write(|c| {
                c.execute_batch("CREATE TABLE t (v); INSERT INTO t VALUES (1), (2), (3);")?;
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();
        let out = dir.path().join("copy.db");
        let bytes = online_backup(&path, &out, &config()).unwrap();
        assert!(bytes > 0);
        let copy = Connection::open(&out).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        assert!(
            online_backup(&path, &out, &config()).is_err(),
            "never overwrites"
        );
        store.close().await;
    }
}
