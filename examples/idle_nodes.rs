//! Simulated idle downstream nodes for `tests/bench/sync_idle.sh`: enrolls N fresh keys at a county
//! through its API, connects each over the sync WebSocket with the real handshake and engine (an
//! empty store each), then stays connected and idle for the requested time.
//!
//! Usage: idle_nodes <county port> <county public key> <bearer token> <count> <seconds>

use std::io::{Read, Write};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use township_sync::engine::{self, Link, PeerInfo, Relation};
use township_sync::handshake::{self, HandshakeFrame};
use township_sync::{DocStore, NodeKey, PublicKey};

fn enroll(port: u16, token: &str, key: &str, area: &str, name: &str) {
    let body = format!("{{\"public_key\":\"{key}\",\"area\":\"{area}\",\"name\":\"{name}\"}}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST /api/v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 201"), "enroll failed: {reply}");
}

async fn idle(port: u16, county: PublicKey, key: NodeKey, area: String, hold: Duration) {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/v1/sync"))
            .await
            .expect("ws");
    let (client, hello) = handshake::Client::start(&key, county).expect("hello");
    ws.send(Message::Binary(
        handshake::encode(&hello).expect("encode").into(),
    ))
    .await
    .expect("send");
    let Some(Ok(Message::Binary(b))) = ws.next().await else {
        panic!("no server hello")
    };
    let (_, proof) = client
        .finish(handshake::decode(&b).expect("decode"))
        .expect("handshake");
    ws.send(Message::Binary(
        handshake::encode(&proof).expect("encode").into(),
    ))
    .await
    .expect("send");
    let Some(Ok(Message::Binary(b))) = ws.next().await else {
        panic!("no welcome")
    };
    assert!(matches!(
        handshake::decode(&b),
        Ok(HandshakeFrame::Welcome { .. })
    ));
    let conn = rusqlite::Connection::open_in_memory().expect("db");
    conn.execute_batch(township_sync::docstore::SCHEMA)
        .expect("schema");
    let store = DocStore::new(automerge::ActorId::random(), vec![], || 0);
    let mut link = Link::new(
        area.parse().expect("area"),
        PeerInfo {
            node_id: "county".into(),
            area: "330723".parse().expect("area"),
            relation: Relation::Upstream,
        },
        0,
    );
    for f in link.start(&conn, &store).expect("start") {
        ws.send(Message::Binary(engine::encode(&f).expect("encode").into()))
            .await
            .expect("send");
    }
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(frame) = engine::decode(&b) {
                        for f in link.receive(&conn, &store, frame).expect("receive").frames {
                            ws.send(Message::Binary(engine::encode(&f).expect("encode").into())).await.expect("send");
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args[1].parse().expect("port");
    let county: PublicKey = args[2].parse().expect("key");
    let token = args[3].clone();
    let count: usize = args[4].parse().expect("count");
    let seconds: u64 = args[5].parse().expect("seconds");
    let mut tasks = Vec::new();
    for i in 0..count {
        let (key, _) = NodeKey::generate().expect("key");
        let area = format!("330723{:03}{:03}", 1 + i / 100, 1 + i % 100);
        enroll(
            port,
            &token,
            &key.public_key().to_string(),
            &area,
            &format!("idle {i}"),
        );
        tasks.push(tokio::spawn(idle(
            port,
            county,
            key,
            area,
            Duration::from_secs(seconds),
        )));
    }
    println!("connected {count}");
    for t in tasks {
        let _ = t.await;
    }
}
