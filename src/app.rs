//! Wires the subsystems together and owns start-up and shutdown.
//!
//! Shutdown follows mini-redis: one [`CancellationToken`] is fanned out to every task, the server
//! stops accepting and lets in-flight requests finish, background tasks are awaited through one
//! [`TaskTracker`], and only then is the store closed, so no acknowledged write is cut off.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::{self, DataDir, DataDirLock, NodeError, NodeInfo};
use crate::store::Store;

/// Everything a handler or background task may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

pub struct AppInner {
    pub node: NodeInfo,
    pub config: Config,
    pub store: Store,
    pub metrics: Metrics,
    pub ui: crate::http::ui::Ui,
    pub clock: Clock,
    /// Cancelled once, when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Every background task is spawned on this, so shutdown can wait for all of them.
    pub tasks: TaskTracker,
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

impl AppState {
    pub fn new(node: NodeInfo, config: Config, store: Store, clock: Clock) -> AppState {
        AppState {
            inner: Arc::new(AppInner {
                node,
                config,
                store,
                metrics: Metrics::new(),
                ui: crate::http::ui::Ui::load(),
                clock,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }
}

/// A node opened from its data directory, holding the directory lock until dropped.
pub struct OpenedNode {
    pub state: AppState,
    _lock: DataDirLock,
}

/// Opens the data directory for serving: takes the lock, migrates the store, and checks the key.
pub async fn open(dir: &DataDir, config: Config) -> Result<OpenedNode, NodeError> {
    dir.ensure_exists()?;
    let lock = DataDirLock::acquire(dir)?;
    let store = Store::open(&dir.db(), &config.store)?;
    let info = match store.read(|conn| Ok(node::read_identity(conn))).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            store.close().await;
            return Err(e);
        }
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    if let Err(e) = node::load_key_checked(dir, &info) {
        store.close().await;
        return Err(e);
    }
    Ok(OpenedNode {
        state: AppState::new(info, config, store, Clock::System),
        _lock: lock,
    })
}

/// Serves HTTP on `listener` until `state.shutdown` is cancelled, then lets in-flight requests finish
/// for up to `http.shutdown_grace`. Tests call this with a listener bound to port 0.
pub async fn run(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let router = crate::http::app(state.clone());
    run_router(
        listener,
        router,
        state.shutdown.clone(),
        state.config.http.shutdown_grace,
    )
    .await
}

/// Serves `router` until `shutdown`, then waits at most `grace` for open requests.
pub async fn run_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let server =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still running after the shutdown grace period; closing them");
            Ok(())
        }
    }
}

/// After the server has stopped: waits for background tasks, then closes the store.
pub async fn finish(state: &AppState, wait: Duration) {
    state.shutdown.cancel();
    state.tasks.close();
    if tokio::time::timeout(wait, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    state.store.close().await;
}

/// Resolves on SIGTERM or SIGINT and cancels `token`; the whole node shuts down from that one signal.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            () = terminate => tracing::info!("SIGTERM received, shutting down"),
            () = token.cancelled() => {}
        }
        token.cancel();
    });
}
