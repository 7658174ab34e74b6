//! The node's identity on disk: the data directory layout, `init`, and the start-up checks that
//! refuse a data directory whose key no longer matches the identity recorded in its database.
//!
//! Layout of a data directory (mode 0700):
//! - `township.db`: the SQLite database (with `-wal` and `-shm` while open)
//! - `node.key`: the Ed25519 private key, PKCS#8, mode 0600
//! - `township-node.lock`: held by the serving process so two nodes never share one directory
//! - `township-node.toml`: optional config file, used when `--config` is not given

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use township_sync::{AreaCode, NodeKey, NodeRole, PublicKey};

use crate::config::StoreConfig;
use crate::store::{self, DB_FILE, Store, StoreError};

pub const KEY_FILE: &str = "node.key";

/// Writes `bytes` to `path` through a temporary file beside it, an fsync and a rename (and an fsync
/// of the directory), so a crash never leaves half a key or certificate; the file has `mode` from
/// its first byte. The keys and certificates under the data directory are written with this.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the path has no directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // A temporary file left by a crash keeps the mode it was made with: set it again.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
pub const LOCK_FILE: &str = "township-node.lock";
pub const CONFIG_FILE: &str = "township-node.toml";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    CapKey(#[from] crate::cap::sign::KeyError),
    #[error(transparent)]
    Ebd(#[from] crate::ebd::EbdError),
    #[error("the LAN certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "data directory {0} already exists; init never touches an existing directory. Choose a new path (or remove it if it is an empty leftover)"
    )]
    DataDirExists(PathBuf),
    #[error("data directory {0} does not exist: run `township-node init --data-dir {0} ...` first")]
    NoDataDir(PathBuf),
    #[error("{0}")]
    Area(#[from] township_sync::AreaError),
    #[error("node name must be 1 to 100 characters")]
    BadName,
    #[error("{0}")]
    Identity(#[from] township_sync::IdentityError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "the key in {key_path} (public key {found}) is not the key this database was created with ({expected}). Restore the original node.key; a node that changes its key must be enrolled again"
    )]
    KeyChanged {
        key_path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "the database has no node identity (field `{0}`); it was not made by `township-node init`"
    )]
    NoIdentity(&'static str),
    #[error("another township-node is already serving {dir} (pid {pid}); stop it first")]
    Locked { dir: PathBuf, pid: String },
    #[error("{0} fails its integrity check: {1}")]
    Corrupt(PathBuf, String),
    #[error("the system random source failed")]
    Random,
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who this node is. Recorded in the database at `init` and checked against the key at every start.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub public_key: String,
    pub area: AreaCode,
    pub role: NodeRole,
    pub name: String,
}

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }
    pub fn key(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }
    pub fn default_config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn ensure_exists(&self) -> Result<(), NodeError> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(NodeError::NoDataDir(self.root.clone()))
        }
    }
}

/// What `init` needs to know.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub area: AreaCode,
    pub role: NodeRole,
    pub name: String,
    /// PBKDF2 hash of the local `admin` password (hashed by the caller, off the async workers).
    pub admin_password_hash: String,
    /// The upstream node's URL and pinned public key (not for the county).
    pub upstream: Option<(String, PublicKey)>,
}

/// Creates a data directory with its database and key pair. The directory is assembled under a
/// temporary name beside the target and renamed into place at the end, so a crash or a full disk
/// never leaves a half-made node that a later `init` would refuse and `serve` would choke on.
pub async fn init(
    dir: &DataDir,
    request: InitRequest,
    store_config: &StoreConfig,
) -> Result<NodeInfo, NodeError> {
    request.role.check_area(&request.area)?;
    let name = request.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(NodeError::BadName);
    }
    let target = dir.root();
    if target.exists() {
        return Err(NodeError::DataDirExists(target.to_path_buf()));
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = parent.join(format!(".{file_name}.init-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io(&staging))?;

    let result = populate(&DataDir::new(&staging), &request, &name, store_config).await;
    match result {
        Ok(info) => {
            if target.exists() {
                let _ = fs::remove_dir_all(&staging);
                return Err(NodeError::DataDirExists(target.to_path_buf()));
            }
            fs::rename(&staging, target).map_err(io(target))?;
            if let Ok(dir) = fs::File::open(&parent) {
                let _ = dir.sync_all();
            }
            Ok(info)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

async fn populate(
    dir: &DataDir,
    request: &InitRequest,
    name: &str,
    store_config: &StoreConfig,
) -> Result<NodeInfo, NodeError> {
    let (key, pkcs8) = NodeKey::generate()?;
    NodeKey::write_new_file(&dir.key(), &pkcs8)?;
    // Made here so a new node starts with it; nodes made before CAP make theirs at their next start.
    crate::cap::CapKey::load_or_create(dir.root())?;
    // Made now so the operator can register it with the emergency-broadcast platform before
    // `[ebd]` is configured.
    crate::ebd::open_key(dir.root())?;
    let info = NodeInfo {
        node_id: key.node_id().to_string(),
        public_key: key.public_key().to_string(),
        area: request.area.clone(),
        role: request.role,
        name: name.to_string(),
    };
    let store = Store::create(&dir.db(), store_config)?;
    let record = info.clone();
    let admin_hash = request.admin_password_hash.clone();
    let upstream = request.upstream.clone();
    let created = store
        .write(move |conn| {
            let now_ms = crate::clock::system_now_ms();
            let now = crate::clock::now_rfc3339();
            let mut stmt = conn.prepare("INSERT INTO node_meta (key, value) VALUES (?1, ?2)")?;
            for (k, v) in [
                ("node_id", record.node_id.as_str()),
                ("public_key", record.public_key.as_str()),
                ("area", record.area.as_str()),
                ("role", record.role.as_str()),
                ("name", record.name.as_str()),
                ("created_at", now.as_str()),
            ] {
                stmt.execute(params![k, v])?;
            }
            if let Some((url, key)) = &upstream {
                stmt.execute(params!["upstream_url", url])?;
                stmt.execute(params!["upstream_key", key.to_string()])?;
            }
            crate::users::create_local_admin(conn, &record.area, &admin_hash, now_ms)?;
            crate::audit::append(
                conn,
                &key,
                now_ms,
                crate::audit::Event::new("cli", "node.init", &record.node_id).detail(
                    serde_json::json!({
                        "area": record.area, "role": record.role, "name": record.name,
                    }),
                ),
            )?;
            Ok::<(), StoreError>(())
        })
        .await;
    store.close().await;
    created?;
    Ok(info)
}

fn meta(conn: &Connection, key: &'static str) -> Result<String, NodeError> {
    conn.query_row("SELECT value FROM node_meta WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(StoreError::from)?
    .ok_or(NodeError::NoIdentity(key))
}

/// Reads the identity recorded in the database.
pub fn read_identity(conn: &Connection) -> Result<NodeInfo, NodeError> {
    Ok(NodeInfo {
        node_id: meta(conn, "node_id")?,
        public_key: meta(conn, "public_key")?,
        area: meta(conn, "area")?.parse()?,
        role: meta(conn, "role")?.parse()?,
        name: meta(conn, "name")?,
    })
}

/// The upstream recorded at `init` (URL and pinned key), if any.
pub fn upstream_from_meta(conn: &Connection) -> Result<Option<(String, PublicKey)>, NodeError> {
    let get = |k: &str| -> Result<Option<String>, NodeError> {
        Ok(conn
            .query_row("SELECT value FROM node_meta WHERE key = ?1", [k], |r| {
                r.get(0)
            })
            .optional()
            .map_err(StoreError::from)?)
    };
    match (get("upstream_url")?, get("upstream_key")?) {
        (Some(url), Some(key)) => Ok(Some((url, key.parse()?))),
        _ => Ok(None),
    }
}

/// The per-database salt behind the automerge actor id.
pub fn db_salt(conn: &Connection) -> Result<Vec<u8>, NodeError> {
    hex::decode(meta(conn, "db_salt")?).map_err(|_| NodeError::NoIdentity("db_salt"))
}

/// Loads the key and checks it is the one the database was made with.
pub fn load_key_checked(dir: &DataDir, info: &NodeInfo) -> Result<NodeKey, NodeError> {
    let key = NodeKey::load_file(&dir.key())?;
    let expected: PublicKey = info.public_key.parse()?;
    if key.public_key() != expected {
        return Err(NodeError::KeyChanged {
            key_path: dir.key(),
            found: key.public_key().to_string(),
            expected: expected.to_string(),
        });
    }
    Ok(key)
}

/// Reads the identity without a running store (for `id`, `doctor`): read-only, refuses newer schemas.
pub fn read_identity_offline(
    dir: &DataDir,
    store_config: &StoreConfig,
) -> Result<NodeInfo, NodeError> {
    dir.ensure_exists()?;
    let conn = store::open_read_only(&dir.db(), store_config)?;
    read_identity(&conn)
}

/// An exclusive lock on the data directory, held for as long as the node serves.
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

impl DataDirLock {
    pub fn acquire(dir: &DataDir) -> Result<DataDirLock, NodeError> {
        use std::io::{Seek, Write};
        let path = dir.lock();
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let pid = fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(NodeError::Locked {
                dir: dir.root().to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid
                },
            });
        }
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(DataDirLock { _file: file })
    }

    /// Whether some process currently holds the lock (used by `doctor`).
    pub fn is_held(dir: &DataDir) -> Option<String> {
        let file = fs::File::open(dir.lock()).ok()?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
                None
            }
            Err(_) => Some(
                fs::read_to_string(dir.lock())
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> InitRequest {
        InitRequest {
            area: "330723001".parse().unwrap(),
            role: NodeRole::Township,
            name: "熟溪街道".into(),
            admin_password_hash: crate::auth::password::decoy_hash().into(),
            upstream: None,
        }
    }

    #[tokio::test]
    async fn init_creates_identity_and_refuses_existing_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let info = init(&dir, request(), &StoreConfig::default())
            .await
            .unwrap();
        assert_eq!(info.area.as_str(), "330723001");
        let mode = fs::metadata(dir.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let read = read_identity_offline(&dir, &StoreConfig::default()).unwrap();
        assert_eq!(read, info);
        load_key_checked(&dir, &info).unwrap();

        let err = init(&dir, request(), &StoreConfig::default())
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::DataDirExists(_)));
        // Nothing half-made is left beside it.
        let leftovers: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[tokio::test]
    async fn a_replaced_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let info = init(&dir, request(), &StoreConfig::default())
            .await
            .unwrap();
        fs::remove_file(dir.key()).unwrap();
        let (_, other) = NodeKey::generate().unwrap();
        NodeKey::write_new_file(&dir.key(), &other).unwrap();
        let err = load_key_checked(&dir, &info).unwrap_err().to_string();
        assert!(err.contains("Restore the original node.key"), "{err}");
    }

    #[tokio::test]
    async fn role_and_area_must_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let mut bad = request();
        bad.role = NodeRole::Village;
        assert!(init(&dir, bad, &StoreConfig::default()).await.is_err());
        assert!(!dir.root().exists());
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let held = DataDirLock::acquire(&dir).unwrap();
        assert!(DataDirLock::is_held(&dir).is_some());
        // flock locks belong to the open file description, so a second open conflicts.
        assert!(matches!(
            DataDirLock::acquire(&dir),
            Err(NodeError::Locked { .. })
        ));
        drop(held);
        assert!(DataDirLock::is_held(&dir).is_none());
    }
}

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub node_id: String,
    pub previous: Option<PathBuf>,
    pub documents: i64,
}

/// Restores a database copy made by `backup` into a data directory that holds (or is given) the node's
/// key. The copy is checked (integrity, schema, and that it belongs to this key) before anything is
/// replaced; an existing database is kept beside it. The restored database gets a new per-database
/// salt, so the node writes with a new automerge actor id and never collides with the live copy the
/// backup came from; its sessions are cleared, since they belonged to the old machine.
pub async fn restore(
    dir: &DataDir,
    from: &Path,
    key_from: Option<&Path>,
    store_config: &StoreConfig,
) -> Result<RestoreReport, NodeError> {
    if !dir.root().exists() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir.root())
            .map_err(io(dir.root()))?;
    }
    let _lock = DataDirLock::acquire(dir)?;
    if let Some(key_file) = key_from {
        let given = NodeKey::load_file(key_file)?;
        if dir.key().exists() {
            let present = NodeKey::load_file(&dir.key())?;
            if present.public_key() != given.public_key() {
                return Err(NodeError::KeyChanged {
                    key_path: dir.key(),
                    found: given.public_key().to_string(),
                    expected: present.public_key().to_string(),
                });
            }
        } else {
            let bytes = fs::read(key_file).map_err(io(key_file))?;
            NodeKey::write_new_file(&dir.key(), &bytes)?;
        }
    }
    let key = NodeKey::load_file(&dir.key())?;

    // Check the copy before touching anything.
    let source = store::open_read_only(from, store_config)?;
    let verdict: String = source
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(StoreError::from)?;
    if verdict != "ok" {
        return Err(NodeError::Corrupt(from.to_path_buf(), verdict));
    }
    let info = read_identity(&source)?;
    if info.public_key != key.public_key().to_string() {
        return Err(NodeError::KeyChanged {
            key_path: dir.key(),
            found: key.public_key().to_string(),
            expected: info.public_key,
        });
    }

    let target = dir.db();
    let staged = dir.root().join("township.db.restoring");
    let _ = fs::remove_file(&staged);
    {
        let mut dest = Connection::open(&staged).map_err(StoreError::from)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut dest).map_err(StoreError::from)?;
        backup
            .run_to_completion(512, std::time::Duration::ZERO, None)
            .map_err(StoreError::from)?;
    }
    drop(source);
    let previous = if target.exists() {
        let aside = dir.root().join(format!(
            "township.db.before-restore-{}",
            crate::clock::system_now_ms()
        ));
        fs::rename(&target, &aside).map_err(io(&target))?;
        for suffix in ["-wal", "-shm"] {
            let mut name = target.as_os_str().to_owned();
            name.push(suffix);
            let _ = fs::remove_file(PathBuf::from(name));
        }
        Some(aside)
    } else {
        None
    };
    fs::rename(&staged, &target).map_err(io(&target))?;

    let store = Store::open(&target, store_config)?;
    let key = std::sync::Arc::new(key);
    let from_shown = from.display().to_string();
    let node_id = info.node_id.clone();
    let result = store
        .write(move |conn| {
            let mut salt = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
                .map_err(|_| NodeError::Random)?;
            conn.execute(
                "UPDATE node_meta SET value = ?1 WHERE key = 'db_salt'",
                [hex::encode(salt)],
            )?;
            conn.execute("DELETE FROM sessions", [])?;
            let documents: i64 =
                conn.query_row("SELECT count(*) FROM documents", [], |r| r.get(0))?;
            crate::audit::append(
                conn,
                &key,
                crate::clock::system_now_ms(),
                crate::audit::Event::new("cli", "node.restore", &node_id)
                    .detail(serde_json::json!({ "from": from_shown, "documents": documents })),
            )?;
            Ok::<_, NodeError>(documents)
        })
        .await;
    store.close().await;
    Ok(RestoreReport {
        node_id: info.node_id,
        previous,
        documents: result?,
    })
}
