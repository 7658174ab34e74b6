//! The embedded MQTT 3.1.1 broker, so a sensor can publish to the node with nothing else installed.
//!
//! Every device signs in with its own username and password and may publish and subscribe only under
//! its own topic, `sensors/{device_id}` and below. Readings on `sensors/{id}` (JSON) or
//! `sensors/{id}/senml` (SenML) go to the node, and a QoS 1 or 2 message is acknowledged only after
//! its readings are committed, so once a sensor has its PUBACK the reading survives a crash. Other
//! subscribers get messages at QoS 0; there are no retained messages and no persistent sessions.
//!
//! IP loudspeakers sign in the same way (see [`SpeakerLink`]) and are confined to `pa/{id}` and
//! below: they receive the node's commands on `pa/{id}/cmd` and report on `pa/{id}/status` and
//! `pa/{id}/heartbeat`, which go to the node, never to other clients and never as readings.
//!
//! Packets are encoded and decoded with rumqttc's MQTT codec. The broker itself is written here
//! rather than taken from rumqttd because rumqttd (0.20) can neither restrict a client to its own
//! topics nor hold an acknowledgement until the node has committed the message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, ListenerLimits, Ticket, accept_connections};
use crate::driver::{Driver, DriverContext, DriverError, DriverFuture, ErrorKind};
use crate::payload;
use crate::untrusted::Untrusted;

/// How a device's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"ts": …, "<metric>": number}` on `sensors/{id}`.
    Json,
    /// An RFC 8428 array on `sensors/{id}/senml`.
    Senml,
}

/// One device's sign-in.
#[derive(Clone)]
pub struct Account {
    pub device: String,
    pub password: String,
    pub format: Format,
    /// A loudspeaker: confined to `pa/{device}`, its messages go to the node's [`SpeakerLink`].
    pub speaker: bool,
}

/// A message a speaker published on its own topic.
#[derive(Debug, Clone)]
pub struct SpeakerMessage {
    pub speaker: String,
    pub topic: String,
    pub payload: Bytes,
}

/// The node's side of the speakers on the embedded broker: their sign-ins, the commands it sends
/// them and the messages they send it.
pub struct SpeakerLink {
    /// Speaker accounts by MQTT username (`speaker` set).
    pub accounts: HashMap<String, Account>,
    /// Commands for speakers, as (topic, payload); each speaker gets those on its own topics.
    pub commands: broadcast::Sender<(Arc<str>, Bytes)>,
    /// Everything speakers publish (status, heartbeats), for the node to read.
    pub messages: broadcast::Sender<SpeakerMessage>,
}

impl SpeakerLink {
    pub fn new(accounts: HashMap<String, Account>) -> SpeakerLink {
        SpeakerLink {
            accounts,
            commands: broadcast::channel(256).0,
            messages: broadcast::channel(1024).0,
        }
    }

    /// Sends a command to one speaker (QoS 0: a speaker that is not connected misses it, which its
    /// missing receipt reports).
    pub fn command(&self, speaker: &str, payload: Bytes) {
        let topic: Arc<str> = Arc::from(format!("pa/{speaker}/cmd").as_str());
        let _ = self.commands.send((topic, payload));
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("device", &self.device)
            .field("format", &self.format)
            .field("speaker", &self.speaker)
            .finish_non_exhaustive()
    }
}

/// Largest packet accepted; payloads above 64 KiB are refused by the parsers anyway.
const MAX_PACKET: usize = 256 * 1024;
/// A connection must send CONNECT within this; until it has signed in it holds only a pending slot.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `topic` (a publish topic or a subscription filter) lies under the device's own topic.
pub fn topic_allowed(device: &str, topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix("sensors/") else {
        return false;
    };
    let Some(after) = rest.strip_prefix(device) else {
        return false;
    };
    after.is_empty() || after.starts_with('/')
}

/// Whether `topic` lies under a speaker's own topic, `pa/{speaker}`.
pub fn speaker_topic_allowed(speaker: &str, topic: &str) -> bool {
    let Some(rest) = topic.strip_prefix("pa/") else {
        return false;
    };
    let Some(after) = rest.strip_prefix(speaker) else {
        return false;
    };
    after.is_empty() || after.starts_with('/')
}

/// MQTT filter matching with `+` and `#`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn filter_valid(filter: &str) -> bool {
    !filter.is_empty()
        && filter.split('/').enumerate().all(|(i, level)| {
            let last = i == filter.split('/').count() - 1;
            match level {
                "#" => last,
                "+" => true,
                l => !l.contains(['#', '+']),
            }
        })
}

/// Readings from a publish on the device's own topic; `None` when the topic carries no readings.
pub fn readings_for(
    device: &str,
    format: Format,
    topic: &str,
    body: &[u8],
    now_ms: i64,
) -> Option<Result<Vec<crate::Reading>, payload::PayloadError>> {
    // What follows `sensors/{device}`: "" for JSON, "/senml" for SenML.
    let rest = topic
        .strip_prefix("sensors/")
        .and_then(|t| t.strip_prefix(device))?;
    match (format, rest) {
        (Format::Json, "") => Some(payload::parse_json(device, body, now_ms)),
        (Format::Senml, "/senml") => Some(payload::parse_senml(device, body, now_ms)),
        (Format::Json, "/senml") => Some(Err(payload::PayloadError::Shape(
            "this device is configured for JSON on sensors/{id}".into(),
        ))),
        (Format::Senml, "") => Some(Err(payload::PayloadError::Shape(
            "this device is configured for SenML on sensors/{id}/senml".into(),
        ))),
        _ => None,
    }
}

/// How long a refused sign-in waits before its answer.
const FAILED_SIGN_IN_DELAY: Duration = Duration::from_secs(1);
/// Failed sign-ins from one address within [`FAILURE_WINDOW_MS`] before it is refused outright.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Failed sign-ins per source address, so nobody on the sensor LAN can guess device passwords at
/// line rate. Counting by address (not by username) means an attacker cannot lock a real sensor out.
#[derive(Default)]
struct Failures(Mutex<HashMap<std::net::IpAddr, (i64, u32)>>);

impl Failures {
    fn record(&self, ip: std::net::IpAddr, now_ms: i64) {
        let ip = crate::admission::address_group(ip);
        if let Ok(mut map) = self.0.lock() {
            // Old entries go, so the map cannot grow without bound.
            map.retain(|_, (since, _)| now_ms - *since < FAILURE_WINDOW_MS);
            let entry = map.entry(ip).or_insert((now_ms, 0));
            entry.1 += 1;
        }
    }

    fn blocked(&self, ip: std::net::IpAddr, now_ms: i64) -> bool {
        let ip = crate::admission::address_group(ip);
        self.0.lock().is_ok_and(|map| {
            map.get(&ip)
                .is_some_and(|(since, n)| *n >= MAX_FAILURES && now_ms - *since < FAILURE_WINDOW_MS)
        })
    }
}

struct Shared {
    failures: Failures,
    accounts: HashMap<String, Account>,
    /// Messages for subscribers: (topic, payload).
    fanout: broadcast::Sender<(Arc<str>, Bytes)>,
    speakers: Option<Arc<SpeakerLink>>,
    /// (device, client id) → the token that ends its connection, so a reconnect with the same id
    /// takes over. Keyed by device too: one device's credentials cannot end another's connection by
    /// reusing its client id.
    sessions: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
    next_session: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn account(&self, username: &str) -> Option<&Account> {
        self.accounts.get(username).or_else(|| {
            self.speakers
                .as_ref()
                .and_then(|s| s.accounts.get(username))
        })
    }

    fn allowed(account: &Account, topic: &str) -> bool {
        if account.speaker {
            speaker_topic_allowed(&account.device, topic)
        } else {
            topic_allowed(&account.device, topic)
        }
    }
}

/// The embedded broker as a supervised driver.
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    pub accounts: HashMap<String, Account>,
    pub max_connections: usize,
    /// Loudspeakers on this broker, if any are configured.
    pub speakers: Option<Arc<SpeakerLink>>,
}

impl Driver for EmbeddedBroker {
    fn name(&self) -> String {
        "mqtt".into()
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            let listener = TcpListener::bind(self.addr).await.map_err(|e| {
                DriverError::io(format!("binding the MQTT broker on {}", self.addr), e)
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| DriverError::io("MQTT broker address", e))?;
            tracing::info!("mqtt broker listening on mqtt://{bound}");
            let (fanout, _) = broadcast::channel(1024);
            let shared = Arc::new(Shared {
                failures: Failures::default(),
                accounts: self.accounts.clone(),
                speakers: self.speakers.clone(),
                fanout,
                sessions: Mutex::new(HashMap::new()),
                next_session: std::sync::atomic::AtomicU64::new(1),
            });
            let admission = Admission::new(ListenerLimits::for_devices(self.max_connections));
            ctx.health.listener("mqtt", &admission);
            accept_connections(listener, admission, ctx, "MQTT", |socket, peer, ticket| {
                let (ctx, shared) = (ctx.clone(), shared.clone());
                async move {
                    let _ = socket.set_nodelay(true);
                    if let Err(e) = serve_client(socket, ticket, &shared, &ctx).await {
                        tracing::debug!(%peer, error = %Untrusted(&e.to_string()), "MQTT connection ended");
                    }
                }
            })
            .await;
            Ok(())
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the node stopped taking readings")]
    SinkClosed,
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// What the writer half sends, in order.
enum Out {
    Now(Packet),
    /// Sent once the readings of these messages are committed; if they could not be, the connection
    /// closes unanswered so the client sends the messages again.
    AfterCommit(oneshot::Receiver<bool>, Vec<Packet>),
}

/// Publishes parsed from one read, handed to the node as one batch with one commit to wait for.
#[derive(Default)]
struct Pending {
    readings: Vec<crate::Reading>,
    acks: Vec<Packet>,
}

/// Most readings gathered before they are handed over without waiting for the socket to run dry.
const PENDING_MAX: usize = 1000;

impl Pending {
    /// Hands the gathered readings to the node and queues their acknowledgements behind the commit.
    async fn flush(
        &mut self,
        ctx: &DriverContext,
        out: &mpsc::Sender<Out>,
    ) -> Result<(), ClientError> {
        if self.acks.is_empty() {
            if !self.readings.is_empty() {
                ctx.sink
                    .send(std::mem::take(&mut self.readings))
                    .await
                    .map_err(|_| ClientError::SinkClosed)?;
            }
            return Ok(());
        }
        let committed = ctx
            .sink
            .send_acked(std::mem::take(&mut self.readings))
            .await
            .map_err(|_| ClientError::SinkClosed)?;
        out.send(Out::AfterCommit(committed, std::mem::take(&mut self.acks)))
            .await
            .map_err(|_| ClientError::SinkClosed)
    }
}

async fn read_packet(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, ClientError> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn write_packet(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    packet: &Packet,
) -> Result<(), ClientError> {
    let mut out = BytesMut::with_capacity(packet.size() + 8);
    packet.write(&mut out, MAX_PACKET)?;
    wr.write_all(&out).await?;
    Ok(())
}

async fn serve_client(
    socket: TcpStream,
    mut ticket: Ticket,
    shared: &Shared,
    ctx: &DriverContext,
) -> Result<(), ClientError> {
    let peer = socket.peer_addr().map(|a| a.ip()).ok();
    let (mut rd, mut wr) = socket.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut buf)).await
    {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Ok(Some(_))) => return Err(ClientError::Protocol("first packet is not CONNECT".into())),
        Ok(Err(e)) => return Err(e),
    };
    let refuse = |code| Packet::ConnAck(ConnAck::new(code, false));
    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        write_packet(&mut wr, &refuse(ConnectReturnCode::RefusedProtocolVersion)).await?;
        return Err(ClientError::Refused("only MQTT 3.1.1 is spoken".into()));
    }
    if let Some(ip) = peer
        && shared.failures.blocked(ip, ctx.now())
    {
        tracing::warn!(%ip, "MQTT sign-in refused: too many failures from this address");
        if let Some(a) = connect
            .login
            .as_ref()
            .and_then(|l| shared.account(&l.username))
        {
            ctx.health
                .sign_in_refused(&a.device, format!("address {ip} blocked"), ctx.now());
        }
        write_packet(&mut wr, &refuse(ConnectReturnCode::NotAuthorized)).await?;
        return Err(ClientError::Refused(format!("{ip} is blocked for a while")));
    }
    let account = connect.login.as_ref().and_then(|login| {
        let a = shared.account(&login.username)?;
        constant_time_eq(a.password.as_bytes(), login.password.as_bytes()).then(|| a.clone())
    });
    let Some(account) = account else {
        if let Some(ip) = peer {
            shared.failures.record(ip, ctx.now());
        }
        // Each wrong guess costs the guesser a second.
        tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        let who = connect
            .login
            .as_ref()
            .map(|l| l.username.clone())
            .unwrap_or_default();
        tracing::warn!(username = %Untrusted(&who), ip = ?peer, "MQTT sign-in refused");
        // Anyone can send a wrong password in a device's name: counted apart, never as a fault.
        if let Some(a) = shared.account(&who) {
            ctx.health
                .sign_in_refused(&a.device, "wrong MQTT password", ctx.now());
        }
        write_packet(&mut wr, &refuse(ConnectReturnCode::BadUserNamePassword)).await?;
        return Err(ClientError::Refused(format!(
            "bad credentials for `{}`",
            Untrusted(&who)
        )));
    };
    if connect.client_id.is_empty() && !connect.clean_session {
        write_packet(&mut wr, &refuse(ConnectReturnCode::BadClientId)).await?;
        return Err(ClientError::Refused(
            "a persistent session needs a client id".into(),
        ));
    }
    let client_id = if connect.client_id.is_empty() {
        format!(
            "{}-{}",
            account.device,
            shared
                .next_session
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    } else {
        connect.client_id.clone()
    };
    if client_id.contains(['#', '+']) || client_id.chars().any(char::is_control) {
        write_packet(&mut wr, &refuse(ConnectReturnCode::BadClientId)).await?;
        return Err(ClientError::Refused(
            "client ids may not contain '#', '+' or control characters".into(),
        ));
    }
    // A reconnect with the same client id ends the old connection (MQTT 3.1.1 §3.1.4), but only
    // the same device's: the id is scoped to the credentials that signed in.
    let key = (account.device.clone(), client_id.clone());
    let previous = shared
        .sessions
        .lock()
        .ok()
        .and_then(|sessions| sessions.get(&key).map(|(_, token)| token.clone()));
    // Signed in: from a pending slot to one of the device's own. When the device's slots are full
    // and this is a reconnect, the old connection's slot is the one to take: end it and wait for its
    // slot to come free, rather than end it and still refuse the new one.
    let mut admitted = ticket.authenticate(&account.device);
    if admitted.is_err()
        && let Some(old) = &previous
    {
        old.cancel();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            admitted = ticket.authenticate(&account.device);
            if admitted.is_ok() {
                break;
            }
        }
    }
    if let Err(e) = admitted {
        tracing::warn!(device = %account.device, "MQTT connection refused: {e}");
        write_packet(&mut wr, &refuse(ConnectReturnCode::ServiceUnavailable)).await?;
        return Err(ClientError::Refused(e.to_string()));
    }
    let session = shared
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mine = ctx.shutdown.child_token();
    if let Ok(mut sessions) = shared.sessions.lock()
        && let Some((_, old)) = sessions.insert(key.clone(), (session, mine.clone()))
    {
        old.cancel();
    }
    write_packet(
        &mut wr,
        &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await?;
    let result = connected(
        rd,
        wr,
        buf,
        &account,
        connect.keep_alive,
        shared,
        ctx,
        &mine,
    )
    .await;
    if let Ok(mut sessions) = shared.sessions.lock()
        && sessions.get(&key).is_some_and(|(id, _)| *id == session)
    {
        sessions.remove(&key);
    }
    drop(ticket);
    result
}

#[allow(clippy::too_many_arguments)]
async fn connected(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut buf: BytesMut,
    account: &Account,
    keep_alive: u16,
    shared: &Shared,
    ctx: &DriverContext,
    stop: &CancellationToken,
) -> Result<(), ClientError> {
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(1024);
    let writer_stop = stop.clone();
    // Acknowledgements become ready a commit at a time; everything ready is written with one call.
    let writer = async move {
        let mut bytes = BytesMut::with_capacity(4096);
        let mut carry: Option<Out> = None;
        loop {
            let mut next = match carry.take() {
                Some(item) => Some(item),
                None => match out_rx.recv().await {
                    Some(item) => Some(item),
                    None => break,
                },
            };
            let mut first = true;
            let mut failed = false;
            while let Some(item) = next.take() {
                let packets = match item {
                    Out::Now(p) => vec![p],
                    Out::AfterCommit(mut rx, packets) => {
                        let ok = if first {
                            (&mut rx).await.unwrap_or(false)
                        } else {
                            match rx.try_recv() {
                                Ok(ok) => ok,
                                Err(oneshot::error::TryRecvError::Empty) => {
                                    carry = Some(Out::AfterCommit(rx, packets));
                                    break;
                                }
                                Err(oneshot::error::TryRecvError::Closed) => false,
                            }
                        };
                        if !ok {
                            failed = true;
                            break;
                        }
                        packets
                    }
                };
                for p in &packets {
                    p.write(&mut bytes, MAX_PACKET)?;
                }
                first = false;
                if bytes.len() >= 64 * 1024 {
                    break;
                }
                next = out_rx.try_recv().ok();
            }
            if !bytes.is_empty() {
                if let Err(e) = wr.write_all(&bytes).await {
                    writer_stop.cancel();
                    return Err(e.into());
                }
                bytes.clear();
            }
            if failed {
                writer_stop.cancel();
                return Err(ClientError::SinkClosed);
            }
        }
        let _ = wr.shutdown().await;
        Ok(())
    };
    // A client silent for one and a half keep-alive periods is gone (MQTT 3.1.1 §3.1.2.10).
    let idle = if keep_alive == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(u64::from(keep_alive) * 1500)
    };
    let reader = async move {
        let mut subscriptions: Vec<String> = Vec::new();
        let mut pending = Pending::default();
        // Only a connection with subscriptions listens, so with none anywhere a publish is not copied.
        let mut fanout: Option<broadcast::Receiver<(Arc<str>, Bytes)>> = None;
        loop {
            // Packets already buffered are handled before waiting for more bytes.
            let packet = match Packet::read(&mut buf, MAX_PACKET) {
                Ok(p) => p,
                Err(CodecError::InsufficientBytes(_)) => {
                    // The socket has run dry: hand over what it brought before waiting for more.
                    pending.flush(ctx, &out_tx).await?;
                    tokio::select! {
                        r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => match r {
                            Ok(Ok(0)) => return Ok(()),
                            Ok(Ok(_)) => continue,
                            Ok(Err(e)) => return Err(e.into()),
                            Err(_) => return Err(ClientError::Protocol("keep-alive expired".into())),
                        },
                        m = async {
                            match fanout.as_mut() {
                                Some(rx) => rx.recv().await,
                                None => std::future::pending().await,
                            }
                        } => {
                            match m {
                                Ok((topic, payload)) => {
                                    if subscriptions.iter().any(|f| filter_matches(f, &topic)) {
                                        let p = Publish::from_bytes(topic.to_string(), QoS::AtMostOnce, payload);
                                        if out_tx.send(Out::Now(Packet::Publish(p))).await.is_err() {
                                            return Ok(());
                                        }
                                    }
                                }
                                Err(broadcast::error::RecvError::Lagged(n)) => {
                                    tracing::debug!(skipped = n, "slow MQTT subscriber skipped messages");
                                }
                                Err(broadcast::error::RecvError::Closed) => return Ok(()),
                            }
                            continue;
                        }
                        () = stop.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            let reply = match packet {
                Packet::Publish(p) => {
                    if p.topic.contains(['#', '+']) || p.topic.is_empty() {
                        return Err(ClientError::Protocol("wildcards in a publish topic".into()));
                    }
                    if !Shared::allowed(account, &p.topic) {
                        tracing::warn!(device = %account.device, topic = %Untrusted(&p.topic), "MQTT publish outside the device's topic refused");
                        ctx.health.error(
                            &account.device,
                            ErrorKind::Refused,
                            format!("publish to {}", p.topic),
                            ctx.now(),
                        );
                        // What came before the refused message is still the device's to keep.
                        pending.flush(ctx, &out_tx).await?;
                        return Err(ClientError::Refused(format!(
                            "{} may not publish to {}",
                            account.device, p.topic
                        )));
                    }
                    let now = ctx.now();
                    if account.speaker {
                        ctx.health.ok(&account.device, now);
                        if let Some(link) = &shared.speakers {
                            let _ = link.messages.send(SpeakerMessage {
                                speaker: account.device.clone(),
                                topic: p.topic.clone(),
                                payload: p.payload.clone(),
                            });
                        }
                        match p.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => {
                                pending.acks.push(Packet::PubAck(PubAck::new(p.pkid)))
                            }
                            QoS::ExactlyOnce => {
                                pending.acks.push(Packet::PubRec(PubRec::new(p.pkid)))
                            }
                        }
                        continue;
                    }
                    match readings_for(&account.device, account.format, &p.topic, &p.payload, now) {
                        Some(Ok(readings)) => {
                            ctx.health.ok(&account.device, now);
                            pending.readings.extend(readings);
                        }
                        Some(Err(e)) => {
                            // A payload that cannot be read will not improve by resending: it is
                            // counted and acknowledged.
                            ctx.health.error(
                                &account.device,
                                ErrorKind::Malformed,
                                e.to_string(),
                                now,
                            );
                        }
                        None => {}
                    }
                    // Most nodes have no MQTT subscribers; then a message costs no copy here.
                    if shared.fanout.receiver_count() > 0 {
                        let _ = shared
                            .fanout
                            .send((Arc::from(p.topic.as_str()), p.payload.clone()));
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => pending.acks.push(Packet::PubAck(PubAck::new(p.pkid))),
                        QoS::ExactlyOnce => pending.acks.push(Packet::PubRec(PubRec::new(p.pkid))),
                    }
                    if pending.readings.len() >= PENDING_MAX {
                        pending.flush(ctx, &out_tx).await?;
                    }
                    continue;
                }
                Packet::PubRel(r) => Some(Out::Now(Packet::PubComp(PubComp::new(r.pkid)))),
                Packet::Subscribe(s) => {
                    let codes = s
                        .filters
                        .iter()
                        .map(|f| {
                            if filter_valid(&f.path) && Shared::allowed(account, &f.path) {
                                if !subscriptions.contains(&f.path) {
                                    subscriptions.push(f.path.clone());
                                }
                                SubscribeReasonCode::Success(QoS::AtMostOnce)
                            } else {
                                tracing::warn!(device = %account.device, filter = %Untrusted(&f.path), "MQTT subscription outside the device's topic refused");
                                ctx.health.error(&account.device, ErrorKind::Refused, format!("subscribe to {}", f.path), ctx.now());
                                SubscribeReasonCode::Failure
                            }
                        })
                        .collect();
                    if !subscriptions.is_empty() && fanout.is_none() {
                        // A speaker hears the node's commands; sensors hear each other's readings.
                        fanout = match (&shared.speakers, account.speaker) {
                            (Some(link), true) => Some(link.commands.subscribe()),
                            _ => Some(shared.fanout.subscribe()),
                        };
                    }
                    Some(Out::Now(Packet::SubAck(SubAck::new(s.pkid, codes))))
                }
                Packet::Unsubscribe(u) => {
                    subscriptions.retain(|f| !u.topics.contains(f));
                    if subscriptions.is_empty() {
                        fanout = None;
                    }
                    Some(Out::Now(Packet::UnsubAck(UnsubAck::new(u.pkid))))
                }
                Packet::PingReq => Some(Out::Now(Packet::PingResp)),
                Packet::Disconnect => {
                    pending.flush(ctx, &out_tx).await?;
                    return Ok(());
                }
                // Acks for QoS 0 deliveries cannot come; anything else is a client bug.
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => None,
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected packet {:?}",
                        packet_name(&other)
                    )));
                }
            };
            if let Some(out) = reply {
                // Replies keep the order of the packets they answer.
                pending.flush(ctx, &out_tx).await?;
                if out_tx.send(out).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let (read_result, write_result) = tokio::join!(reader, writer);
    read_result.and(write_result)
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::SubAck(_) => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingResp => "PINGRESP",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_confined_to_the_device() {
        assert!(topic_allowed("rain-02", "sensors/rain-02"));
        assert!(topic_allowed("rain-02", "sensors/rain-02/senml"));
        assert!(topic_allowed("rain-02", "sensors/rain-02/#"));
        assert!(!topic_allowed("rain-02", "sensors/rain-020"));
        assert!(!topic_allowed("rain-02", "sensors/rain-03"));
        assert!(!topic_allowed("rain-02", "sensors/#"));
        assert!(!topic_allowed("rain-02", "sensors/+/senml"));
        assert!(!topic_allowed("rain-02", "#"));
        assert!(!topic_allowed("rain-02", "other/rain-02"));
    }

    #[test]
    fn speakers_are_confined_to_their_own_pa_topics() {
        assert!(speaker_topic_allowed("spk-1", "pa/spk-1/status"));
        assert!(speaker_topic_allowed("spk-1", "pa/spk-1/#"));
        assert!(!speaker_topic_allowed("spk-1", "pa/spk-10/cmd"));
        assert!(!speaker_topic_allowed("spk-1", "pa/+/cmd"));
        assert!(!speaker_topic_allowed("spk-1", "sensors/spk-1"));
        assert!(!topic_allowed("spk-1", "pa/spk-1/status"));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("sensors/a/#", "sensors/a/senml"));
        assert!(filter_matches("sensors/a/#", "sensors/a"));
        assert!(filter_matches("sensors/+/senml", "sensors/a/senml"));
        assert!(!filter_matches("sensors/+", "sensors/a/senml"));
        assert!(filter_valid("sensors/a/#"));
        assert!(!filter_valid("sensors/a#"));
        assert!(!filter_valid("sensors/#/a"));
    }

    #[test]
    fn payload_format_follows_the_device() {
        let json = ("d", Format::Json);
        assert_eq!(
            readings_for(json.0, json.1, "sensors/d", br#"{"level": 1.5}"#, 5)
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        assert!(
            readings_for(json.0, json.1, "sensors/d/senml", b"[]", 5)
                .unwrap()
                .is_err()
        );
        assert!(readings_for(json.0, json.1, "sensors/d/status", b"up", 5).is_none());
        let r = readings_for(
            "d",
            Format::Senml,
            "sensors/d/senml",
            br#"[{"n":"level","v":1.5,"t":1700000000}]"#,
            1_700_000_000_000,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r[0].metric.as_str(), r[0].time_ms),
            ("level", 1_700_000_000_000)
        );
    }

    proptest::proptest! {
        /// The codec and the payload parsers sit on the broker's open port: garbage must never panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), topic_tail in "[a-z/#+]{0,12}") {
            let mut buf = BytesMut::from(bytes.as_slice());
            for _ in 0..16 {
                match Packet::read(&mut buf, MAX_PACKET) {
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = readings_for("d", Format::Json, &format!("sensors/d{topic_tail}"), &bytes, 0);
            let _ = readings_for("d", Format::Senml, "sensors/d/senml", &bytes, 0);
            let _ = filter_valid(&topic_tail);
        }
    }

    #[test]
    fn an_address_that_keeps_guessing_is_refused_for_a_while() {
        let f = Failures::default();
        let (ip, other) = ("192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap());
        for i in 0..MAX_FAILURES {
            assert!(!f.blocked(ip, i64::from(i)));
            f.record(ip, i64::from(i));
        }
        assert!(f.blocked(ip, 100));
        assert!(!f.blocked(other, 100), "only the guessing address");
        assert!(
            !f.blocked(ip, FAILURE_WINDOW_MS + 1),
            "and only for the window"
        );
    }

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
