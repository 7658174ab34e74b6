//! The link to the upstream: connect, prove who we are to the pinned key, run the session, and when
//! it ends try again with backoff and jitter (the drivers' [`Backoff`]). A link that came up and
//! later broke starts again from a short delay; repeated failures back off towards
//! `sync.retry_max`; a refusal only a person can fix (see [`SessionError::is_permanent`]) goes to
//! `sync.retry_max` at once and shows as `refused` in `/api/v1/sync/status`.

use std::time::Duration;

use township_drivers::driver::Backoff;
use township_sync::engine::{PeerInfo, Relation};
use township_sync::handshake::{self, HandshakeFrame};
use township_sync::{AreaCode, PublicKey};

use super::transport::{
    ClientSocket, HANDSHAKE_TIMEOUT, MAX_FRAME_BYTES, recv_handshake, send_handshake,
};
use super::{Runtime, SessionError, registry, session};

/// The first retry after a failure, and after any link that came up: a village link that breaks
/// every few seconds in a storm is back within a quarter second and carries its next batch; a county
/// that is down still sees each village's tries spread out and doubling.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Keeps a connection to the upstream until shutdown, if this node has one.
pub fn spawn_upstream(rt: &Runtime) {
    let Some((url, key)) = rt.upstream.clone() else {
        return;
    };
    let rt = rt.clone();
    let tasks = rt.tasks.clone();
    tasks.spawn(async move {
        let max = rt.config.sync.retry_max.max(FIRST_RETRY);
        let mut backoff = Backoff::new(FIRST_RETRY, max);
        rt.status
            .update(None, |l| l.since_ms = Some(rt.clock.now_ms()));
        loop {
            let mut established = false;
            let result = connect(&rt, &url, &key, &mut established).await;
            let permanent = result.as_ref().err().is_some_and(SessionError::is_permanent);
            rt.status.update(None, |l| {
                l.connected = false;
                l.refused = permanent;
                l.since_ms = Some(rt.clock.now_ms());
                l.last_error = result.as_ref().err().map(ToString::to_string);
            });
            if established || result.is_ok() {
                backoff.reset();
            }
            let delay = if permanent {
                // Between half and all of the maximum, so refused nodes do not return in step.
                max.mul_f64(0.5) + backoff.next_delay().min(max.mul_f64(0.5))
            } else {
                backoff.next_delay()
            };
            match &result {
                Err(e) if permanent => {
                    tracing::warn!(error = %crate::logging::Untrusted(&e.to_string()), retry_in_ms = delay.as_millis() as u64, "upstream link refused")
                }
                Err(e) => {
                    tracing::info!(error = %crate::logging::Untrusted(&e.to_string()), retry_in_ms = delay.as_millis() as u64, "upstream link down")
                }
                Ok(()) => {}
            }
            tokio::select! {
                () = rt.shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
    });
}

/// The WebSocket URL of the upstream's sync endpoint.
fn sync_url(url: &str) -> String {
    format!(
        "{}/api/v1/sync",
        url.trim_end_matches('/')
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    )
}

async fn connect(
    rt: &Runtime,
    url: &str,
    pinned: &PublicKey,
    established: &mut bool,
) -> Result<(), SessionError> {
    let ws_url = sync_url(url);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES));
    let connected: ClientSocket = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(config), false),
    )
    .await
    .map_err(|_| SessionError::Connect {
        url: ws_url.clone(),
        reason: "timed out".into(),
    })?
    .map_err(|e| SessionError::Connect {
        url: ws_url.clone(),
        reason: e.to_string(),
    })?
    .0;
    let mut socket = connected;
    let (client, hello) = handshake::Client::start(&rt.key, *pinned)?;
    send_handshake(&mut socket, &hello).await?;
    let server_hello = match recv_handshake(&mut socket).await? {
        HandshakeFrame::Refused { reason } => return Err(SessionError::Refused(reason)),
        other => other,
    };
    let (proven, proof) = client.finish(server_hello)?;
    send_handshake(&mut socket, &proof).await?;
    let area = match recv_handshake(&mut socket).await? {
        HandshakeFrame::Welcome { area } => area
            .parse::<AreaCode>()
            .map_err(|e| SessionError::Protocol(e.to_string()))?,
        HandshakeFrame::Refused { reason } => return Err(SessionError::Refused(reason)),
        _ => return Err(SessionError::Protocol("unexpected handshake frame".into())),
    };
    if !area.is_above(&rt.node.area) {
        return Err(SessionError::WrongArea(area.to_string()));
    }
    let (id, key, seen_area, now) = (
        proven.node_id.clone(),
        proven.public_key,
        area.clone(),
        rt.clock.now_ms(),
    );
    let acked = rt
        .store
        .write(move |conn| registry::remember_upstream(conn, &id, &key, &seen_area, now))
        .await?;
    rt.status.update(None, |l| {
        l.connected = true;
        l.refused = false;
        l.since_ms = Some(rt.clock.now_ms());
        l.last_error = None;
    });
    tracing::info!(upstream = %proven.node_id, %area, "connected to upstream");
    *established = true;
    let peer = PeerInfo {
        node_id: proven.node_id,
        area,
        relation: Relation::Upstream,
    };
    session::run(
        rt,
        &mut socket,
        peer,
        acked,
        None,
        rt.shutdown.child_token(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::sync_url;

    #[test]
    fn the_sync_url_follows_the_scheme() {
        assert_eq!(
            sync_url("http://10.1.0.2:8080/"),
            "ws://10.1.0.2:8080/api/v1/sync"
        );
        assert_eq!(
            sync_url("https://county.example"),
            "wss://county.example/api/v1/sync"
        );
    }
}
