//! The HTTPS listener: TLS (rustls) in front of the same router the plain listener serves.
//!
//! axum's `serve` has no TLS, so this is its accept loop with a handshake in it: each connection
//! gets at most [`HANDSHAKE_TIMEOUT`] to finish TLS and [`HEADER_TIMEOUT`] for each request's
//! headers, and at most [`MAX_CONNECTIONS`] are open at once, so a flood of strangers that connect
//! and say nothing cannot hold the hub. Requests carry the peer address (`ConnectInfo`, as on the
//! plain listener) and [`OverTls`], which makes cookies `Secure`. The certificate can be swapped
//! while running ([`CertSlot`]): a renewal needs no restart.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::certs::{LanCerts, TlsError};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_CONNECTIONS: usize = 1024;

/// Marks a request that arrived over TLS.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The certificate the listener presents, replaceable while it runs.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CertSlot {
    pub fn new(certs: &LanCerts) -> Result<CertSlot, TlsError> {
        Ok(CertSlot(RwLock::new(Arc::new(certs.certified_key()?))))
    }

    pub fn replace(&self, certs: &LanCerts) -> Result<(), TlsError> {
        let key = Arc::new(certs.certified_key()?);
        match self.0.write() {
            Ok(mut slot) => *slot = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        Ok(())
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 with ring's safe defaults, HTTP/2 and 1.1.
pub fn server_config(slot: Arc<CertSlot>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open requests finish for up
/// to `grace`.
pub async fn run_https(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service =
                router.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.extensions_mut().insert(OverTls);
                    with_host_from_authority(request)
                });
            let service = TowerToHyperService::new(service);
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "https connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "https requests still running after the shutdown grace period; closing them"
        );
    }
    Ok(())
}

/// HTTP/2 names the host in `:authority`, not `Host`; the Host check, the CSRF origin check and the
/// redirects read `Host`, so it is set from the authority when missing.
fn with_host_from_authority<B>(mut request: hyper::Request<B>) -> hyper::Request<B> {
    if !request.headers().contains_key(axum::http::header::HOST)
        && let Some(value) = request
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
    {
        request
            .headers_mut()
            .insert(axum::http::header::HOST, value);
    }
    request
}

/// The peer address a request came from, on either listener.
pub fn peer_of(request: &axum::extract::Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}
