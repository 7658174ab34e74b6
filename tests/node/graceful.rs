//! Graceful shutdown in process: an in-flight request finishes after the shutdown signal, new
//! connections are refused, background tasks are awaited, and the store closes last.

use std::time::Duration;

use axum::routing::get;
use township_node::app;
use township_node::config::Config;
use township_node::node::DataDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_tasks_are_awaited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(crate::common::init_node(tmp.path()));
    let opened = app::open(&dir, Config::default()).await.unwrap();
    let state = opened.state.clone();

    // A background task that must see the signal and be waited for.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let token = state.shutdown.clone();
    state.tasks.spawn(async move {
        token.cancelled().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = done_tx.send(());
    });

    // The real router plus one slow route, served by the same run() the binary uses.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let router = township_node::http::app(state.clone()).route(
        "/slow",
        get(move || {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "finished"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(app::run_router(
        listener,
        router,
        state.shutdown.clone(),
        Duration::from_secs(5),
    ));

    let request = tokio::task::spawn_blocking(move || {
        crate::common::blocking_get(&format!("http://{addr}/slow"))
    });
    started_rx.await.unwrap();
    state.shutdown.cancel();

    let (status, _, body) = request.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, b"finished");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The listener is closed once the server returned.
    assert!(std::net::TcpStream::connect(addr).is_err());

    app::finish(&state, Duration::from_secs(5)).await;
    // Already sent when finish() returns: awaiting here would pass even if finish() had not waited.
    assert!(
        done_rx.try_recv().is_ok(),
        "finish() waited for the background task"
    );
    assert!(
        state
            .store
            .write(|_| Ok::<(), township_node::store::StoreError>(()))
            .await
            .is_err(),
        "store closed last"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_a_request_that_never_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(crate::common::init_node(tmp.path()));
    let opened = app::open(&dir, Config::default()).await.unwrap();
    let state = opened.state.clone();
    let router = township_node::http::app(state.clone()).route(
        "/forever",
        get(|| async {
            std::future::pending::<()>().await;
            "never"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(app::run_router(
        listener,
        router,
        state.shutdown.clone(),
        Duration::from_millis(300),
    ));
    let _request = tokio::task::spawn_blocking(move || {
        crate::common::blocking_get(&format!("http://{addr}/forever"))
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    state.shutdown.cancel();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    app::finish(&state, Duration::from_secs(1)).await;
}
