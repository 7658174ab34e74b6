//! A stolen village hub, against a real township node over loopback. The attacker has root on the
//! village box: they stop its node, write whatever they like into its database with the node's own
//! key and record store (as a modified binary would), and start it again so it syncs upward. Nothing
//! they write may act above the village at the township: forged authors are refused where changes
//! merge, fields that exceed their writers are quarantined where projections read them, a clashing
//! username never takes over a township account, and forged workflow steps do not count.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use automerge::transaction::Transactable;
use serde_json::{Value, json};
use township_node::config::Config;
use township_node::node::DataDir;
use township_node::store::StoreError;
use township_sync::{AreaCode, Author, DocStore, Person, Timestamp, Transition};

const TOWNSHIP: &str = "330723001";
const VILLAGE: &str = "330723001001";

fn get(server: &Server, session: &Session, path: &str) -> Value {
    let (status, _, body) = blocking_request("GET", &server.url(path), &session.headers()).unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn try_login(server: &Server, username: &str, password: &str) -> u16 {
    send_json(
        "POST",
        &server.url("/api/v1/session"),
        &[],
        &json!({"username": username, "password": password}),
    )
    .0
}

/// Writes into a stopped node's database through its own record store, as a modified binary would.
fn tamper(
    dir: &Path,
    f: impl FnOnce(&rusqlite::Connection, &DocStore) -> Result<(), StoreError> + Send + 'static,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opened = township_node::app::open_for_command(&DataDir::new(dir), Config::default())
            .await
            .unwrap();
        let state = opened.state.clone();
        let docs = state.docs.clone();
        state.store.write(move |conn| f(conn, &docs)).await.unwrap();
        township_node::app::finish(&state, Duration::from_secs(5)).await;
    });
}

fn area(s: &str) -> AreaCode {
    s.parse().unwrap()
}

fn person(name: &str, role: &str, at: &str) -> Person {
    Person {
        name: name.into(),
        role: role.into(),
        area: area(at),
    }
}

/// A user record as the node writes one, with whatever fields the attacker chooses.
fn forge_user(
    conn: &rusqlite::Connection,
    docs: &DocStore,
    by: &Author,
    username: &str,
    role: &str,
    account_area: &str,
    password: &str,
) -> Result<(), StoreError> {
    let hash = township_node::auth::password::hash(password, 600_000).unwrap();
    let (username, role, account_area) = (
        username.to_string(),
        role.to_string(),
        account_area.to_string(),
    );
    docs.create(conn, by, "user", &area(VILLAGE), move |d| {
        d.put(automerge::ROOT, "username", username.as_str())?;
        d.put(automerge::ROOT, "display_name", username.as_str())?;
        d.put(automerge::ROOT, "role", role.as_str())?;
        d.put(automerge::ROOT, "area", account_area.as_str())?;
        d.put(automerge::ROOT, "disabled", false)?;
        d.put(automerge::ROOT, "password_hash", hash.as_str())?;
        d.put(automerge::ROOT, "created_by", "admin")?;
        Ok(())
    })?;
    Ok(())
}

fn transition(id: &str, actor: &str, role: &str, action: &str) -> Transition {
    Transition {
        id: id.into(),
        at: Timestamp {
            wall_ms: 4_000_000_000_000,
            counter: 0,
        },
        actor: actor.into(),
        role: role.into(),
        action: action.into(),
        data: Default::default(),
        written: Default::default(),
    }
}

#[test]
fn a_stolen_village_hub_cannot_act_above_its_village() {
    let tmp = tempfile::tempdir().unwrap();
    let t_port = free_port();
    let township = init_tree_node(tmp.path(), "township", TOWNSHIP, "township", None);
    let t_key = id_of(&township)["public_key"].as_str().unwrap().to_string();
    let url = format!("http://127.0.0.1:{t_port}");
    let village = init_tree_node(
        tmp.path(),
        "village",
        VILLAGE,
        "village",
        Some((&url, &t_key)),
    );
    let v_key = id_of(&village)["public_key"].as_str().unwrap().to_string();

    let t = serve_on(&township, t_port);
    let t_admin = login(&t.base, "admin", ADMIN_PASSWORD);
    let (status, _, body) = send_json(
        "POST",
        &t.url("/api/v1/nodes"),
        &t_admin.headers(),
        &json!({"public_key": v_key, "area": VILLAGE, "name": "王宅村"}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    // A real township staff member, made at the township.
    let (status, _, body) = send_json(
        "POST",
        &t.url("/api/v1/users"),
        &t_admin.headers(),
        &json!({"username": "li.ming", "role": "township_staff", "area": TOWNSHIP, "password": "Township-Staff-2026"}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));

    // The village runs honestly for a while: a grid worker reports an incident.
    let mut v = serve_on(&village, free_port());
    let v_admin = login(&v.base, "admin", ADMIN_PASSWORD);
    let (status, _, body) = send_json(
        "POST",
        &v.url("/api/v1/incidents"),
        &v_admin.headers(),
        &json!({"category": "其他", "title": "河道堵塞", "area": VILLAGE}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let incident: uuid::Uuid = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_for("the incident at the township", || {
        blocking_request(
            "GET",
            &t.url(&format!("/api/v1/incidents/{incident}")),
            &t_admin.headers(),
        )
        .is_ok_and(|r| r.0 == 200)
    });
    // Credentials flow up only: the township's staff account never reached the village.
    let v_users = get(&v, &v_admin, "/api/v1/users");
    assert!(
        !v_users.to_string().contains("li.ming"),
        "a township account reached the village: {v_users}"
    );
    v.signal_and_wait(rustix::process::Signal::TERM);

    // The box is stolen. The attacker writes, with the village's own key:
    tamper(&village, move |conn, docs| {
        let village_admin = Author::person(area(VILLAGE), person("admin", "admin", VILLAGE));
        // 1. an admin of the township, claiming the change came from the township's node;
        forge_user(
            conn,
            docs,
            &Author::node(area(TOWNSHIP)),
            "evil.admin",
            "admin",
            TOWNSHIP,
            "Evil-Pass-2026",
        )?;
        // 2. an admin of the township, honestly written by the village (the field exceeds the scope);
        forge_user(
            conn,
            docs,
            &village_admin,
            "fake.admin",
            "admin",
            TOWNSHIP,
            "Evil-Pass-2026",
        )?;
        // 3. a county IT account inside the village (a role no village-level account may hold);
        forge_user(
            conn,
            docs,
            &village_admin,
            "fake.it",
            "county_it",
            VILLAGE,
            "Evil-Pass-2026",
        )?;
        // 4. a village account named like the township's staff member, to take over her sign-in;
        forge_user(
            conn,
            docs,
            &village_admin,
            "li.ming",
            "grid_worker",
            VILLAGE,
            "Evil-Pass-2026",
        )?;
        // 5. workflow steps on the incident in the name of township staff, as the village's own
        //    admin, and as the node escalating on its own;
        let accept = transition("forged-accept", "li.ming", "township_staff", "accept");
        docs.change(conn, &village_admin, incident, move |d| {
            Ok(township_sync::workflow::append(d, &accept)?)
        })?;
        let as_staff = Author::person(area(VILLAGE), person("li.ming", "township_staff", VILLAGE));
        let reject = transition("forged-reject", "li.ming", "township_staff", "reject");
        docs.change(conn, &as_staff, incident, move |d| {
            Ok(township_sync::workflow::append(d, &reject)?)
        })?;
        let as_admin = transition("admin-accept", "admin", "admin", "accept");
        docs.change(conn, &village_admin, incident, move |d| {
            Ok(township_sync::workflow::append(d, &as_admin)?)
        })?;
        let escalate = transition("self-escalate", "system", "system", "escalate");
        docs.change(conn, &Author::node(area(VILLAGE)), incident, move |d| {
            Ok(township_sync::workflow::append(d, &escalate)?)
        })?;
        // 6. a perfectly valid village admin, to try the township's node-wide pages with;
        forge_user(
            conn,
            docs,
            &village_admin,
            "v.admin",
            "admin",
            VILLAGE,
            "Village-Admin-2026",
        )?;
        // 7. a name the township will need later, squatted in advance.
        forge_user(
            conn,
            docs,
            &village_admin,
            "zhou.new",
            "grid_worker",
            VILLAGE,
            "Evil-Pass-2026",
        )?;
        Ok(())
    });

    let v = serve_on(&village, free_port());
    // The honest part of the village's changes arrives; wait for the forged transitions to land.
    wait_for("the forged transitions at the township", || {
        let view = get(&t, &t_admin, &format!("/api/v1/incidents/{incident}"));
        view["conflicts"].as_array().is_some_and(|c| c.len() >= 4)
    });

    // 1. Refused where it merged: not stored, audited.
    assert_eq!(try_login(&t, "evil.admin", "Evil-Pass-2026"), 401);
    let users = get(&t, &t_admin, "/api/v1/users");
    assert!(!users.to_string().contains("evil.admin"), "{users}");
    let refused = get(&t, &t_admin, "/api/v1/audit?action=sync.refused&limit=50");
    assert!(
        refused.to_string().contains("outside the sending node"),
        "{refused}"
    );

    // 2 and 3. Kept, shown to the township's admin as quarantined, never effective, audited.
    for name in ["fake.admin", "fake.it"] {
        assert_eq!(try_login(&t, name, "Evil-Pass-2026"), 401, "{name}");
        let row = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {users}"));
        assert!(row["quarantine"].is_string(), "{row}");
        assert_eq!(row["signs_in"], false, "{row}");
    }
    let quarantined = get(
        &t,
        &t_admin,
        "/api/v1/audit?action=record.quarantine&limit=50",
    );
    assert_eq!(
        quarantined["entries"].as_array().map(Vec::len),
        Some(2),
        "{quarantined}"
    );

    // 4. The township's li.ming keeps her sign-in; the clash is shown.
    assert_eq!(try_login(&t, "li.ming", "Evil-Pass-2026"), 401);
    let li = login(&t.base, "li.ming", "Township-Staff-2026");
    let me = get(&t, &li, "/api/v1/session");
    assert_eq!(me["user"]["area"], TOWNSHIP);
    assert_eq!(me["user"]["role"], "township_staff");
    let both: Vec<&Value> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "li.ming")
        .collect();
    assert_eq!(both.len(), 2, "{users}");
    assert!(both.iter().all(|u| u["clash"] == true));
    assert_eq!(
        both.iter().filter(|u| u["signs_in"] == true).count(),
        1,
        "{users}"
    );

    // 5. The forged steps are conflicts; the incident is still waiting for the township.
    let view = get(&t, &t_admin, &format!("/api/v1/incidents/{incident}"));
    assert_eq!(view["state"], "reported", "{view}");
    assert!(view["transitions"].as_array().unwrap().is_empty(), "{view}");
    let conflicts: Vec<&str> = view["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["transition"]["id"].as_str().unwrap())
        .collect();
    for id in [
        "forged-accept",
        "forged-reject",
        "admin-accept",
        "self-escalate",
    ] {
        assert!(conflicts.contains(&id), "{id}: {view}");
    }

    // 6. A village admin signed in at the township manages the village's accounts there, nothing
    //    of the township's own: not its peers, not its audit log, not its incidents' workflow.
    let vadmin = login(&t.base, "v.admin", "Village-Admin-2026");
    let (stranger, _) = township_sync::NodeKey::generate().unwrap();
    for (method, path, body) in [
        ("GET", "/api/v1/nodes".to_string(), None),
        (
            "POST",
            "/api/v1/nodes".to_string(),
            Some(
                json!({"public_key": stranger.public_key().to_string(), "area": "330723001002", "name": "x"}),
            ),
        ),
        (
            "DELETE",
            format!(
                "/api/v1/nodes/{}",
                id_of(&village)["node_id"].as_str().unwrap()
            ),
            None,
        ),
        ("GET", "/api/v1/audit".to_string(), None),
        (
            "POST",
            format!("/api/v1/incidents/{incident}/transitions"),
            Some(json!({"action": "accept"})),
        ),
    ] {
        let status = match body {
            Some(b) => send_json(method, &t.url(&path), &vadmin.headers(), &b).0,
            None => {
                blocking_send(method, &t.url(&path), &vadmin.headers(), b"")
                    .unwrap()
                    .0
            }
        };
        assert_eq!(status, 403, "{method} {path}");
    }

    // 7. The township still gets the name the village squatted: its account is made higher.
    let (status, _, body) = send_json(
        "POST",
        &t.url("/api/v1/users"),
        &t_admin.headers(),
        &json!({"username": "zhou.new", "role": "township_staff", "area": TOWNSHIP, "password": "Township-Staff-2027"}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let zhou = login(&t.base, "zhou.new", "Township-Staff-2027");
    assert_eq!(get(&t, &zhou, "/api/v1/session")["user"]["area"], TOWNSHIP);
    assert_eq!(try_login(&t, "zhou.new", "Evil-Pass-2026"), 401);
    // The real li.ming can still accept it.
    let (status, _, body) = send_json(
        "POST",
        &t.url(&format!("/api/v1/incidents/{incident}/transitions")),
        &li.headers(),
        &json!({"action": "accept"}),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    drop(v);
}

/// Opens a sync connection to `port` as `key`, through the real handshake; `Err` carries the
/// refusal.
async fn connect_sync(
    port: u16,
    key: &township_sync::NodeKey,
    upstream: township_sync::PublicKey,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use township_sync::handshake::{self, HandshakeFrame};
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/api/v1/sync"))
            .await
            .map_err(|e| e.to_string())?;
    let (client, hello) = handshake::Client::start(key, upstream).map_err(|e| e.to_string())?;
    ws.send(Message::Binary(
        handshake::encode(&hello).map_err(|e| e.to_string())?.into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let Some(Ok(Message::Binary(b))) = ws.next().await else {
        return Err("no server hello".into());
    };
    let frame = handshake::decode(&b).map_err(|e| e.to_string())?;
    if let HandshakeFrame::Refused { reason } = frame {
        return Err(reason);
    }
    let (_, proof) = client.finish(frame).map_err(|e| e.to_string())?;
    ws.send(Message::Binary(
        handshake::encode(&proof).map_err(|e| e.to_string())?.into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => match handshake::decode(&b) {
            Ok(HandshakeFrame::Welcome { .. }) => Ok(ws),
            Ok(HandshakeFrame::Refused { reason }) => Err(reason),
            other => Err(format!("{other:?}")),
        },
        other => Err(format!("{other:?}")),
    }
}

/// Whether the node closes this connection within `within` (frames it sends meanwhile are read).
async fn closed_within(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> bool {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_node_ends_every_one_of_its_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let township = init_tree_node(tmp.path(), "township", TOWNSHIP, "township", None);
    let t_key: township_sync::PublicKey = id_of(&township)["public_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let port = free_port();
    let t = serve_on(&township, port);
    let admin = login(&t.base, "admin", ADMIN_PASSWORD);
    let (key, _) = township_sync::NodeKey::generate().unwrap();
    let (status, _, body) = send_json(
        "POST",
        &t.url("/api/v1/nodes"),
        &admin.headers(),
        &json!({"public_key": key.public_key().to_string(), "area": VILLAGE, "name": "王宅村"}),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let node_id = key.node_id().to_string();

    // The node connects twice (a reconnect before the old socket timed out), then drops the second.
    let mut first = connect_sync(port, &key, t_key).await.unwrap();
    let mut second = connect_sync(port, &key, t_key).await.unwrap();
    second.close(None).await.unwrap();
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, _, _) = blocking_send(
        "DELETE",
        &t.url(&format!("/api/v1/nodes/{node_id}")),
        &admin.headers(),
        b"",
    )
    .unwrap();
    assert_eq!(status, 204);
    assert!(
        closed_within(&mut first, Duration::from_secs(5)).await,
        "the first connection of a revoked node stayed open"
    );
    // And it cannot come back.
    let again = connect_sync(port, &key, t_key).await;
    assert!(again.is_err_and(|e| e.contains("revoked")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_counted_and_audited_once_per_window() {
    let tmp = tempfile::tempdir().unwrap();
    let township = init_tree_node(tmp.path(), "township", TOWNSHIP, "township", None);
    let t_key: township_sync::PublicKey = id_of(&township)["public_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let port = free_port();
    let t = serve_on(&township, port);
    let admin = login(&t.base, "admin", ADMIN_PASSWORD);
    // A fresh key each time: the window is the address's, whatever the stranger claims to be.
    for _ in 0..100 {
        let (stranger, _) = township_sync::NodeKey::generate().unwrap();
        let refused = connect_sync(port, &stranger, t_key).await;
        assert!(refused.is_err());
    }
    let audit = get(&t, &admin, "/api/v1/audit?action=sync.refused&limit=200");
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert!(entries[0]["detail"].as_str().unwrap().contains("127.0.0.1"));
    let metrics = String::from_utf8(blocking_get(&t.url("/metrics")).unwrap().2).unwrap();
    assert!(
        metrics.contains("township_sync_handshakes_refused_total 100"),
        "{metrics}"
    );
}
