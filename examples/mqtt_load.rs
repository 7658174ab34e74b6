//! MQTT load for the ingest benchmark (tests/bench/ingest.sh): K connections, each a device
//! `{prefix}{i:02}` publishing M QoS 1 messages of one reading to `sensors/{device}` with up to W
//! messages unacknowledged, written straight onto the socket with rumqttc's codec so the generator
//! costs little CPU. The same load goes to the node's broker and to the peer's mosquitto.
//!
//! Usage: mqtt_load HOST:PORT CONNECTIONS MESSAGES_EACH WINDOW PREFIX PASSWORD|- [START_MS]
//! Prints one JSON line: messages, seconds, messages per second.

use std::time::Instant;

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn device(
    addr: String,
    name: String,
    password: Option<String>,
    messages: u64,
    window: u64,
    start_ms: i64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut socket = TcpStream::connect(&addr).await?;
    socket.set_nodelay(true)?;
    let mut connect = Connect::new(name.clone());
    connect.keep_alive = 60;
    if let Some(pw) = password {
        connect.login = Some(Login::new(name.clone(), pw));
    }
    let mut out = BytesMut::new();
    Packet::Connect(connect).write(&mut out, 1 << 20)?;
    socket.write_all(&out).await?;
    let mut inbuf = BytesMut::with_capacity(1 << 16);
    loop {
        match Packet::read(&mut inbuf, 1 << 20) {
            Ok(Packet::ConnAck(ack)) => {
                if ack.code != rumqttc::mqttbytes::v4::ConnectReturnCode::Success {
                    return Err(format!("{name}: refused {:?}", ack.code).into());
                }
                break;
            }
            Ok(_) => {}
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if socket.read_buf(&mut inbuf).await? == 0 {
                    return Err("closed before CONNACK".into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let topic = format!("sensors/{name}");
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < messages {
        out.clear();
        while sent < messages && sent - acked < window {
            let pkid = (sent % 65_535 + 1) as u16;
            let payload = format!(
                "{{\"ts\":{},\"rainfall\":{}}}",
                start_ms + sent as i64,
                (sent % 40) as f64 * 0.5
            );
            let mut p = Publish::new(topic.clone(), QoS::AtLeastOnce, payload);
            p.pkid = pkid;
            Packet::Publish(p).write(&mut out, 1 << 20)?;
            sent += 1;
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
        }
        if socket.read_buf(&mut inbuf).await? == 0 {
            return Err(format!("{name}: closed after {acked} acks").into());
        }
        loop {
            match Packet::read(&mut inbuf, 1 << 20) {
                Ok(Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!(
            "usage: mqtt_load HOST:PORT CONNECTIONS MESSAGES_EACH WINDOW PREFIX PASSWORD|- [START_MS]"
        );
        std::process::exit(2);
    }
    let (addr, k, m, w) = (
        args[1].clone(),
        args[2].parse::<u64>()?,
        args[3].parse::<u64>()?,
        args[4].parse::<u64>()?,
    );
    let prefix = args[5].clone();
    let password = (args[6] != "-").then(|| args[6].clone());
    let start_ms: i64 = match args.get(7) {
        Some(s) => s.parse()?,
        None => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64
                - 24 * 3_600_000
        }
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..k {
        tasks.push(tokio::spawn(device(
            addr.clone(),
            format!("{prefix}{i:02}"),
            password.clone(),
            m,
            w,
            start_ms,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {}, \"seconds\": {seconds:.3}, \"per_second\": {:.0}}}",
        k * m,
        (k * m) as f64 / seconds
    );
    Ok(())
}
