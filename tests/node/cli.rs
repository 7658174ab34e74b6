//! Every CLI subcommand's success and failure paths, against the real binary in temp directories.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

#[test]
fn help_documents_every_subcommand() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for sub in ["init", "id", "serve", "demo", "backup", "doctor"] {
        assert!(
            text.contains(&format!("  {sub}")),
            "--help lacks {sub}:\n{text}"
        );
    }
    let out = run(&["init", "--help"]);
    assert!(stdout(&out).contains("--area") && stdout(&out).contains("--role"));
}

#[test]
fn init_prints_identity_and_creates_key_and_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = run_init(&dir, "330723001001", "王宅村", "village");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("node_id:") && text.contains("public_key:"),
        "{text}"
    );

    let key = dir.join("node.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(dir.join("township.db").exists());

    let id = run(&["id", "--data-dir", dir.to_str().unwrap()]);
    assert!(id.status.success(), "{}", stderr(&id));
    let json: serde_json::Value = serde_json::from_str(stdout(&id).trim()).unwrap();
    assert_eq!(json["area"], "330723001001");
    assert_eq!(json["role"], "village");
    let node_id = json["node_id"].as_str().unwrap();
    assert_eq!(node_id.len(), 32);
    assert!(text.contains(node_id));
    assert!(text.contains(json["public_key"].as_str().unwrap()));
}

#[test]
fn init_refuses_an_existing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let before = std::fs::read(dir.join("node.key")).unwrap();
    let out = run_init(&dir, "330723001", "x", "township");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.join("node.key")).unwrap(),
        before,
        "key untouched"
    );

    // An existing empty directory is still an existing directory.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run_init(&empty, "330723001", "x", "township");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn init_refuses_bad_area_and_role() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let bad_area = run_init(&dir, "33072", "x", "county");
    assert_eq!(
        bad_area.status.code(),
        Some(2),
        "clap rejects the value: {}",
        stderr(&bad_area)
    );
    assert!(stderr(&bad_area).contains("33072"));
    let mismatch = run_init(&dir, "330723", "x", "village");
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(
        stderr(&mismatch).contains("12-digit"),
        "{}",
        stderr(&mismatch)
    );
    let bad_role = run_init(&dir, "330723", "x", "province");
    assert_eq!(bad_role.status.code(), Some(2));
    assert!(!dir.exists(), "nothing is created on refusal");
}

#[test]
fn bad_flags_exit_2_with_usage() {
    let out = run(&["serve", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--no-such-flag"));
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "missing --data-dir");
}

#[test]
fn id_and_serve_fail_clearly_without_a_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = run(&["id", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("township-node init"),
        "{}",
        stderr(&out)
    );
    assert_refused(&serve_refused(&missing), 1, "does not exist");
}

#[test]
fn serve_refuses_a_newer_database_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let conn = rusqlite::Connection::open(dir.join("township.db")).unwrap();
    conn.pragma_update(None, "user_version", 42).unwrap();
    drop(conn);
    let out = run(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("schema version 42"), "{err}");
    assert!(
        err.contains(&format!(
            "supports up to {}",
            township_node::store::migrations::LATEST
        )),
        "{err}"
    );
    let out = run(&["id", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_refuses_unknown_config_keys_from_file_and_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "[http]\nlisten = \"127.0.0.1:0\"\nmax_bodyy_bytes = 5\n",
    )
    .unwrap();
    let out = run(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("max_bodyy_bytes"), "{}", stderr(&out));

    let out = command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .env("TOWNSHIP_HTTP__TIMEOUT", "5s")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("TOWNSHIP_HTTP__TIMEOUT"),
        "{}",
        stderr(&out)
    );

    let missing = tmp.path().join("missing.toml");
    let out = run(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.toml"));
}

#[test]
fn config_layers_file_then_environment_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (file_port, env_port) = (free_port(), free_port());
    // The file (found in the data directory) sets JSON logs and a port.
    std::fs::write(
        dir.join("township-node.toml"),
        format!("[http]\nlisten = \"127.0.0.1:{file_port}\"\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();

    // File alone: its port, JSON lines.
    let server = Server::spawn(command(&["serve", "--data-dir", dir.to_str().unwrap()]));
    assert!(
        server.base.ends_with(&format!(":{file_port}")),
        "{}",
        server.base
    );
    drop(server);

    // The environment overrides the file.
    let mut cmd = command(&["serve", "--data-dir", dir.to_str().unwrap()]);
    cmd.env("TOWNSHIP_HTTP__LISTEN", format!("127.0.0.1:{env_port}"));
    let server = Server::spawn(cmd);
    assert!(
        server.base.ends_with(&format!(":{env_port}")),
        "{}",
        server.base
    );
    drop(server);

    // A flag overrides both; the file's JSON log format still applies.
    let mut cmd = command(&[
        "serve",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.env("TOWNSHIP_HTTP__LISTEN", format!("127.0.0.1:{env_port}"));
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    let message = line["message"].as_str().unwrap();
    assert!(
        message.starts_with("listening on http://127.0.0.1:"),
        "{message}"
    );
    assert!(
        !message.ends_with(&format!(":{env_port}")) && !message.ends_with(&format!(":{file_port}"))
    );
}

#[test]
fn a_second_serve_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let _server = Server::start(&dir, &[], &[]);
    assert_refused(&serve_refused(&dir), 1, "already serving");
}

#[test]
fn serve_refuses_a_replaced_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let other = init_node(&tmp.path().join("other"));
    std::fs::copy(other.join("node.key"), dir.join("node.key")).unwrap();
    assert_refused(
        &serve_refused(&dir),
        1,
        "not the key this database was created with",
    );
}

#[test]
fn backup_copies_a_running_node_consistently() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let server = Server::start(&dir, &[], &[]);
    let out_file = tmp.path().join("backup.db");
    let out = run(&[
        "backup",
        "--data-dir",
        dir.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = rusqlite::Connection::open(&out_file).unwrap();
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let node_id: String = copy
        .query_row(
            "SELECT value FROM node_meta WHERE key = 'node_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (_, _, body) = blocking_get(&server.url("/healthz")).unwrap();
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["node_id"], node_id.as_str());

    // Never overwrites.
    let again = run(&[
        "backup",
        "--data-dir",
        dir.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already exists"));
    let missing = run(&[
        "backup",
        "--data-dir",
        tmp.path().join("x").to_str().unwrap(),
        "--out",
        tmp.path().join("y.db").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn doctor_passes_a_healthy_node_and_names_fixes_for_broken_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let d = dir.to_str().unwrap();
    let out = run(&["doctor", "--data-dir", d]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("all checks passed"));

    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["doctor", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("chmod 600"), "{}", stdout(&out));
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A serial sensor whose adapter is unplugged: a warning naming the port, not a failure.
    std::fs::write(
        dir.join("township-node.toml"),
        "[[devices]]\nid = \"wl-01\"\nname = \"w\"\narea = \"330723001\"\ndriver = \"modbus_rtu\"\nport = \"/dev/ttyUSB-not-here\"\nslave = 1\npoints = [{ metric = \"level\", register = 0 }]\n",
    )
    .unwrap();
    let out = run(&["doctor", "--data-dir", d]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("/dev/ttyUSB-not-here is not present"),
        "{}",
        stdout(&out)
    );

    std::fs::write(dir.join("township-node.toml"), "[store]\nwrite_batch = 3\n").unwrap();
    let out = run(&["doctor", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("write_batch"), "{}", stdout(&out));
    std::fs::remove_file(dir.join("township-node.toml")).unwrap();

    // Corrupt the middle of the database file.
    let db = dir.join("township.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 512] {
        *b = 0x5a;
    }
    bytes[0..16].copy_from_slice(b"not a database!!");
    std::fs::write(&db, bytes).unwrap();
    let out = run(&["doctor", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAIL"), "{}", stdout(&out));
    assert!(stdout(&out).contains("backup"), "{}", stdout(&out));

    let out = run(&[
        "doctor",
        "--data-dir",
        tmp.path().join("missing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("township-node init"));
}

#[test]
fn demo_initialises_once_and_prints_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    for round in 0..2 {
        let mut cmd = command(&[
            "demo",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        cmd.current_dir(tmp.path());
        let mut server = Server::spawn(cmd);
        let (status, _, body) = blocking_get(&server.url("/api/v1/node")).unwrap();
        assert_eq!(status, 200, "round {round}");
        let node: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(node["area"], "330723001");
        let lines = server.drain_lines();
        assert!(
            lines.iter().any(|l| l.contains("open http://127.0.0.1:")),
            "round {round}: {lines:?}"
        );
        // The first round made the node: its rules on the simulated stations are in force.
        let admin_password = (round == 0).then(|| {
            server
                .early
                .iter()
                .chain(lines.iter())
                .find_map(|l| l.split("admin (local administrator): ").nth(1))
                .map(|p| p.trim().to_string())
                .expect("the demo prints the admin password once")
        });
        if let Some(password) = admin_password {
            let admin = login(&server.base, "admin", &password);
            let (status, _, body) =
                blocking_request("GET", &server.url("/api/v1/rules"), &admin.headers()).unwrap();
            assert_eq!(status, 200);
            let rules: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let names: Vec<&str> = rules["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap())
                .collect();
            assert_eq!(names.len(), 3, "{rules}");
            assert!(names.contains(&"熟溪水位"), "{names:?}");
        }
        // The simulated stations report at once (the first poll is immediate).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, _, body) = blocking_get(&server.url("/metrics")).unwrap();
            let text = String::from_utf8_lossy(&body).to_string();
            let committed = text
                .lines()
                .find_map(|l| l.strip_prefix("township_telemetry_readings_committed_total "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if committed >= 9.0 {
                assert!(text.contains("township_sensor_status{device=\"wl-shuxi\""));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no simulated readings: {text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let (status, _) = server.signal_and_wait(rustix::process::Signal::TERM);
        assert!(status.success());
    }
}

#[test]
fn public_keys_that_start_with_a_hyphen_are_accepted_as_values() {
    let tmp = tempfile::tempdir().unwrap();
    // A valid key whose base64url text starts with '-': 0xF8 encodes to '-' in the first position.
    let key = {
        use base64::Engine as _;
        let mut bytes = [7u8; 32];
        bytes[0] = 0xF8;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    assert!(key.starts_with('-'), "{key}");
    let dir = tmp.path().join("v");
    let out = run(&[
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--area",
        "330723001001",
        "--name",
        "v",
        "--role",
        "village",
        "--upstream",
        "http://127.0.0.1:1",
        "--upstream-key",
        &key,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let county = init_node(&tmp.path().join("c"));
    let out = run(&[
        "enroll",
        "add",
        "--data-dir",
        county.to_str().unwrap(),
        "--public-key",
        &key,
        "--area",
        "330723001001",
        "--name",
        "v",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}
