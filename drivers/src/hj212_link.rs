//! HJ 212 stations on the wire: a TCP listener that stations connect to, and a serial-port reader.
//! Both split the byte stream into frames, check them ([`crate::hj212::parse`]), refuse frames from
//! stations the node does not know, turn data uploads into readings, and answer with the data
//! response the standard requires once the readings are committed, so a station that hears back
//! knows its data is safe. Bad frames are counted and dropped; the connection carries on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::admission::{Admission, ListenerLimits, Ticket, accept_connections};
use crate::driver::{Driver, DriverContext, DriverError, DriverFuture, ErrorKind};
use crate::hj212::{self, Frame, Hj212Error};
use crate::reading::{Quality, Reading};
use crate::untrusted::Untrusted;

/// A TCP connection must bring a valid frame from a configured station within this; until then it
/// holds only a pending slot (see [`crate::admission`]).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(60);
/// Wrong passwords for one station from one address within [`PW_WINDOW_MS`] before frames naming
/// that station from that address are refused without a look at the password.
const PW_FAILURES: u32 = 5;
const PW_WINDOW_MS: i64 = 15 * 60 * 1000;
/// A refused password is answered only after this, and the connection is closed: one guess per
/// connection, and each costs the guesser a second.
const PW_REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// Wrong station passwords per (MN, address), so nobody on the network can guess a station's
/// password at line rate. Keyed by address too, so a guesser cannot lock the real station out.
#[derive(Debug, Default)]
pub struct PasswordFailures(Mutex<HashMap<(String, IpAddr), (i64, u32)>>);

impl PasswordFailures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, IpAddr), (i64, u32)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, mn: &str, ip: IpAddr, now_ms: i64) {
        let ip = crate::admission::address_group(ip);
        let mut map = self.lock();
        map.retain(|_, (since, _)| now_ms - *since < PW_WINDOW_MS);
        map.entry((mn.to_string(), ip)).or_insert((now_ms, 0)).1 += 1;
    }

    pub fn blocked(&self, mn: &str, ip: IpAddr, now_ms: i64) -> bool {
        let ip = crate::admission::address_group(ip);
        self.lock()
            .get(&(mn.to_string(), ip))
            .is_some_and(|(since, n)| *n >= PW_FAILURES && now_ms - *since < PW_WINDOW_MS)
    }
}

/// What a TCP connection must pass before its frames count: its slot, and the password throttle.
struct Gate<'a> {
    ticket: Ticket,
    failures: &'a PasswordFailures,
    ip: IpAddr,
}

/// Which device each station's MN belongs to, and the access password (`PW`) it must send, if one
/// is configured.
#[derive(Clone, Default)]
pub struct Stations {
    by_mn: HashMap<String, (String, Option<String>)>,
}

impl std::fmt::Debug for Stations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_mn.keys()).finish()
    }
}

impl Stations {
    /// `(MN, device id, password)` for every station.
    pub fn new(stations: impl IntoIterator<Item = (String, String, Option<String>)>) -> Stations {
        Stations {
            by_mn: stations
                .into_iter()
                .map(|(mn, device, pw)| (mn, (device, pw)))
                .collect(),
        }
    }

    pub fn device(&self, mn: &str) -> Option<&str> {
        self.by_mn.get(mn).map(|(d, _)| d.as_str())
    }

    /// The device a frame comes from, if its MN is known and its PW matches the configured one.
    pub fn admit(&self, frame: &Frame) -> Result<&str, Refusal<'_>> {
        let Some((device, pw)) = self.by_mn.get(&frame.mn) else {
            return Err(Refusal::UnknownStation);
        };
        match pw {
            Some(expected) if !constant_time_eq(expected.as_bytes(), frame.pw.as_bytes()) => {
                Err(Refusal::WrongPassword(device))
            }
            _ => Ok(device),
        }
    }
}

/// Why a frame was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    UnknownStation,
    /// The MN is this device's, the password is not.
    WrongPassword(&'a str),
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits a byte stream into candidate frames: from `##` through the stated length, CRC and CRLF.
/// Bytes before a `##` are skipped; a length field that is not four digits or is too large, or a
/// claimed end that is not CRLF, makes the splitter skip that start's first `#` and look again. A
/// candidate the caller then rejects goes back through [`FrameSplitter::reject`], so a false header
/// in noise can never swallow the valid frame that follows it.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    buf: Vec<u8>,
}

/// What the splitter found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes that span exactly one frame as stated by its header; still to be checked.
    Frame(Vec<u8>),
    /// Bytes skipped while looking for a frame start.
    Garbage(usize),
}

const MAX_BUFFER: usize = 64 * 1024;

/// Errors that cannot be pinned on a station (noise, unknown MNs) are counted under this name.
pub const LINK: &str = "hj212";

impl FrameSplitter {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn next_piece(&mut self) -> Option<Piece> {
        let start = self.buf.windows(2).position(|w| w == b"##");
        match start {
            None => {
                // Keep a trailing '#' that may begin the next frame.
                let keep = usize::from(self.buf.last() == Some(&b'#'));
                let skipped = self.buf.len() - keep;
                if skipped == 0 {
                    return None;
                }
                self.buf.drain(..skipped);
                return Some(Piece::Garbage(skipped));
            }
            Some(0) => {}
            Some(n) => {
                self.buf.drain(..n);
                return Some(Piece::Garbage(n));
            }
        }
        let header = self.buf.get(2..6)?;
        let len = std::str::from_utf8(header)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok())
            .filter(|&l| l <= hj212::MAX_DATA_LEN);
        // Past a false start only its first `#`: in `###0…` the real frame begins at the second.
        let Some(len) = len else {
            self.buf.drain(..1);
            return Some(Piece::Garbage(1));
        };
        let total = len + 12;
        if self.buf.len() < total {
            if self.buf.len() > MAX_BUFFER {
                let n = self.buf.len();
                self.buf.clear();
                return Some(Piece::Garbage(n));
            }
            return None;
        }
        if &self.buf[total - 2..total] != b"\r\n" {
            self.buf.drain(..1);
            return Some(Piece::Garbage(1));
        }
        Some(Piece::Frame(self.buf.drain(..total).collect()))
    }

    /// Gives back a candidate frame the caller found invalid: its bytes after the first `#` are
    /// scanned again, because a real frame may begin inside what a false header claimed.
    pub fn reject(&mut self, frame: Vec<u8>) {
        let mut rest = frame;
        rest.drain(..rest.len().min(1));
        rest.append(&mut self.buf);
        self.buf = rest;
    }
}

/// `DataTime=YYYYMMDDhhmmss` in Beijing time (UTC+8, which the standard's stations use), as epoch ms.
pub fn parse_data_time(text: &str) -> Option<i64> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| text.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, mo, d, h, mi, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(8..10)?,
        n(10..12)?,
        n(12..14)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) - 8 * 3600) * 1000)
}

/// The readings in a data upload: real-time values (`Rtd`) and period averages (`Avg`) under the
/// factor code, cumulative values (`Cou`) under `{code}-Cou`. Min and max are left to the node's own
/// aggregates. A flag other than `N` marks the value as flagged by the device.
pub fn readings(frame: &Frame, device: &str, receive_ms: i64) -> Result<Vec<Reading>, Hj212Error> {
    let (data_time, values) = hj212::factor_values(frame);
    let time_ms = match data_time {
        Some(t) => parse_data_time(&t).ok_or_else(|| {
            Hj212Error::Malformed(format!(
                "DataTime `{}`",
                t.chars().take(20).collect::<String>()
            ))
        })?,
        None => receive_ms,
    };
    Ok(values
        .into_iter()
        .filter_map(|v| {
            let metric = match v.statistic.as_str() {
                "Rtd" | "Avg" => v.code.clone(),
                "Cou" => format!("{}-Cou", v.code),
                _ => return None,
            };
            let quality = match v.flag.as_deref() {
                None | Some("N") => Quality::Good,
                Some(_) => Quality::DeviceFlagged,
            };
            Some(Reading {
                device: device.to_string(),
                metric,
                time_ms,
                value: v.value,
                unit: None,
                quality,
            })
        })
        .collect())
}

/// Reads frames from one stream until it ends, the idle timeout passes, or shutdown. On a TCP
/// connection (`gate`), the first valid frame from a configured station must come within
/// [`FIRST_FRAME_TIMEOUT`]; before it, a frame from an unknown station closes the connection, and a
/// wrong password always does. A serial line is a wire in a cabinet, so there they are only counted.
async fn serve_stream<S>(
    mut stream: S,
    stations: &Stations,
    ctx: &DriverContext,
    idle: Duration,
    peer: &str,
    mut gate: Option<Gate<'_>>,
) -> Result<(), DriverError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut splitter = FrameSplitter::default();
    let mut buf = vec![0u8; 4096];
    let first_frame_by = tokio::time::Instant::now() + FIRST_FRAME_TIMEOUT;
    loop {
        let pending = gate.as_ref().is_some_and(|g| !g.ticket.is_authenticated());
        let wait = if pending {
            first_frame_by
                .saturating_duration_since(tokio::time::Instant::now())
                .min(idle)
        } else {
            idle
        };
        let n = tokio::select! {
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(DriverError::io(format!("reading from {peer}"), e)),
                Err(_) => {
                    if pending {
                        tracing::debug!(%peer, "HJ 212 connection sent no valid frame in time; closing");
                    } else {
                        tracing::debug!(%peer, "HJ 212 connection idle; closing");
                    }
                    return Ok(());
                }
            },
            () = ctx.shutdown.cancelled() => return Ok(()),
        };
        splitter.push(&buf[..n]);
        while let Some(piece) = splitter.next_piece() {
            let bytes = match piece {
                Piece::Garbage(n) => {
                    ctx.health.error(
                        LINK,
                        ErrorKind::Malformed,
                        format!("{n} bytes outside a frame"),
                        ctx.now(),
                    );
                    continue;
                }
                Piece::Frame(bytes) => bytes,
            };
            let frame = match hj212::parse(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    let who = rejected_by(stations, &bytes);
                    splitter.reject(bytes);
                    let kind = match e {
                        Hj212Error::Crc { .. } => ErrorKind::Crc,
                        _ => ErrorKind::Malformed,
                    };
                    ctx.health.error(&who, kind, e.to_string(), ctx.now());
                    continue;
                }
            };
            let now = ctx.now();
            if let Some(g) = &gate
                && stations.device(&frame.mn).is_some()
                && g.failures.blocked(&frame.mn, g.ip, now)
            {
                if let Some(device) = stations.device(&frame.mn) {
                    ctx.health.sign_in_refused(
                        device,
                        format!("{} blocked after wrong passwords", g.ip),
                        now,
                    );
                }
                tracing::warn!(%peer, mn = %Untrusted(&frame.mn), "HJ 212 frame refused: too many wrong passwords from this address");
                return Ok(());
            }
            let device = match stations.admit(&frame) {
                Ok(device) => device,
                Err(Refusal::UnknownStation) => {
                    ctx.health.error(
                        LINK,
                        ErrorKind::Refused,
                        format!("unknown MN {}", Untrusted(&frame.mn)),
                        now,
                    );
                    tracing::warn!(%peer, mn = %Untrusted(&frame.mn), "HJ 212 frame refused: unknown station");
                    // A connection that has not yet shown it is a configured station goes.
                    if gate.as_ref().is_some_and(|g| !g.ticket.is_authenticated()) {
                        return Ok(());
                    }
                    continue;
                }
                Err(Refusal::WrongPassword(device)) => {
                    // Anyone can send a station's MN: a wrong password never counts as its fault.
                    ctx.health
                        .sign_in_refused(device, format!("wrong PW from {peer}"), now);
                    tracing::warn!(%peer, mn = %Untrusted(&frame.mn), "HJ 212 frame refused: wrong password");
                    if let Some(g) = &gate {
                        g.failures.record(&frame.mn, g.ip, now);
                        tokio::time::sleep(PW_REFUSAL_DELAY).await;
                        return Ok(());
                    }
                    continue;
                }
            };
            if let Some(g) = &mut gate
                && let Err(e) = g.ticket.authenticate(device)
            {
                tracing::warn!(%peer, device, "HJ 212 connection refused: {e}");
                return Ok(());
            }
            if hj212::upload_kind(&frame.cn).is_some() {
                match readings(&frame, device, now) {
                    Ok(readings) => {
                        let committed = ctx.sink.send_acked(readings).await?;
                        // Answer only once the data is durable; a station that hears nothing resends.
                        if !committed.await.unwrap_or(false) {
                            return Err(DriverError::Other(
                                "readings could not be committed".into(),
                            ));
                        }
                        ctx.health.ok(device, now);
                    }
                    Err(e) => {
                        ctx.health
                            .error(device, ErrorKind::Malformed, e.to_string(), now);
                        continue;
                    }
                }
            } else {
                // Heartbeats and other commands still show the station is alive.
                ctx.health.ok(device, now);
            }
            if let Some(answer) = hj212::data_response(&frame) {
                stream
                    .write_all(&answer)
                    .await
                    .map_err(|e| DriverError::io(format!("answering {peer}"), e))?;
            }
        }
    }
}

/// Whom a frame that failed its checks is counted against: the station if its MN can be read and is
/// configured, else the link.
fn rejected_by(stations: &Stations, bytes: &[u8]) -> String {
    mn_hint(bytes)
        .and_then(|mn| stations.device(&mn).map(String::from))
        .unwrap_or_else(|| LINK.to_string())
}

/// The MN of a frame that failed its checks, if the text holds one (to count the error against it).
fn mn_hint(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("MN=")? + 3;
    let rest = &text[start..];
    let end = rest.find(';')?;
    Some(rest[..end].to_string())
}

/// The TCP listener stations connect to.
pub struct Hj212Listener {
    pub addr: SocketAddr,
    pub stations: Arc<Stations>,
    pub idle_timeout: Duration,
    /// Station connections at once (unauthenticated ones are limited apart).
    pub max_connections: usize,
}

impl Driver for Hj212Listener {
    fn name(&self) -> String {
        "hj212".into()
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            let listener = TcpListener::bind(self.addr).await.map_err(|e| {
                DriverError::io(format!("binding HJ 212 listener on {}", self.addr), e)
            })?;
            tracing::info!(
                "hj212 listening on tcp://{}",
                listener.local_addr().map_or(self.addr, |a| a)
            );
            let (stations, idle) = (self.stations.clone(), self.idle_timeout);
            let failures = Arc::new(PasswordFailures::default());
            let admission = Admission::new(ListenerLimits::for_devices(self.max_connections));
            ctx.health.listener("hj212", &admission);
            accept_connections(
                listener,
                admission,
                ctx,
                "HJ 212",
                |socket, peer, ticket| {
                    let (ctx, stations, failures) =
                        (ctx.clone(), stations.clone(), failures.clone());
                    async move {
                        let gate = Gate {
                            ticket,
                            failures: &failures,
                            ip: peer.ip(),
                        };
                        let peer = peer.to_string();
                        if let Err(e) =
                            serve_stream(socket, &stations, &ctx, idle, &peer, Some(gate)).await
                        {
                            tracing::debug!(%peer, error = %Untrusted(&e.to_string()), "HJ 212 connection ended");
                        }
                    }
                },
            )
            .await;
            Ok(())
        })
    }
}

/// A station on a serial line (RS-232/485), read continuously.
pub struct Hj212Serial {
    pub port: String,
    pub baud: u32,
    pub stations: Arc<Stations>,
}

impl Driver for Hj212Serial {
    fn name(&self) -> String {
        format!("hj212_serial:{}", self.port)
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            let stream = crate::serial::open(&self.port, self.baud, crate::serial::Parity::None)?;
            serve_stream_serial(stream, &self.stations, ctx, &self.port).await
        })
    }
}

async fn serve_stream_serial(
    stream: tokio_serial::SerialStream,
    stations: &Stations,
    ctx: &DriverContext,
    port: &str,
) -> Result<(), DriverError> {
    serve_stream(
        stream,
        stations,
        ctx,
        Duration::from_secs(365 * 86_400),
        port,
        None,
    )
    .await?;
    if ctx.shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(DriverError::Other(format!("serial port {port} closed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upload(cn: &str, cp: &str) -> Vec<u8> {
        hj212::encode(&format!(
            "QN=20240601120000001;ST=22;CN={cn};PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&{cp}&&"
        ))
    }

    #[test]
    fn splits_frames_out_of_noise_and_halves() {
        let mut s = FrameSplitter::default();
        let frame = upload(
            "2011",
            "DataTime=20240601120000;a34004-Rtd=35.2,a34004-Flag=N",
        );
        s.push(b"noise##xx");
        s.push(&frame[..10]);
        assert_eq!(s.next_piece(), Some(Piece::Garbage(5)));
        assert_eq!(
            s.next_piece(),
            Some(Piece::Garbage(1)),
            "a ## with no length is skipped from its first #"
        );
        assert_eq!(s.next_piece(), Some(Piece::Garbage(3)));
        assert_eq!(s.next_piece(), None, "waits for the rest");
        s.push(&frame[10..]);
        assert_eq!(s.next_piece(), Some(Piece::Frame(frame.clone())));
        assert_eq!(s.next_piece(), None);
    }

    #[test]
    fn stations_are_admitted_by_mn_and_password() {
        let stations = Stations::new([
            ("MN1".to_string(), "aq-01".to_string(), None),
            (
                "MN2".to_string(),
                "aq-02".to_string(),
                Some("123456".to_string()),
            ),
        ]);
        let frame = |mn: &str, pw: &str| {
            hj212::parse(&hj212::encode(&format!(
                "QN=1;ST=22;CN=2011;PW={pw};MN={mn};Flag=4;CP=&&&&"
            )))
            .unwrap()
        };
        assert_eq!(stations.admit(&frame("MN1", "anything")), Ok("aq-01"));
        assert_eq!(stations.admit(&frame("MN2", "123456")), Ok("aq-02"));
        assert!(stations.admit(&frame("MN2", "654321")).is_err());
        assert!(stations.admit(&frame("MN3", "123456")).is_err());
    }

    #[test]
    fn data_time_is_beijing_time() {
        // 2024-06-01 12:00:00 +08:00 is 04:00:00 UTC.
        assert_eq!(parse_data_time("20240601120000"), Some(1_717_214_400_000));
        assert_eq!(parse_data_time("20241301120000"), None);
        assert_eq!(parse_data_time("2024060112000"), None);
    }

    #[test]
    fn upload_becomes_readings_with_flags() {
        let frame = hj212::parse(&upload(
            "2051",
            "DataTime=20240601120000;a34004-Avg=35.2,a34004-Min=30,a34004-Max=40,a34004-Flag=N;a21026-Avg=8,a21026-Flag=D;w00000-Cou=120.5",
        ))
        .unwrap();
        let r = readings(&frame, "aq-01", 0).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].metric.as_str(), r[0].value, r[0].quality),
            ("a34004", 35.2, Quality::Good)
        );
        assert_eq!(
            (r[1].metric.as_str(), r[1].quality),
            ("a21026", Quality::DeviceFlagged)
        );
        assert_eq!(r[2].metric, "w00000-Cou");
        assert!(r.iter().all(|x| x.time_ms == 1_717_214_400_000));
    }

    proptest! {
        #[test]
        fn splitter_and_parser_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10)) {
            let mut s = FrameSplitter::default();
            for c in chunks {
                s.push(&c);
                while let Some(p) = s.next_piece() {
                    if let Piece::Frame(f) = p {
                        let _ = hj212::parse(&f).map(|fr| readings(&fr, "d", 0));
                    }
                }
            }
        }

        #[test]
        fn valid_frames_survive_any_noise_around_them(pre in proptest::collection::vec(any::<u8>().prop_filter("no #", |b| *b != b'#'), 0..100), cut in 1usize..100) {
            let frame = upload("2011", "DataTime=20240601120000;a34004-Rtd=35.2,a34004-Flag=N");
            let mut bytes = pre.clone();
            bytes.extend_from_slice(&frame);
            let mut s = FrameSplitter::default();
            let cut = cut.min(bytes.len());
            s.push(&bytes[..cut]);
            let mut found = Vec::new();
            while let Some(p) = s.next_piece() { if let Piece::Frame(f) = p { found.push(f) } }
            s.push(&bytes[cut..]);
            while let Some(p) = s.next_piece() { if let Piece::Frame(f) = p { found.push(f) } }
            prop_assert_eq!(found, vec![frame]);
        }

        /// Noise holding false frame headers (`##0010abc\r\n` and the like), then a valid frame, cut
        /// anywhere: the valid frame is always found, the way the link uses the splitter.
        #[test]
        fn false_headers_never_swallow_the_next_frame(
            noise in proptest::collection::vec(
                prop_oneof![
                    Just(b"##0010abc\r\n".to_vec()),
                    Just(b"##0010".to_vec()),
                    Just(b"##00".to_vec()),
                    Just(b"#".to_vec()),
                    (0usize..120).prop_map(|n| format!("##{n:04}").into_bytes()),
                    proptest::collection::vec(any::<u8>(), 0..20),
                ],
                0..8,
            ),
            cut in 0usize..400,
        ) {
            let frame = upload("2011", "DataTime=20240601120000;a34004-Rtd=35.2,a34004-Flag=N");
            let mut bytes: Vec<u8> = noise.concat();
            bytes.extend_from_slice(&frame);
            let cut = cut.min(bytes.len());
            let mut s = FrameSplitter::default();
            let mut parsed = Vec::new();
            for chunk in [&bytes[..cut], &bytes[cut..]] {
                s.push(chunk);
                while let Some(p) = s.next_piece() {
                    if let Piece::Frame(f) = p {
                        match hj212::parse(&f) {
                            Ok(fr) => parsed.push(fr),
                            Err(_) => s.reject(f),
                        }
                    }
                }
            }
            prop_assert!(
                parsed.iter().any(|fr| fr.cn == "2011"
                    && fr.cp.iter().any(|(k, v)| k == "a34004-Rtd" && v == "35.2")),
                "the valid frame was lost"
            );
        }
    }

    #[test]
    fn a_false_header_before_a_frame_on_one_connection_does_not_lose_it() {
        let frame = upload(
            "2011",
            "DataTime=20240601120000;a34004-Rtd=35.2,a34004-Flag=N",
        );
        let mut s = FrameSplitter::default();
        s.push(b"##0010abc\r\n");
        s.push(&frame);
        let mut found = Vec::new();
        while let Some(p) = s.next_piece() {
            if let Piece::Frame(f) = p {
                match hj212::parse(&f) {
                    Ok(_) => found.push(f),
                    Err(_) => s.reject(f),
                }
            }
        }
        assert_eq!(found, vec![frame]);
    }
}
