//! The local control socket. The running node owns the database, so CLI commands that change it
//! (`user add`, `token create`, `rebuild`...) send their request here, one JSON line each way, and the
//! node carries it out with the same code the API uses. When no node is running, the CLI opens the
//! data directory itself (taking the lock) and runs the same [`execute`].
//!
//! The socket lives in the data directory (mode 0700) with mode 0600, so only the service user, who
//! could read the database anyway, can use it.

use crate::codes::{Code, Reason};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::app::AppState;
use crate::audit::Event;
use crate::auth::roles::Role;
use crate::auth::session;
use crate::config::Secret;
use crate::invalid::Invalid;
use crate::store::StoreError;
use crate::users::{self, Actor, NewUser, UserError, UserView};

pub const SOCKET_FILE: &str = "control.sock";
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserAdd {
        username: String,
        role: String,
        area: String,
        department: Option<String>,
        display_name: Option<String>,
        phone: Option<String>,
        password: String,
    },
    UserPasswd {
        username: String,
        password: String,
    },
    UserDisable {
        username: String,
    },
    UserList,
    TokenCreate {
        username: String,
        name: String,
    },
    Rebuild,
    EnrollAdd {
        public_key: String,
        area: String,
        name: String,
    },
    /// Reissue the LAN server certificate (under the same CA unless `new_ca`); a running node puts
    /// it in service at once.
    TlsRenew {
        new_ca: bool,
    },
}

/// What a request produced, typed on both sides of the socket so the CLI never picks fields out of
/// loose JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The account as created.
    User { user: UserView },
    /// The accounts of the node's area.
    Users { users: Vec<UserView> },
    /// Done; nothing to show.
    Done,
    /// A new API token, shown once.
    Token {
        token: String,
        id: String,
        user: String,
    },
    /// The node just enrolled.
    Enrolled { node: crate::sync::PeerRow },
    /// Projections rebuilt from the record documents.
    Rebuilt { documents: usize, millis: u64 },
    /// The LAN certificate after a renewal: the `tls show` text.
    Tls { shown: String },
}

/// Why a request was not carried out; the message is for a person at a terminal.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Enroll(#[from] crate::sync::EnrollError),
    #[error(transparent)]
    Random(#[from] session::RandomUnavailable),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    #[serde(default)]
    reply: Option<Reply>,
    #[serde(default)]
    error: Option<String>,
}

/// The actor the CLI acts as: the node's own administrator, named by the Unix user that asked.
fn cli_actor(state: &AppState, uid: Option<u32>) -> Actor {
    let name = match uid {
        Some(uid) => format!("cli(uid {uid})"),
        None => "cli".into(),
    };
    Actor::person(name, Role::Admin, state.node.area.clone())
}

/// Carries out one request.
pub async fn execute(
    state: &AppState,
    request: Request,
    uid: Option<u32>,
) -> Result<Reply, ControlError> {
    let actor = cli_actor(state, uid);
    match request {
        Request::UserAdd {
            username,
            role,
            area,
            department,
            display_name,
            phone,
            password,
        } => {
            let new = NewUser {
                username,
                role: role.parse().map_err(|e| Invalid::new("role", e))?,
                area: area.parse().map_err(|e| Invalid::new("area", e))?,
                department,
                display_name,
                phone,
                password: Secret::new(password),
            };
            let user =
                users::accounts::add(&state.store, state.write_ctx(), &state.hasher, actor, new)
                    .await?;
            Ok(Reply::User { user })
        }
        Request::UserPasswd { username, password } => {
            users::accounts::set_password(
                &state.store,
                state.write_ctx(),
                &state.hasher,
                actor,
                username,
                Secret::new(password),
            )
            .await?;
            Ok(Reply::Done)
        }
        Request::UserDisable { username } => {
            let ctx = state.write_ctx();
            state
                .store
                .write(move |conn| users::disable(conn, &ctx, &actor, &username))
                .await?;
            Ok(Reply::Done)
        }
        Request::UserList => {
            let area = state.node.area.clone();
            let users = state
                .store
                .read(move |conn| users::list(conn, &area))
                .await?;
            Ok(Reply::Users { users })
        }
        Request::TokenCreate { username, name } => {
            let name = name.trim().to_string();
            if name.is_empty() || name.chars().count() > 60 {
                return Err(Invalid::new("name", "token name must be 1 to 60 characters").into());
            }
            let token = format!("{}{}", session::TOKEN_PREFIX, session::random_secret()?);
            let hash = session::secret_hash(&token);
            let id = uuid::Uuid::now_v7().to_string();
            let ctx = state.write_ctx();
            let (who, token_id) = (username.clone(), id.clone());
            state
                .store
                .write(move |conn| {
                    let account = users::find_account(conn, &who)?
                        .ok_or_else(|| UserError::NotFound(who.clone()))?;
                    if account.disabled {
                        return Err(UserError::Forbidden(
                            Reason::new(Code::AccountDisabled, format!("user `{who}` is disabled"))
                                .param("username", who.clone()),
                        ));
                    }
                    session::insert_token(conn, &token_id, &hash, &account, &name, ctx.now_ms())?;
                    ctx.audit(
                        conn,
                        Event::new(&actor.username, "token.create", &who)
                            .detail(json!({"token_id": token_id, "name": name})),
                    )?;
                    Ok(())
                })
                .await?;
            Ok(Reply::Token {
                token,
                id,
                user: username,
            })
        }
        Request::EnrollAdd {
            public_key,
            area,
            name,
        } => {
            let (ctx, our_area) = (state.write_ctx(), state.node.area.clone());
            let node = state
                .store
                .write(move |conn| {
                    let request = crate::sync::EnrollRequest {
                        public_key,
                        area,
                        name,
                    };
                    crate::sync::enroll(conn, &ctx, &our_area, &actor.username, request)
                })
                .await?;
            Ok(Reply::Enrolled { node })
        }
        Request::Rebuild => {
            let ctx = state.write_ctx();
            let started = std::time::Instant::now();
            let documents = state
                .store
                .write(move |conn| {
                    let count = ctx.docs.rebuild_projections(conn)?;
                    ctx.audit(
                        conn,
                        Event::new(&actor.username, "projections.rebuild", "projections")
                            .detail(json!({"documents": count})),
                    )?;
                    Ok::<_, StoreError>(count)
                })
                .await?;
            Ok(Reply::Rebuilt {
                documents,
                millis: started.elapsed().as_millis() as u64,
            })
        }
        Request::TlsRenew { new_ca } => {
            let renew = if new_ca {
                crate::tls::Renew::NewCa
            } else {
                crate::tls::Renew::Server
            };
            let now = state.clock.now_ms();
            let (certs, reason) = match state.tls.get().cloned() {
                Some(lan) => {
                    let reason = lan.renew(renew, now)?;
                    (lan.certs(), reason)
                }
                // Not serving: renew the files; the node takes them when it starts.
                None => {
                    let configured = &state.config.http.tls_names;
                    crate::tls::certs::ensure(
                        &state.data_dir,
                        &state.node.name,
                        configured,
                        &crate::tls::certs::wanted_names(configured),
                        now,
                        renew,
                        false,
                    )?
                }
            };
            if let Some(reason) = reason {
                crate::app::audit_tls_issue(state, &certs, reason).await;
            }
            Ok(Reply::Tls {
                shown: crate::tls::describe(&certs, state.config.http.https_listen),
            })
        }
    }
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Serves the control socket until shutdown.
pub fn spawn_server(state: &AppState, path: PathBuf) -> std::io::Result<()> {
    // We hold the data-directory lock, so a socket file here is a leftover from a crash.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let state_for_task = state.clone();
    state.tasks.spawn(async move {
        let state = state_for_task;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        continue;
                    }
                },
                () = state.shutdown.cancelled() => break,
            };
            let conn_state = state.clone();
            state
                .tasks
                .spawn(async move { serve_one(conn_state, stream).await });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn serve_one(state: AppState, stream: UnixStream) {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    let outcome = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => execute(&state, request, uid)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("bad request: {e}")),
        },
        Err(e) => Err(format!("cannot read request: {e}")),
    };
    let response = match outcome {
        Ok(reply) => Response {
            reply: Some(reply),
            error: None,
        },
        Err(error) => Response {
            reply: None,
            error: Some(error),
        },
    };
    let mut text = serde_json::to_string(&response)
        .unwrap_or_else(|_| "{\"error\":\"the answer could not be encoded\"}".into());
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Sends a request to a running node. `Ok(None)` when no node is listening; `Err` carries the
/// node's message for the person at the terminal.
pub async fn call(data_dir: &Path, request: &Request) -> Result<Option<Reply>, String> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "cannot reach the running node at {}: {e}",
                path.display()
            ));
        }
    };
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(|e| e.to_string())?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    let response: Response =
        serde_json::from_str(&line).map_err(|e| format!("bad answer from the node: {e}"))?;
    match (response.reply, response.error) {
        (Some(reply), _) => Ok(Some(reply)),
        (None, Some(error)) => Err(error),
        (None, None) => Err("the node gave no answer".into()),
    }
}
