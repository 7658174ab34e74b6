//! Shared helpers for integration tests: run the real `township-node` binary in a temporary data
//! directory, on port 0, and wait for readiness instead of sleeping.

#![allow(dead_code)]

pub mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_township-node");

/// With `TEST_LOG=1`, logs of in-process nodes go to the test's captured output (shown when it
/// fails); node processes' lines are echoed by [`Server::spawn`].
pub fn capture_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_test_writer()
            .try_init();
    }
}

/// Runs the binary to completion with a clean `TOWNSHIP_` environment.
pub fn run(args: &[&str]) -> Output {
    command(args).output().expect("run township-node")
}

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TOWNSHIP_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    // Every test node serves HTTPS on a port of its own; the default 8443 would collide.
    cmd.env("TOWNSHIP_HTTP__HTTPS_LISTEN", "127.0.0.1:0");
    cmd
}

/// Runs `serve` on port 0 expecting it to refuse to start, and returns its output.
pub fn serve_refused(data_dir: &Path) -> Output {
    run(&[
        "serve",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
}

/// Asserts the command exited with `code` and said `needle` on stderr.
pub fn assert_refused(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert!(
        stderr(out).contains(needle),
        "expected {needle:?} in: {}",
        stderr(out)
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `init` for `dir` with the given area, name and role.
pub fn run_init(dir: &Path, area: &str, name: &str, role: &str) -> Output {
    run(&init_args(dir, area, name, role))
}

/// The `init` arguments every test node shares; callers append what differs.
pub fn init_args<'a>(dir: &'a Path, area: &'a str, name: &'a str, role: &'a str) -> Vec<&'a str> {
    vec![
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--area",
        area,
        "--name",
        name,
        "--role",
        role,
    ]
}

/// The local admin password every test node gets (through --admin-password-file).
pub const ADMIN_PASSWORD: &str = "Admin-Test-Pass-2026";

/// Initialises a township node in `parent/node` and returns the data directory.
pub fn init_node(parent: &Path) -> PathBuf {
    let dir = parent.join("node");
    let pw = parent.join("admin.pw");
    std::fs::create_dir_all(parent).unwrap();
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let out = run(&[
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--area",
        "330723001",
        "--name",
        "熟溪街道",
        "--role",
        "township",
        "--admin-password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    dir
}

/// A signed-in browser session: the cookie to send and the CSRF token for changes.
#[derive(Debug, Clone)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    pub fn headers(&self) -> Vec<(&str, &str)> {
        vec![
            ("cookie", self.cookie.as_str()),
            ("x-csrf-token", self.csrf.as_str()),
        ]
    }
}

/// Signs in over HTTP and returns the session; panics unless the answer is 200.
pub fn login(base: &str, username: &str, password: &str) -> Session {
    let (status, headers, body) = send_json(
        "POST",
        &format!("{base}/api/v1/session"),
        &[],
        &serde_json::json!({"username": username, "password": password}),
    );
    assert_eq!(
        status,
        200,
        "login as {username}: {}",
        String::from_utf8_lossy(&body)
    );
    let set_cookie = header(&headers, "set-cookie")
        .expect("set-cookie")
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Session {
        cookie,
        csrf: json["csrf_token"].as_str().unwrap().to_string(),
    }
}

/// A serving node process; killed on drop if the test did not stop it.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub lines: mpsc::Receiver<String>,
    /// Lines logged before the HTTP listener was up (drivers log their addresses there).
    pub early: Vec<String>,
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 and waits for the `listening on` line and a 200 from /readyz.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec![
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut cmd = command(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Server {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn township-node");
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let show = std::env::var_os("TEST_LOG").is_some();
            // Spawned from the test's thread, so what it prints is captured and shown on failure.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if show {
                        eprintln!("[node] {line}");
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pos) = line.find("listening on http://") {
                        let rest = &line[pos + "listening on ".len()..];
                        let url: String = rest
                            .chars()
                            .take_while(|c| {
                                c.is_ascii_alphanumeric()
                                    || matches!(c, '.' | ':' | '/' | '[' | ']')
                            })
                            .collect();
                        break url;
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "node did not report its address; output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        let server = Server {
            child,
            base,
            lines: rx,
            early: seen,
        };
        server.wait_ready();
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = blocking_get(&self.url("/readyz"))
                && r.0 == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "node never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal and waits for exit; returns the exit status and how long it took.
    pub fn signal_and_wait(
        &mut self,
        signal: rustix::process::Signal,
    ) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), signal)
            .unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "node did not exit after signal"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a logged line containing `needle` and returns the text after it up to the next space.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let after = |line: &str| {
            line.find(needle).map(|pos| {
                line[pos + needle.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        };
        if let Some(i) = self.early.iter().position(|l| l.contains(needle)) {
            let line = self.early.remove(i);
            return after(&line).unwrap_or_default();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = after(&line) {
                        return rest;
                    }
                    // Kept for a later wait: two listeners may log in either order.
                    self.early.push(line);
                }
                Err(_) => panic!("the node never logged `{needle}`"),
            }
        }
    }

    /// Lines the node has logged since the last call.
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over a plain socket: status, headers (lower-cased names), body.
/// Status, headers (lower-cased names) and body of a response.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

pub fn blocking_get(url: &str) -> std::io::Result<Reply> {
    blocking_request("GET", url, &[])
}

pub fn blocking_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    blocking_send(method, url, headers, &[])
}

/// Sends a JSON body.
pub fn send_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Reply {
    let mut all = headers.to_vec();
    all.push(("content-type", "application/json"));
    blocking_send(method, url, &all, body.to_string().as_bytes()).expect("request")
}

pub fn blocking_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, headers, body))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = raw.get(start + size + 2..).unwrap_or_default();
    }
    out
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A free TCP port on loopback (for a node whose port another node must know before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node's identity (`township-node id`) as JSON.
pub fn id_of(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&run(&["id", "--data-dir", dir.to_str().unwrap()]).stdout).unwrap()
}

/// Initialises a node of the tree in `parent/name`, with `upstream` (URL, key) when it has one.
pub fn init_tree_node(
    parent: &Path,
    name: &str,
    area: &str,
    role: &str,
    upstream: Option<(&str, &str)>,
) -> PathBuf {
    let dir = parent.join(name);
    let pw = parent.join(format!("{name}.pw"));
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut args = init_args(&dir, area, name, role);
    args.extend(["--admin-password-file", pw.to_str().unwrap()]);
    if let Some((url, key)) = upstream {
        args.extend(["--upstream", url, "--upstream-key", key]);
    }
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// Serves `dir` on a chosen port on loopback.
pub fn serve_on(dir: &Path, port: u16) -> Server {
    let listen = format!("127.0.0.1:{port}");
    Server::spawn(command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ]))
}

/// Polls `check` every 100 ms for up to 40 s.
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a peer tool is installed; where it is not, the test says it skipped, and fails instead
/// when `TOWNSHIP_REQUIRE_PEERS` is set (as tests/run.sh does).
pub fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("TOWNSHIP_REQUIRE_PEERS").is_err(),
            "{tool} is required (tests/run.sh installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed (tests/run.sh installs it)");
    }
    ok
}
