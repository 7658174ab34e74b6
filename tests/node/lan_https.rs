//! HTTPS on the LAN: the node's own CA, fetched over plain HTTP and then trusted the way a phone
//! trusts it (nothing else), serves the app with Secure cookies; LAN browsers on plain HTTP are sent
//! to HTTPS while devices, probes and the certificate pages stay; `tls show|renew` and `doctor`; and a
//! flood of strangers who connect and never finish a handshake does not shut anyone out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::common::harness::Harness;
use crate::common::*;

/// The port from the node's `listening on https://...` line.
fn https_port(server: &Server) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    for line in server.early.iter() {
        if let Some(port) = port_in(line) {
            return port;
        }
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = server
            .lines
            .recv_timeout(left)
            .expect("the node never said where HTTPS listens");
        if let Some(port) = port_in(&line) {
            return port;
        }
    }
}

fn port_in(line: &str) -> Option<u16> {
    let rest = &line[line.find("listening on https://")? + "listening on https://".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.rsplit(':').next()?.parse().ok()
}

/// A client that trusts only `ca_der`, as a phone that installed the node's CA does.
fn client_trusting(ca_der: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session reports the certificate of the first handshake; every request here must
    // see the certificate the node presents now.
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port`, naming the server `name` (SNI and Host).
/// Returns the status, the raw head, the body and the server's leaf certificate.
async fn https(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    name: &str,
    request: &str,
) -> Result<(u16, String, Vec<u8>, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let request = request.replace("{host}", &format!("{name}:{port}"));
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head, raw[split + 4..].to_vec(), leaf))
}

fn start_with_name(dir: &std::path::Path) -> Server {
    Server::start(dir, &[], &[("TOWNSHIP_HTTP__TLS_NAMES", "[\"hub.test\"]")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_trusts_the_node_ca_gets_https_with_secure_cookies_and_nothing_else_is_trusted()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let server = tokio::task::block_in_place(|| start_with_name(&dir));
    let port = https_port(&server);
    let base = server.base.clone();

    // The CA comes over plain HTTP (there is no other way before trusting it), as DER.
    let (status, headers, ca_der) =
        tokio::task::block_in_place(|| blocking_get(&format!("{base}/ca.crt"))).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/x-x509-ca-cert")
    );
    assert_eq!(ca_der[0], 0x30, "DER");
    let connector = client_trusting(&ca_der);

    // Trusted by name and by address; refused for a name the node does not have.
    for name in ["hub.test", "localhost", "127.0.0.1"] {
        let (status, _, body, _) = https(
            &connector,
            port,
            name,
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status, 200, "{name}");
        assert!(String::from_utf8_lossy(&body).contains("\"ok\""));
    }
    let wrong = https(
        &connector,
        port,
        "example.com",
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        wrong.is_err(),
        "a name outside the certificate must not verify"
    );
    // A client that does not trust the CA refuses the node (no blind trust anywhere).
    let stranger = client_trusting(
        rcgen::generate_simple_self_signed(vec!["x.test".into()])
            .unwrap()
            .cert
            .der(),
    );
    assert!(
        https(
            &stranger,
            port,
            "hub.test",
            "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .await
        .is_err()
    );

    // Signing in over HTTPS sets Secure cookies; over plain HTTP on this machine it cannot.
    let body = format!("{{\"username\":\"admin\",\"password\":\"{ADMIN_PASSWORD}\"}}");
    let request = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, head, _, _) = https(&connector, port, "hub.test", &request).await.unwrap();
    assert_eq!(status, 200, "{head}");
    let cookies: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert!(!cookies.is_empty());
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );
    let (status, headers, _) = tokio::task::block_in_place(|| {
        blocking_send(
            "POST",
            &format!("{base}/api/v1/session"),
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    })
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .all(|(_, v)| !v.contains("Secure"))
    );

    // The trust page shows the CA's fingerprint and a QR code of an HTTPS address of this node.
    let (status, _, page) =
        tokio::task::block_in_place(|| blocking_get(&format!("{base}/ca"))).unwrap();
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    let fingerprint = township_node::tls::certs::fingerprint(&ca_der);
    assert!(page.contains(&fingerprint), "fingerprint on the page");
    assert!(page.contains("安卓") && page.contains("苹果"));
    assert!(
        page.contains(&format!(":{port}/")),
        "an https address with the real port"
    );

    // `tls show` prints the same fingerprint; `tls renew` on the running node swaps the
    // certificate under the same CA: the phone keeps working, with a new leaf.
    let out =
        tokio::task::block_in_place(|| run(&["tls", "show", "--data-dir", dir.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&fingerprint), "{}", stdout(&out));
    assert!(stdout(&out).contains("hub.test"));
    let (_, _, _, leaf_before) = https(
        &connector,
        port,
        "hub.test",
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let out =
        tokio::task::block_in_place(|| run(&["tls", "renew", "--data-dir", dir.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _, _, leaf_after) = https(
        &connector,
        port,
        "hub.test",
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_ne!(
        leaf_before, leaf_after,
        "the renewed certificate is in service without a restart"
    );

    // doctor checks the certificate; a key other users can read is a failure named with its fix.
    let out = tokio::task::block_in_place(|| {
        command(&["doctor", "--data-dir", dir.to_str().unwrap()])
            .env("TOWNSHIP_HTTP__TLS_NAMES", "[\"hub.test\"]")
            .output()
            .unwrap()
    });
    let text = stdout(&out);
    assert!(text.contains("LAN certificate expiry"), "{text}");
    assert!(text.contains(&fingerprint), "{text}");
    let key = dir.join("tls").join("server.key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = tokio::task::block_in_place(|| run(&["doctor", "--data-dir", dir.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(stdout(&out).contains("chmod 600"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_who_connect_and_say_nothing_do_not_shut_out_a_phone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let server = tokio::task::block_in_place(|| start_with_name(&dir));
    let port = https_port(&server);
    let (_, _, ca_der) =
        tokio::task::block_in_place(|| blocking_get(&format!("{}/ca.crt", server.base))).unwrap();
    let connector = client_trusting(&ca_der);
    // 300 connections that never send a byte, and 50 that send garbage instead of a ClientHello.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\xff\xff garbage")
            .await;
        idle.push(s);
    }
    let started = Instant::now();
    let (status, _, _, _) = https(
        &connector,
        port,
        "hub.test",
        "GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    // Still alive and serving plain HTTP too.
    let (status, _, _) =
        tokio::task::block_in_place(|| blocking_get(&format!("{}/healthz", server.base))).unwrap();
    assert_eq!(status, 200);
}

/// `GET path` from `peer` with `host`, through the router (no socket), optionally as over TLS.
async fn get_from(
    h: &Harness,
    peer: [u8; 4],
    host: &str,
    path: &str,
    tls: bool,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", host)
        .header("accept", "text/html")
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from((peer, 50000))));
    if tls {
        request.extensions_mut().insert(township_node::tls::OverTls);
    }
    let response = h.router().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        to_bytes(body, 1 << 20).await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn lan_browsers_on_plain_http_are_sent_to_https_and_devices_probes_and_the_ca_are_not() {
    let h = Harness::new().await;
    h.state()
        .lan_tls()
        .expect("the node made its certificate")
        .set_port(8443);
    let lan = [192, 168, 1, 23];
    // A phone opening a page on the LAN address: 308 to the same page over HTTPS.
    let (status, headers, _) =
        get_from(&h, lan, "192.168.1.20:8080", "/incidents/new?x=1", false).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        "https://192.168.1.20:8443/incidents/new?x=1"
    );
    let (status, headers, _) = get_from(&h, lan, "node.test:8080", "/", false).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers["location"], "https://node.test:8443/");
    // A name the node does not answer to is refused before any redirect (no open redirector).
    let (status, _, _) = get_from(&h, lan, "evil.example:8080", "/", false).await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // Over HTTPS, from this machine, and for the API, probes and the CA: served as they are.
    for (peer, path, tls) in [
        (lan, "/", true),
        ([127, 0, 0, 1], "/", false),
        (lan, "/api/v1/node", false),
        (lan, "/healthz", false),
        (lan, "/ca.crt", false),
        (lan, "/ca", false),
    ] {
        let (status, _, _) = get_from(&h, peer, "192.168.1.20:8080", path, tls).await;
        assert_eq!(status, StatusCode::OK, "{path} tls={tls}");
    }
    // The QR code draws only this node's own HTTPS addresses.
    let (status, headers, svg) = get_from(&h, lan, "192.168.1.20:8080", "/ca/qr.svg", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    let (status, _, _) = get_from(
        &h,
        lan,
        "192.168.1.20:8080",
        "/ca/qr.svg?url=https%3A%2F%2Fevil.example%2F",
        false,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
