//! Configuration: one typed struct, layered as built-in defaults, then the TOML file, then `TOWNSHIP_`
//! environment variables, then CLI flags (applied by the caller).
//!
//! Unknown keys are errors, not warnings: a misspelt key in a flood season means a setting that
//! silently does not apply. Environment variables name a key by its path with `__` between the
//! section and the key (`TOWNSHIP_HTTP__LISTEN` is `http.listen`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "TOWNSHIP_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "environment variable {var} is not a config key: config variables look like TOWNSHIP_<SECTION>__<KEY>, for example TOWNSHIP_HTTP__LISTEN"
    )]
    EnvName { var: String },
    #[error("config key `{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// A value that must never reach a log line or a Debug print.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub auth: AuthConfig,
    pub incidents: IncidentsConfig,
    pub sync: SyncConfig,
    pub cap: CapConfig,
    /// The loudspeaker outputs and zones this node drives, and how it speaks.
    pub pa: crate::pa::config::PaConfig,
    /// Names (and optionally shapes) of area codes, for people and for CAP `area` blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub areas: Vec<AreaConfig>,
    /// The base map and start view of the UI's maps.
    pub map: crate::map::MapConfig,
    /// The departments incidents are dispatched to. Replaces the built-in list when given.
    pub departments: Vec<Department>,
    /// Incident categories with their deadlines. Replaces the built-in list when given.
    pub categories: Vec<Category>,
    pub mqtt: crate::telemetry::config::MqttConfig,
    pub hj212: crate::telemetry::config::Hj212Config,
    pub telemetry: crate::telemetry::config::TelemetryConfig,
    pub simulator: crate::telemetry::config::SimulatorConfig,
    /// The sensors this node reads.
    pub devices: Vec<crate::telemetry::config::DeviceConfig>,
    /// The county's emergency-broadcast platform (应急广播), this node as its adaptor.
    pub ebd: crate::ebd::EbdConfig,
}

/// CAP 1.2 messages this node emits for its warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapConfig {
    /// The `sender` of every CAP message; `{node_id}@township-node` when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Atom or RSS feeds of CAP alerts this node polls (a provincial or national warning feed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<CapFeed>,
}

/// One feed of CAP alerts (`[[cap.feeds]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapFeed {
    /// The feed's address (`http://`); entries link to the alerts (Atom `link`, RSS `link`).
    pub url: String,
    /// How often the feed is read.
    #[serde(default = "default_feed_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A PEM public key or certificate (P-256 or RSA), inline or as a file path. When given, every
    /// alert from this feed must carry an enveloped XML Signature by this key, or it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_key: Option<String>,
}

fn default_feed_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// The upstream node's URL (a township or the county), for example http://10.1.0.2:8080. Overrides
    /// the one given to `init --upstream`. Not set on the county.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_url: Option<String>,
    /// The upstream's public key, pinned: a node presenting any other key is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_key: Option<String>,
    /// Most bytes per second this node sends on each sync connection (0: no cap), for slow links
    /// that other traffic must share.
    pub bandwidth_limit: u64,
    /// A sync connection that carries nothing for this long (not even a keepalive) is stalled: it is
    /// closed and opened again.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// The longest wait between attempts to reach the upstream. Failures back off towards it; a
    /// refusal only a person can fix (not enrolled, revoked, wrong key, other protocol version)
    /// waits this long at once.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Raw readings this recent go up the tree after the minute aggregates (which always go), so the
    /// upstream sees live values and can chart them in full; 0 sends aggregates only.
    #[serde(with = "humantime_serde")]
    pub raw_readings_window: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            upstream_url: None,
            upstream_key: None,
            bandwidth_limit: 0,
            stall_timeout: Duration::from_secs(30),
            retry_max: Duration::from_secs(60),
            raw_readings_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// One area code with its name (`[[areas]]`), and the shape CAP messages give it, in CAP's own
/// notation (WGS 84): `polygon` as at least four "lat,lon" pairs separated by spaces, the first and
/// last the same; `circle` as "lat,lon radius_km".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaConfig {
    pub code: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circle: Option<String>,
}

fn lat_lon(pair: &str) -> Option<(f64, f64)> {
    let (lat, lon) = pair.split_once(',')?;
    let (lat, lon): (f64, f64) = (lat.trim().parse().ok()?, lon.trim().parse().ok()?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

impl AreaConfig {
    /// Checks the entry; the error names the key and says what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.code.parse::<township_sync::AreaCode>().is_err() {
            return Err((
                "code",
                format!("`{}` is not an area code (6, 9 or 12 digits)", self.code),
            ));
        }
        let n = self.name.trim().chars().count();
        if n == 0 || n > 100 {
            return Err(("name", "1 to 100 characters".into()));
        }
        if let Some(p) = &self.polygon {
            let points: Option<Vec<(f64, f64)>> = p.split_whitespace().map(lat_lon).collect();
            let ok = points.is_some_and(|pts| {
                pts.len() >= 4 && pts.len() <= 1000 && pts.first() == pts.last()
            });
            if !ok {
                return Err((
                    "polygon",
                    "at least four \"lat,lon\" pairs separated by spaces, the first and last the same".into(),
                ));
            }
        }
        if let Some(c) = &self.circle {
            let mut parts = c.split_whitespace();
            let ok = match (
                parts.next().and_then(lat_lon),
                parts.next().and_then(|r| r.parse::<f64>().ok()),
                parts.next(),
            ) {
                (Some(_), Some(r), None) => r > 0.0 && r < 20_000.0,
                _ => false,
            };
            if !ok {
                return Err((
                    "circle",
                    "\"lat,lon radius_km\", for example \"28.89,119.81 5\"".into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Department {
    /// Stable id used in records and by `user add --department`: lowercase letters and `_`.
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub name: String,
    /// A reported incident not accepted within this is overdue.
    #[serde(with = "humantime_serde")]
    pub accept_within: Duration,
    /// A dispatched incident not resolved within this (unless the dispatcher set a deadline) is overdue.
    #[serde(with = "humantime_serde")]
    pub resolve_within: Duration,
    /// Overdue incidents of this category are escalated to the county automatically.
    #[serde(default)]
    pub auto_escalate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentsConfig {
    /// Largest photo or video accepted as an attachment.
    pub max_attachment_bytes: usize,
    /// Bytes of attachments one person may upload per day (Beijing time); past it uploads are
    /// refused with 413 naming the quota. 0 turns the quota off.
    pub upload_quota_per_day: u64,
    /// Attachment files that no record refers to (left by an upload whose record write failed or
    /// was cut off) are removed after this long; `doctor` reports them meanwhile.
    #[serde(with = "humantime_serde")]
    pub orphan_blob_grace: Duration,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            max_attachment_bytes: 20 * 1024 * 1024,
            upload_quota_per_day: 300 * 1024 * 1024,
            orphan_blob_grace: Duration::from_secs(24 * 3600),
        }
    }
}

fn department(id: &str, name: &str) -> Department {
    Department {
        id: id.into(),
        name: name.into(),
    }
}

pub fn default_departments() -> Vec<Department> {
    vec![
        department("emergency", "应急管理"),
        department("natural_resources", "自然资源"),
        department("housing", "住房建设"),
        department("water", "水利"),
        department("environment", "生态环境"),
        department("market", "市场监管"),
        department("police", "公安"),
        department("enforcement", "综合执法"),
    ]
}

fn category(name: &str, accept_hours: u64, resolve_hours: u64, auto_escalate: bool) -> Category {
    Category {
        name: name.into(),
        accept_within: Duration::from_secs(accept_hours * 3600),
        resolve_within: Duration::from_secs(resolve_hours * 3600),
        auto_escalate,
    }
}

/// The built-in categories: urgent safety matters get short deadlines and escalate on their own.
pub fn default_categories() -> Vec<Category> {
    vec![
        category("安全隐患", 2, 72, true),
        category("矛盾纠纷", 24, 168, false),
        category("环境卫生", 24, 120, false),
        category("消防安全", 1, 24, true),
        category("防汛防台", 1, 24, true),
        category("违章建筑", 24, 240, false),
        category("道路交通", 8, 72, false),
        category("食品安全", 4, 72, true),
        category("民生服务", 24, 168, false),
        category("其他", 24, 168, false),
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the web UI and API listen. Grid workers' phones reach the hub over the LAN.
    pub listen: SocketAddr,
    /// Largest request body accepted by default; routes that take uploads set their own limit.
    pub max_body_bytes: usize,
    /// A request that takes longer than this is answered 408 so a stuck client cannot pin a worker.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// When set, `/metrics` answers anyone presenting `Authorization: Bearer <token>` (and only
    /// them). When not set, it answers only clients on this machine (loopback), unless
    /// `metrics_public` says otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<Secret>,
    /// Lets `/metrics` answer anyone without a token (a monitoring host on a trusted network).
    pub metrics_public: bool,
    /// The host names browsers use to reach this node (also the names its LAN certificate will
    /// carry). Requests for any other name are refused with 421, so a web page elsewhere cannot use
    /// DNS rebinding to talk to the node through a phone's browser. IP addresses, `localhost` and
    /// this machine's own host name (and `<name>.local`) are always accepted.
    pub tls_names: Vec<String>,
    /// Where HTTPS listens, with the node's own LAN certificate (see `township-node tls show`).
    /// Phones need it for geolocation, the camera and the offline app; plain HTTP on `listen` then
    /// redirects LAN browsers here. `"off"` serves plain HTTP only.
    #[serde(with = "listen_or_off")]
    pub https_listen: Option<SocketAddr>,
}

/// `https_listen = "0.0.0.0:8443"` or `"off"`.
mod listen_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "https_listen must be an address such as \"0.0.0.0:8443\" or \"off\", not {text:?}"
            ))
        })
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(8),
            metrics_token: None,
            metrics_public: false,
            tls_names: Vec::new(),
            https_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` overrides it when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Read-only connections in the pool that serves queries.
    pub read_connections: usize,
    /// How long a connection waits on a lock held by another process (backup, doctor) before failing.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Most write jobs committed together in one transaction (group commit).
    pub write_batch_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            write_batch_max: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A session unused for this long ends.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// A session ends this long after login, used or not.
    #[serde(with = "humantime_serde")]
    pub session_max: Duration,
    /// PBKDF2-HMAC-SHA256 iterations for new password hashes; at least 600000.
    pub password_iterations: u32,
    /// Failed logins for one account from one client (its address, or its device cookie) within
    /// `login_window` before that client gets 429 for that account. Attempts count from the moment
    /// they are let through, so attempts sent at once are all counted.
    pub login_failures_per_account: usize,
    /// Failed logins from one client address, across all accounts, within `login_window` before
    /// it gets 429 (a browser with the account's device cookie is not held by this).
    pub login_failures_per_address: usize,
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Most password evaluations for one account per hour from clients without its device cookie,
    /// whatever the outcome.
    pub login_evaluations_per_hour: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 60 * 60),
            password_iterations: 600_000,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window: Duration::from_secs(15 * 60),
            login_evaluations_per_hour: 100,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: HttpConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            incidents: IncidentsConfig::default(),
            sync: SyncConfig::default(),
            cap: CapConfig::default(),
            pa: Default::default(),
            areas: Vec::new(),
            map: Default::default(),
            departments: default_departments(),
            categories: default_categories(),
            mqtt: Default::default(),
            hj212: Default::default(),
            telemetry: Default::default(),
            simulator: Default::default(),
            devices: Vec::new(),
            ebd: Default::default(),
        }
    }
}

impl Config {
    pub fn department(&self, id: &str) -> Option<&Department> {
        self.departments.iter().find(|d| d.id == id)
    }

    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }

    /// Checks rules that types alone cannot express.
    fn validate(self) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            origin: String::new(),
            message: message.into(),
        };
        if self.auth.password_iterations < 600_000 {
            return Err(invalid(
                "auth.password_iterations",
                "must be at least 600000",
            ));
        }
        if self.auth.session_idle.is_zero() || self.auth.session_max < self.auth.session_idle {
            return Err(invalid(
                "auth.session_max",
                "must be at least auth.session_idle, which must be above zero",
            ));
        }
        if self.auth.login_failures_per_account == 0 || self.auth.login_failures_per_address == 0 {
            return Err(invalid(
                "auth.login_failures_per_account",
                "login failure limits must be at least 1",
            ));
        }
        let t = &self.telemetry;
        if t.batch_max == 0 || t.stale_after < 1.0 || !(0.0..=1.0).contains(&t.faulty_error_rate) {
            return Err(invalid(
                "telemetry.batch_max",
                "batch_max must be at least 1, stale_after at least 1, faulty_error_rate within 0..1",
            ));
        }
        if !(self.simulator.speedup > 0.0 && self.simulator.speedup <= 10_000.0) {
            return Err(invalid(
                "simulator.speedup",
                "must be above 0 and at most 10000",
            ));
        }
        crate::telemetry::config::validate_devices(&self.devices, &self.mqtt, &self.hj212)
            .map_err(|(key, message)| invalid(&key, &message))?;
        let sensor_names: Vec<String> = self
            .devices
            .iter()
            .flat_map(|d| {
                let username = match &d.link {
                    crate::telemetry::config::DeviceLink::Mqtt(m) => m.username.clone(),
                    _ => None,
                };
                [Some(d.id.clone()), username]
            })
            .flatten()
            .collect();
        crate::pa::config::validate(&self.pa, &sensor_names)
            .map_err(|(key, message)| invalid(&key, &message))?;
        if self.mqtt.listen.is_none()
            && let Some(i) = self
                .pa
                .outputs
                .iter()
                .position(|o| matches!(o, crate::pa::config::Output::MqttSpeaker(_)))
        {
            return Err(invalid(
                &format!("pa.outputs[{i}].kind"),
                "an mqtt_speaker signs in on the embedded broker: set mqtt.listen",
            ));
        }
        let mut codes = std::collections::HashSet::new();
        for (i, area) in self.areas.iter().enumerate() {
            area.check()
                .map_err(|(key, message)| invalid(&format!("areas[{i}].{key}"), &message))?;
            if !codes.insert(area.code.as_str()) {
                return Err(invalid(&format!("areas[{i}].code"), "listed twice"));
            }
        }
        self.map
            .check()
            .map_err(|(key, message)| invalid(&format!("map.{key}"), &message))?;
        for (i, feed) in self.cap.feeds.iter().enumerate() {
            crate::cap::feeds::check(feed)
                .map_err(|(key, message)| invalid(&format!("cap.feeds[{i}].{key}"), &message))?;
        }
        self.ebd
            .check()
            .map_err(|(key, message)| invalid(key, &message))?;
        Ok(self)
    }

    /// Loads defaults, then `file` if given, then `TOWNSHIP_` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut merged =
            toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Invalid {
                key: "(defaults)".into(),
                origin: String::new(),
                message: e.to_string(),
            })?;

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            // Parsing straight into the struct first gives errors with line, column and key name.
            toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            merge(&mut merged, table);
        }

        let mut env_keys = Vec::new();
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::EnvName { var });
            }
            insert_path(&mut merged, &path, env_value(&raw));
            env_keys.push((path.join("."), var));
        }

        let value = toml::Value::Table(merged);
        let config = serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
            let key = e.path().to_string();
            let origin = env_keys
                .iter()
                .find(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(key.as_str()))
                .map(|(_, var)| format!(" (from {var})"))
                .unwrap_or_default();
            ConfigError::Invalid {
                key,
                origin,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()
    }

    /// Loads with the process environment.
    pub fn load_from_process(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(file, std::env::vars())
    }
}

/// Environment values are TOML values when they parse as one (numbers, booleans, quoted strings,
/// arrays) and plain strings otherwise, so `TOWNSHIP_HTTP__LISTEN=0.0.0.0:80` needs no quoting.
fn env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = match path.split_last() {
        Some(split) => split,
        None => return,
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return,
        };
    }
    current.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_entries_are_checked_and_name_the_key() {
        let area = |code: &str, polygon: Option<&str>, circle: Option<&str>| AreaConfig {
            code: code.into(),
            name: "王宅村".into(),
            polygon: polygon.map(String::from),
            circle: circle.map(String::from),
        };
        assert!(
            area(
                "330723001001",
                Some("1,2 3,4 5,6 1,2"),
                Some("28.9,119.8 5")
            )
            .check()
            .is_ok()
        );
        for (bad, key) in [
            (area("33072", None, None), "code"),
            (area("330723001001", Some("1,2 3,4 1,2"), None), "polygon"),
            (
                area("330723001001", Some("1,2 3,4 5,6 7,8"), None),
                "polygon",
            ),
            (
                area("330723001001", Some("91,2 3,4 5,6 91,2"), None),
                "polygon",
            ),
            (area("330723001001", None, Some("28.9,119.8")), "circle"),
            (area("330723001001", None, Some("28.9,119.8 -1")), "circle"),
            (area("330723001001", None, Some("28.9,119.8 1 2")), "circle"),
        ] {
            assert_eq!(bad.check().unwrap_err().0, key, "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[areas]]\ncode = \"330723001001\"\nname = \"a\"\n[[areas]]\ncode = \"330723001001\"\nname = \"b\"\n",
        )
        .unwrap();
        let e = Config::load(Some(&file), std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("areas[1].code"), "{e}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_sources() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_then_env_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[http]\nlisten = \"127.0.0.1:9000\"\nrequest_timeout = \"5s\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("TOWNSHIP_HTTP__LISTEN", "127.0.0.1:9100"),
                ("TOWNSHIP_STORE__READ_CONNECTIONS", "2"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9100);
        assert_eq!(config.http.request_timeout, Duration::from_secs(5));
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.store.read_connections, 2);
        assert_eq!(config.store.write_batch_max, 256);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\nlisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        std::fs::write(&path, "[htttp]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("htttp"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let err = Config::load(None, env(&[("TOWNSHIP_HTTP__LISEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lisen") && err.contains("TOWNSHIP_HTTP__LISEN"),
            "{err}"
        );
        let err = Config::load(None, env(&[("TOWNSHIP_LISTEN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TOWNSHIP_LISTEN"), "{err}");
    }

    #[test]
    fn bad_value_names_key_and_origin() {
        let err = Config::load(None, env(&[("TOWNSHIP_HTTP__LISTEN", "not-an-address")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut config = Config::default();
        config.http.metrics_token = Some(Secret::new("hunter2-token"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn example_config_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/township-node.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // Every key, uncommented, must parse and equal the defaults.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .map_or(l, |r| r)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        let mut expected = Config::default();
        expected.http.metrics_token = parsed.http.metrics_token.clone();
        expected.sync = parsed.sync.clone();
        expected.cap = parsed.cap.clone();
        expected.mqtt = parsed.mqtt.clone();
        expected.hj212.listen = parsed.hj212.listen;
        expected.simulator.storm_after = parsed.simulator.storm_after;
        // The example shows a base map and a start view, which are off by default.
        expected.map.mbtiles = parsed.map.mbtiles.clone();
        expected.map.tile_url = parsed.map.tile_url.clone();
        expected.map.center = parsed.map.center;
        assert_eq!(parsed, expected, "the example must document the defaults");
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in defaults {
            let keys = keys.as_table().cloned().unwrap_or_default();
            for key in keys.keys() {
                assert!(
                    text.contains(&format!("{key} = ")),
                    "example config lacks {section}.{key}"
                );
            }
        }
    }
}
