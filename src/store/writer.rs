//! The writer thread: takes queued jobs, runs each in its own savepoint inside one transaction,
//! commits once, then answers every job in the batch and counts the commit (when it wrote anything) on a watch channel, so
//! parts of the node that follow records (warning events) wake on a commit instead of polling.
//!
//! A plain OS thread rather than a tokio task, because it blocks on SQLite and `fsync` for its whole
//! life and must never starve the async workers.
//!
//! Beside it a checkpointer thread, with its own connection, folds the WAL back into the database
//! file a moment after commits. Left to SQLite, the commit that crosses 1,000 WAL pages does that
//! itself, fsync of the database file included, and every job queued behind it waits: the tail of
//! a sync session's latency and a share of a cold sync's time. A passive checkpoint never blocks
//! the writer, and the writer still checkpoints by itself if the WAL grows far beyond that.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WriteMetrics {
    batches: AtomicU64,
    jobs: AtomicU64,
    failed_jobs: AtomicU64,
    failed_commits: AtomicU64,
}

impl WriteMetrics {
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    pub fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }
    pub fn failed_jobs(&self) -> u64 {
        self.failed_jobs.load(Ordering::Relaxed)
    }
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }
}

trait RunJob: Send {
    /// Runs the job's body; returns whether it succeeded (so the savepoint is kept).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the job's result once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct TypedJob<T, E, F> {
    body: Option<F>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> RunJob for TypedJob<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(body) = self.body.take() else {
            return false;
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| body(conn))) {
            Ok(result) => result,
            Err(_) => Err(E::from(StoreError::JobFailed(
                "a write job panicked; its changes were rolled back",
            ))),
        };
        let ok = outcome.is_ok();
        self.result = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), Some(Ok(_))) => Err(E::from(StoreError::Commit(e))),
            (_, Some(Err(e))) => Err(e),
            (_, None) => Err(E::from(StoreError::JobFailed("the job was not run"))),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// A queued write job.
pub struct Job(Box<dyn RunJob>);

impl Job {
    pub fn new<T, E, F>(body: F) -> (Job, oneshot::Receiver<Result<T, E>>)
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        (
            Job(Box::new(TypedJob {
                body: Some(body),
                result: None,
                reply,
            })),
            rx,
        )
    }
}

/// WAL pages (4 KiB) past which the writer checkpoints by itself: only when the checkpointer falls
/// far behind.
pub const WAL_PAGES_BEFORE_WRITER_CHECKPOINTS: i64 = 16_384;

/// How long the checkpointer waits after a commit, so commits close together share one checkpoint
/// (and its fsync).
const CHECKPOINT_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the checkpointer; it runs until the returned sender is dropped.
fn spawn_checkpointer(
    conn: Connection,
) -> std::io::Result<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)> {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let deadline = std::time::Instant::now() + CHECKPOINT_AFTER;
                loop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(()) if !left.is_zero() => continue,
                        Ok(()) | Err(RecvTimeoutError::Timeout) => break,
                        // Shutting down: the writer checkpoints everything itself.
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the writer will do it later");
                }
            }
        })?;
    Ok((tx, thread))
}

pub fn spawn(
    conn: Connection,
    checkpoint_conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    metrics: std::sync::Arc<WriteMetrics>,
    commits: tokio::sync::watch::Sender<u64>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (checkpoint, checkpointer) = spawn_checkpointer(checkpoint_conn)?;
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let mut batch: Vec<Box<dyn RunJob>> = Vec::with_capacity(batch_max);
            while let Some(first) = rx.blocking_recv() {
                batch.push(first.0);
                while batch.len() < batch_max {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job.0),
                        Err(_) => break,
                    }
                }
                if run_batch(&conn, &mut batch, &metrics) {
                    commits.send_modify(|n| *n += 1);
                    // Full means a checkpoint is already due.
                    let _ = checkpoint.try_send(());
                }
            }
            drop(checkpoint);
            let _ = checkpointer.join();
            // All senders are gone: the node is shutting down. Fold the WAL back into the main file
            // so the next start (or a copy of the directory) begins clean.
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
            }
        })
}

/// Runs one batch in one transaction; true when it committed and wrote something. A batch of jobs
/// that only read (a sync session's tick, say) wakes nobody: with hundreds of sessions each ticking,
/// waking all of them for each other's empty commits cost a county most of a core.
fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn RunJob>>, metrics: &WriteMetrics) -> bool {
    let changes_before = conn.total_changes();
    metrics.batches.fetch_add(1, Ordering::Relaxed);
    metrics
        .jobs
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        tracing::error!(error = %message, "cannot begin a write transaction");
        metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
        for job in batch.drain(..) {
            job.finish(Err(message.clone()));
        }
        return false;
    }
    for job in batch.iter_mut() {
        if conn.execute_batch("SAVEPOINT job").is_err() {
            continue;
        }
        if job.run(conn) {
            let _ = conn.execute_batch("RELEASE job");
        } else {
            metrics.failed_jobs.fetch_add(1, Ordering::Relaxed);
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
        }
    }
    // Derived indexes are folded in once per transaction, before it becomes visible.
    let wrote = conn.total_changes() != changes_before;
    let commit = (if wrote {
        super::search_index::flush(conn)
    } else {
        Ok(())
    })
    .and_then(|()| conn.execute_batch("COMMIT"))
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "write batch commit failed; every job in it was refused");
        e.to_string()
    });
    let committed = commit.is_ok();
    for job in batch.drain(..) {
        job.finish(commit.clone());
    }
    committed && wrote
}
