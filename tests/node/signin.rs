//! Sign-in throttling against a real node process, with clients on distinct loopback addresses
//! (127.0.0.x all reach the node on Linux), so "another address" is a real other address:
//! guesses sent at once are all counted, a stranger cannot lock the owner out, a browser that
//! signed in before passes the account-wide limit, and a disabled account is no oracle.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One HTTP/1.1 request from a chosen source address.
async fn request(
    node: SocketAddr,
    from: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(node).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        text.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(&body);
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn sign_in(
    node: SocketAddr,
    from: &str,
    user: &str,
    password: &str,
    cookie: Option<&str>,
) -> Reply {
    let cookie_header;
    let mut headers = Vec::new();
    if let Some(c) = cookie {
        cookie_header = c.to_string();
        headers.push(("Cookie", cookie_header.as_str()));
    }
    request(
        node,
        from.parse().unwrap(),
        "POST",
        "/api/v1/session",
        &headers,
        Some(&json!({"username": user, "password": password})),
    )
    .await
}

fn node_addr(server: &Server) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// A node with one grid worker, started with `env`.
fn node_with_worker(tmp: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let dir = init_node(tmp);
    let pw = tmp.join("w.pw");
    std::fs::write(&pw, "Grid-Worker-2026\n").unwrap();
    let out = run(&[
        "user",
        "add",
        "--data-dir",
        dir.to_str().unwrap(),
        "--username",
        "wang.fang",
        "--role",
        "grid_worker",
        "--area",
        "330723001001",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    Server::start(&dir, &[], env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guesses_sent_at_once_are_all_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let server = node_with_worker(tmp.path(), &[]);
    let node = node_addr(&server);
    // Twenty-nine wrong passwords and the right one, all at once, from one address.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let password = if i == 17 {
            "Grid-Worker-2026".to_string()
        } else {
            format!("guess-{i}")
        };
        tasks.push(tokio::spawn(async move {
            sign_in(node, "127.0.0.2", "wang.fang", &password, None)
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let evaluated = statuses.iter().filter(|s| **s != 429).count();
    assert!(
        evaluated <= 5,
        "{evaluated} attempts evaluated: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        30 - evaluated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_cannot_lock_the_owner_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = node_with_worker(
        tmp.path(),
        &[("TOWNSHIP_AUTH__LOGIN_EVALUATIONS_PER_HOUR", "8")],
    );
    let node = node_addr(&server);

    // The owner signs in from her phone once; her browser keeps the device cookie.
    let first = sign_in(node, "127.0.0.5", "wang.fang", "Grid-Worker-2026", None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let device = first
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix("tn_device="))
        .and_then(|v| v.split(';').next())
        .map(|v| format!("tn_device={v}"))
        .expect("a device cookie");

    // A stranger guesses from one address until refused.
    for i in 0..5 {
        let r = sign_in(node, "127.0.0.66", "wang.fang", &format!("guess-{i}"), None).await;
        assert_eq!(r.status, 401);
    }
    let r = sign_in(node, "127.0.0.66", "wang.fang", "Grid-Worker-2026", None).await;
    assert_eq!(r.status, 429, "the guessing address is held");
    assert!(r.headers.iter().any(|(k, _)| k == "retry-after"));
    // ...which does not hold the owner at another address.
    let r = sign_in(node, "127.0.0.7", "wang.fang", "Grid-Worker-2026", None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Guesses from many addresses exhaust the account-wide bound for strangers...
    for i in 0..8 {
        let from = format!("127.0.1.{}", i + 1);
        let _ = sign_in(node, &from, "wang.fang", &format!("spread-{i}"), None).await;
    }
    let r = sign_in(node, "127.0.0.8", "wang.fang", "Grid-Worker-2026", None).await;
    assert_eq!(
        r.status, 429,
        "no device cookie: held by the account-wide bound"
    );
    // ...but not for the browser she signed in with before, wherever it is now.
    let r = sign_in(
        node,
        "127.0.0.9",
        "wang.fang",
        "Grid-Worker-2026",
        Some(&device),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A device cookie made up by the stranger is worth nothing.
    let forged = "tn_device=d2FuZy5mYW5n.AAAA.AAAA";
    let r = sign_in(
        node,
        "127.0.0.10",
        "wang.fang",
        "Grid-Worker-2026",
        Some(forged),
    )
    .await;
    assert_eq!(r.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_answers_like_a_wrong_password() {
    let tmp = tempfile::tempdir().unwrap();
    let server = node_with_worker(tmp.path(), &[]);
    let node = node_addr(&server);
    let wrong = sign_in(node, "127.0.0.11", "wang.fang", "not-her-password", None).await;
    let dir = tmp.path().join("node");
    let out = run(&[
        "user",
        "disable",
        "--data-dir",
        dir.to_str().unwrap(),
        "--username",
        "wang.fang",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let right = sign_in(node, "127.0.0.12", "wang.fang", "Grid-Worker-2026", None).await;
    assert_eq!((right.status, wrong.status), (401, 401));
    let strip = |b: &str| {
        let mut v: serde_json::Value = serde_json::from_str(b).unwrap();
        v.as_object_mut().unwrap().remove("instance");
        v
    };
    assert_eq!(strip(&right.body), strip(&wrong.body));
}
