//! Accounts and the audit chain through the real binary: `init`'s admin password, the `user`, `token`,
//! `rebuild` and `audit verify` commands both while the node runs (through its control socket) and
//! while it is stopped, and sign-in over real HTTP.

use crate::common::*;
use serde_json::json;

fn data(dir: &std::path::Path) -> &str {
    dir.to_str().unwrap()
}

fn password_file(parent: &std::path::Path, name: &str, password: &str) -> String {
    let path = parent.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn init_has_no_default_password_and_prints_a_generated_one_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let out = run_init(&dir, "330723001", "熟溪街道", "township");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("admin password (shown once, write it down): "))
        .expect("generated password printed")
        .to_string();
    assert!(password.len() >= 16);
    let server = Server::start(&dir, &[], &[]);
    for guess in ["admin", "password", "123456", "township"] {
        let (status, _, _) = send_json(
            "POST",
            &server.url("/api/v1/session"),
            &[],
            &json!({"username": "admin", "password": guess}),
        );
        assert_eq!(status, 401, "{guess}");
    }
    login(&server.base, "admin", &password);
}

#[test]
fn init_refuses_a_weak_admin_password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = password_file(tmp.path(), "weak.pw", "short");
    let dir = tmp.path().join("node");
    let out = run(&[
        "init",
        "--data-dir",
        data(&dir),
        "--area",
        "330723001",
        "--name",
        "x",
        "--role",
        "township",
        "--admin-password-file",
        &pw,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("8 to 128"), "{}", stderr(&out));
    assert!(!dir.exists());
}

#[test]
fn user_commands_work_while_the_node_runs_and_while_it_is_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let pw = password_file(tmp.path(), "grid.pw", "Grid-Worker-2026");

    // Stopped: the CLI opens the directory itself.
    let out = run(&[
        "user",
        "add",
        "--data-dir",
        data(&dir),
        "--username",
        "wang.fang",
        "--role",
        "grid_worker",
        "--area",
        "330723001001",
        "--password-file",
        &pw,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut server = Server::start(&dir, &[], &[]);
    login(&server.base, "wang.fang", "Grid-Worker-2026");

    // Running: the same commands go through the node's control socket.
    let out = run(&[
        "user",
        "add",
        "--data-dir",
        data(&dir),
        "--username",
        "zhou.min",
        "--role",
        "dept_handler",
        "--area",
        "330723001",
        "--department",
        "water",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let generated = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .expect("generated password")
        .to_string();
    login(&server.base, "zhou.min", &generated);

    let out = run(&[
        "user",
        "add",
        "--data-dir",
        data(&dir),
        "--username",
        "zhou.min",
        "--role",
        "grid_worker",
        "--area",
        "330723001001",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already taken"), "{}", stderr(&out));
    let out = run(&[
        "user",
        "add",
        "--data-dir",
        data(&dir),
        "--username",
        "far.away",
        "--role",
        "grid_worker",
        "--area",
        "330723002001",
    ]);
    assert_eq!(out.status.code(), Some(1), "outside the node's area");

    let out = run(&["user", "list", "--data-dir", data(&dir), "--json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "wang.fang", "zhou.min"]);

    let new_pw = password_file(tmp.path(), "new.pw", "Changed-Pass-2026");
    let session = login(&server.base, "wang.fang", "Grid-Worker-2026");
    let out = run(&[
        "user",
        "passwd",
        "--data-dir",
        data(&dir),
        "--username",
        "wang.fang",
        "--password-file",
        &new_pw,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _, _) =
        blocking_request("GET", &server.url("/api/v1/session"), &session.headers()).unwrap();
    assert_eq!(status, 401, "password change ended the session");
    login(&server.base, "wang.fang", "Changed-Pass-2026");

    let out = run(&[
        "user",
        "disable",
        "--data-dir",
        data(&dir),
        "--username",
        "wang.fang",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, _, _) = send_json(
        "POST",
        &server.url("/api/v1/session"),
        &[],
        &json!({"username": "wang.fang", "password": "Changed-Pass-2026"}),
    );
    // A disabled account answers its right password exactly as a wrong one: no oracle.
    assert_eq!(status, 401);

    // The actions are in the audit log under the CLI's name.
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    let (status, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/audit?action=record.create"),
        &admin.headers(),
    )
    .unwrap();
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{audit}");
    assert!(
        entries
            .iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("cli(uid "))
    );

    let (status, _) = server.signal_and_wait(rustix::process::Signal::TERM);
    assert!(status.success());
    let out = run(&["user", "list", "--data-dir", data(&dir)]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("wang.fang") && stdout(&out).contains("disabled"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn tokens_from_the_cli_authenticate_scripts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    let server = Server::start(&dir, &[], &[]);
    let out = run(&[
        "token",
        "create",
        "--data-dir",
        data(&dir),
        "--user",
        "admin",
        "--name",
        "county nightly export",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out)
        .lines()
        .find(|l| l.starts_with("tn_"))
        .unwrap()
        .to_string();
    let auth = format!("Bearer {token}");
    let (status, _, body) = blocking_request(
        "GET",
        &server.url("/api/v1/users"),
        &[("authorization", &auth)],
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // No CSRF token needed with a bearer token.
    let (status, _, _) = send_json(
        "POST",
        &server.url("/api/v1/users"),
        &[("authorization", &auth)],
        &json!({"username": "script.made", "role": "grid_worker", "area": "330723001001", "password": "Script-Made-1"}),
    );
    assert_eq!(status, 201);
    let out = run(&[
        "token",
        "create",
        "--data-dir",
        data(&dir),
        "--user",
        "nobody",
        "--name",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no user"), "{}", stderr(&out));
}

#[test]
fn throttled_logins_get_429_with_retry_after_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    for _ in 0..5 {
        let (status, _, _) = send_json(
            "POST",
            &server.url("/api/v1/session"),
            &[],
            &json!({"username": "admin", "password": "guess-guess"}),
        );
        assert_eq!(status, 401);
    }
    let (status, headers, body) = send_json(
        "POST",
        &server.url("/api/v1/session"),
        &[],
        &json!({"username": "admin", "password": ADMIN_PASSWORD}),
    );
    assert_eq!(status, 429);
    assert!(
        header(&headers, "retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
}

#[test]
fn rebuild_works_running_and_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_node(tmp.path());
    for name in ["a.one", "b.two", "c.three"] {
        let out = run(&[
            "user",
            "add",
            "--data-dir",
            data(&dir),
            "--username",
            name,
            "--role",
            "grid_worker",
            "--area",
            "330723001001",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&["rebuild", "--data-dir", data(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("from 3 documents"),
        "{}",
        stdout(&out)
    );
    let _server = Server::start(&dir, &[], &[]);
    let out = run(&["rebuild", "--data-dir", data(&dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("from 3 documents"),
        "{}",
        stdout(&out)
    );
}

/// Builds a node with some history, then copies its data directory for each tampering.
fn node_with_history(parent: &std::path::Path) -> std::path::PathBuf {
    let dir = init_node(parent);
    let server = Server::start(&dir, &[], &[]);
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    for i in 0..12 {
        let (status, _, _) = send_json(
            "POST",
            &server.url("/api/v1/users"),
            &admin.headers(),
            &json!({"username": format!("worker{i}"), "role": "grid_worker", "area": "330723001001", "password": "Worker-Pass-1"}),
        );
        assert_eq!(status, 201);
    }
    drop(server);
    dir
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".sock") || name.to_string_lossy().ends_with(".lock") {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name)).unwrap();
        std::fs::set_permissions(
            to.join(&name),
            std::fs::metadata(entry.path()).unwrap().permissions(),
        )
        .unwrap();
    }
}

#[test]
fn audit_verify_passes_intact_chains_and_names_the_first_bad_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_with_history(tmp.path());
    let out = run(&["audit", "verify", "--data-dir", data(&dir)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let count: i64 = stdout(&out)
        .split("intact: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(count >= 14, "{}", stdout(&out));

    let tamperings = [
        (
            "altered",
            "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 7",
            7,
        ),
        ("removed", "DELETE FROM audit_log WHERE seq = 5", 5),
        (
            "reordered",
            "UPDATE audit_log SET seq = -1 WHERE seq = 9; UPDATE audit_log SET seq = 9 WHERE seq = 10; UPDATE audit_log SET seq = 10 WHERE seq = -1;",
            9,
        ),
        (
            "inserted",
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 6; UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1006; \
             INSERT INTO audit_log (seq, at_ms, actor, action, target, detail, prev_hash, hash) \
             SELECT 6, at_ms, 'mallory', 'user.add', 'x', '{}', hash, hash FROM audit_log WHERE seq = 5;",
            6,
        ),
    ];
    for (what, sql, bad_seq) in tamperings {
        let copy = tmp.path().join(format!("copy-{what}"));
        copy_dir(&dir, &copy);
        let conn = rusqlite::Connection::open(copy.join("township.db")).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        let out = run(&["audit", "verify", "--data-dir", data(&copy)]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(&format!("sequence {bad_seq}:")),
            "{what}: expected sequence {bad_seq} in {}",
            stderr(&out)
        );
    }
}

#[test]
fn refused_paths_over_real_http() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&init_node(tmp.path()), &[], &[]);
    let admin = login(&server.base, "admin", ADMIN_PASSWORD);
    let users = server.url("/api/v1/users");
    let new_user = |name: &str| json!({"username": name, "role": "grid_worker", "area": "330723001001", "password": "Grid-Worker-2026"});

    // Missing and wrong CSRF token, foreign Origin: 403 and nothing stored.
    let (status, _, _) = send_json(
        "POST",
        &users,
        &[("cookie", &admin.cookie)],
        &new_user("no.csrf"),
    );
    assert_eq!(status, 403);
    let (status, _, _) = send_json(
        "POST",
        &users,
        &[("cookie", &admin.cookie), ("x-csrf-token", "nope")],
        &new_user("bad.csrf"),
    );
    assert_eq!(status, 403);
    let mut foreign = admin.headers();
    foreign.push(("origin", "http://192.0.2.66"));
    let (status, _, _) = send_json("POST", &users, &foreign, &new_user("foreign"));
    assert_eq!(status, 403);
    let (status, _, _) = send_json("POST", &users, &admin.headers(), &new_user("grid.one"));
    assert_eq!(status, 201);
    let (_, _, body) = blocking_request("GET", &users, &admin.headers()).unwrap();
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        list["users"].as_array().unwrap().len(),
        2,
        "only admin and grid.one: {list}"
    );

    // A grid worker may not manage accounts or read the audit log.
    let worker = login(&server.base, "grid.one", "Grid-Worker-2026");
    assert_eq!(
        blocking_request("GET", &users, &worker.headers())
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        blocking_request("GET", &server.url("/api/v1/audit"), &worker.headers())
            .unwrap()
            .0,
        403
    );
    assert_eq!(blocking_request("GET", &users, &[]).unwrap().0, 401);

    // Sign-out ends the session on the server: replaying the cookie fails.
    assert_eq!(
        blocking_request("DELETE", &server.url("/api/v1/session"), &worker.headers())
            .unwrap()
            .0,
        204
    );
    assert_eq!(
        blocking_request("GET", &server.url("/api/v1/session"), &worker.headers())
            .unwrap()
            .0,
        401
    );
}

#[test]
fn restore_onto_a_new_machine_gets_a_new_actor_and_keeps_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_with_history(tmp.path());
    let backup = tmp.path().join("nightly.db");
    let out = run(&[
        "backup",
        "--data-dir",
        data(&dir),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A new machine: an empty place, the key brought from safe keeping.
    let fresh = tmp.path().join("new-machine");
    let key = dir.join("node.key");
    let out = run(&[
        "restore",
        "--data-dir",
        data(&fresh),
        "--from",
        backup.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let salt = |d: &std::path::Path| -> String {
        let c = rusqlite::Connection::open(d.join("township.db")).unwrap();
        c.query_row(
            "SELECT value FROM node_meta WHERE key = 'db_salt'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_ne!(
        salt(&dir),
        salt(&fresh),
        "a restored copy writes with a new actor id"
    );
    let out = run(&["audit", "verify", "--data-dir", data(&fresh)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Server::start(&fresh, &[], &[]);
    login(&server.base, "worker3", "Worker-Pass-1");
    drop(server);

    // A backup of another node is refused, and nothing is replaced.
    let other = init_node(&tmp.path().join("other"));
    let out = run(&[
        "restore",
        "--data-dir",
        data(&other),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not the key"), "{}", stderr(&out));
    assert!(std::fs::read_dir(&other).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .contains("before-restore")
    }));

    // A running node is never restored under its feet.
    let _running = Server::start(&fresh, &[], &[]);
    let out = run(&[
        "restore",
        "--data-dir",
        data(&fresh),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already serving"), "{}", stderr(&out));
}
