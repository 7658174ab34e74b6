//! Frames on the wire: a bidirectional byte-frame channel over the server's axum WebSocket or the
//! client's tungstenite one, the handshake read with its timeout, and sending within the optional
//! bandwidth cap and the stall timeout.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use township_sync::engine::{self, Frame};
use township_sync::handshake::{self, HandshakeFrame};

use super::SessionError;

/// Largest frame accepted on a sync connection (on the wire, and once inflated); larger ones close it.
pub const MAX_FRAME_BYTES: usize = engine::MAX_FRAME_BYTES;
/// A handshake step that takes longer than this ends the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Attachments travel in chunks this large, so a break costs at most one chunk.
pub const BLOB_CHUNK: usize = 256 * 1024;

/// A bidirectional byte-frame channel: the server's axum socket or the client's tungstenite one.
pub trait FrameIo: Send {
    fn send_frame(
        &mut self,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), SessionError>> + Send;
    /// The next binary frame; `None` once the peer closed the connection.
    fn recv_frame(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Vec<u8>, SessionError>>> + Send;
}

fn text_frame() -> SessionError {
    SessionError::Protocol("text frame on a binary protocol".into())
}

impl FrameIo for WebSocket {
    async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        SinkExt::send(self, Message::Binary(bytes.into()))
            .await
            .map_err(|e| SessionError::Transport(e.to_string()))
    }
    async fn recv_frame(&mut self) -> Option<Result<Vec<u8>, SessionError>> {
        loop {
            return match StreamExt::next(self).await? {
                Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(Message::Close(_)) => None,
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Text(_)) => Some(Err(text_frame())),
                Err(e) => Some(Err(SessionError::Transport(e.to_string()))),
            };
        }
    }
}

pub type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl FrameIo for ClientSocket {
    async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), SessionError> {
        SinkExt::send(
            self,
            tokio_tungstenite::tungstenite::Message::Binary(bytes.into()),
        )
        .await
        .map_err(|e| SessionError::Transport(e.to_string()))
    }
    async fn recv_frame(&mut self) -> Option<Result<Vec<u8>, SessionError>> {
        use tokio_tungstenite::tungstenite::Message as M;
        loop {
            return match StreamExt::next(self).await? {
                Ok(M::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(M::Close(_)) => None,
                Ok(M::Ping(_) | M::Pong(_) | M::Frame(_)) => continue,
                Ok(M::Text(_)) => Some(Err(text_frame())),
                Err(e) => Some(Err(SessionError::Transport(e.to_string()))),
            };
        }
    }
}

/// Reads one handshake frame within [`HANDSHAKE_TIMEOUT`].
pub async fn recv_handshake<S: FrameIo>(io: &mut S) -> Result<HandshakeFrame, SessionError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, io.recv_frame()).await {
        Ok(Some(Ok(bytes))) => Ok(handshake::decode(&bytes)?),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Err(SessionError::Transport(
            "closed during the handshake".into(),
        )),
        Err(_) => Err(SessionError::HandshakeTimeout),
    }
}

/// Sends one handshake frame.
pub async fn send_handshake<S: FrameIo>(
    io: &mut S,
    frame: &HandshakeFrame,
) -> Result<(), SessionError> {
    io.send_frame(handshake::encode(frame)?).await
}

/// One side of a session's sending: the bandwidth cap and the stall timeout.
pub struct Sender {
    pub bandwidth: Bandwidth,
    pub stall_timeout: Duration,
}

impl Sender {
    /// Sends one frame within the bandwidth cap; a send that cannot complete within the stall
    /// timeout (the peer stopped reading) ends the session.
    pub async fn send<S: FrameIo>(
        &mut self,
        io: &mut S,
        frame: &Frame,
    ) -> Result<(), SessionError> {
        let bytes = engine::encode(frame)?;
        self.bandwidth.take(bytes.len()).await;
        match tokio::time::timeout(self.stall_timeout, io.send_frame(bytes)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Stalled(format!(
                "a send did not complete in {} s",
                self.stall_timeout.as_secs()
            ))),
        }
    }
}

/// A token bucket for the optional per-connection bandwidth cap (`sync.bandwidth_limit`): sending
/// waits until the bytes fit the rate. A burst of up to one second's worth goes at once.
pub struct Bandwidth {
    bytes_per_sec: u64,
    allowance: f64,
    last: tokio::time::Instant,
}

impl Bandwidth {
    /// `0` means no cap.
    pub fn new(bytes_per_sec: u64) -> Bandwidth {
        Bandwidth {
            bytes_per_sec,
            allowance: bytes_per_sec as f64,
            last: tokio::time::Instant::now(),
        }
    }

    pub async fn take(&mut self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let rate = self.bytes_per_sec as f64;
        let now = tokio::time::Instant::now();
        self.allowance =
            (self.allowance + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.allowance -= bytes as f64;
        if self.allowance < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.allowance / rate)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_over_time_after_one_second_of_burst() {
        let mut bandwidth = Bandwidth::new(10_000);
        let start = tokio::time::Instant::now();
        // The first second's worth goes at once.
        bandwidth.take(10_000).await;
        assert!(start.elapsed() < Duration::from_millis(1));
        // Then 50 KB more take five seconds, whatever the chunking.
        for _ in 0..50 {
            bandwidth.take(1_000).await;
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(4_990) && elapsed <= Duration::from_millis(5_100),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_cap_never_waits() {
        let mut bandwidth = Bandwidth::new(0);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            bandwidth.take(1 << 20).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_only_up_to_one_second() {
        let mut bandwidth = Bandwidth::new(1_000);
        bandwidth.take(1_000).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = tokio::time::Instant::now();
        bandwidth.take(3_000).await;
        // One second was banked, two more are waited for: a minute idle is not a minute of burst.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1_990) && waited <= Duration::from_millis(2_010),
            "{waited:?}"
        );
    }
}
