//! The sensor-related configuration sections: `[mqtt]`, `[hj212]`, `[telemetry]`, `[simulator]` and
//! `[[devices]]`, with the checks types alone cannot express (unique ids, the fields each driver
//! needs, no wildcard identities, no example passwords).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use township_drivers::registers::{DataType, WordOrder};

use crate::config::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The embedded broker's address; leave out to run none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// An external broker the node subscribes to instead of (or beside) the embedded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBroker>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalBroker {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: bool,
    /// PEM file with the CA that signed the broker's certificate; the system roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The MQTT client id; a persistent session keeps QoS 1 messages while the node is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn default_mqtt_port() -> u16 {
    1883
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Hj212Config {
    /// TCP listener for HJ 212 stations; leave out to run none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Factor codes beyond the built-in table, e.g. `w01018 = { name = "化学需氧量", unit = "mg/L" }`.
    pub factors: BTreeMap<String, FactorName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactorName {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// How long raw readings are kept.
    #[serde(with = "humantime_serde")]
    pub raw_retention: Duration,
    /// How long 1-minute aggregates are kept.
    #[serde(with = "humantime_serde")]
    pub minute_retention: Duration,
    /// How long 1-hour aggregates are kept.
    #[serde(with = "humantime_serde")]
    pub hour_retention: Duration,
    /// When the database grows past this many MiB, the oldest raw readings go first (aggregates stay).
    pub disk_budget_mb: u64,
    /// Largest number of readings committed in one transaction.
    pub batch_max: usize,
    /// Longest a reading waits for others to share its commit. At 0 the writer commits as soon as the
    /// previous commit is done, and whatever arrived meanwhile shares the next one (group commit).
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// A device is stale after this many of its intervals without a reading.
    pub stale_after: f64,
    /// A device whose recent exchanges fail at least this often is faulty.
    pub faulty_error_rate: f64,
    /// The interval assumed for devices that do not set one (MQTT and HJ 212 stations report on
    /// their own schedule).
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            raw_retention: Duration::from_secs(30 * 86_400),
            minute_retention: Duration::from_secs(180 * 86_400),
            hour_retention: Duration::from_secs(3650 * 86_400),
            disk_budget_mb: 4096,
            batch_max: 5000,
            batch_delay: Duration::ZERO,
            stale_after: 3.0,
            faulty_error_rate: 0.5,
            default_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Simulated seconds per real second, so a storm can play out in minutes for a demonstration.
    pub speedup: f64,
    pub seed: u64,
    /// A scripted storm this long after start; leave out for none.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub storm_after: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub storm_for: Duration,
    /// Peak rain intensity of the scripted storm in mm/h.
    pub storm_peak: f64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            speedup: 1.0,
            seed: 1,
            storm_after: None,
            storm_for: Duration::from_secs(3 * 3600),
            storm_peak: 40.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    ModbusRtu,
    Hj212,
    Mqtt,
    Simulator,
}

impl DriverKind {
    pub fn label(self) -> &'static str {
        match self {
            DriverKind::ModbusRtu => "modbus_rtu",
            DriverKind::Hj212 => "hj212",
            DriverKind::Mqtt => "mqtt",
            DriverKind::Simulator => "simulator",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    #[default]
    Holding,
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    #[default]
    Json,
    Senml,
}

/// One measured quantity of a device. For Modbus it also says where the value lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub metric: String,
    /// A display name; the built-in factor table names HJ 212 codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<u16>,
    #[serde(default)]
    pub kind: RegisterKind,
    #[serde(rename = "type", default = "default_type")]
    pub data_type: DataType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

fn default_type() -> DataType {
    DataType::U16
}

fn one() -> f64 {
    1.0
}

/// One device: what every device has (id, name, area, interval, points) and how it is reached,
/// which differs per driver ([`DeviceLink`]). In TOML it is one flat table whose `driver` key picks
/// the link's fields; a key the chosen driver does not use is refused by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "DeviceToml", into = "DeviceToml")]
pub struct DeviceConfig {
    /// Also the MQTT topic segment and the API id.
    pub id: String,
    pub name: String,
    pub area: String,
    /// How often the device is polled (Modbus, simulator) or is expected to report (MQTT, HJ 212).
    pub interval: Option<Duration>,
    pub points: Vec<PointConfig>,
    pub link: DeviceLink,
}

/// How a device is reached, per driver.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceLink {
    ModbusRtu(ModbusLink),
    Hj212(Hj212Link),
    Mqtt(MqttLink),
    Simulator(SimulatorLink),
}

/// A Modbus RTU slave on an RS-485 line.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusLink {
    pub port: String,
    pub slave: u8,
    pub baud: Option<u32>,
    pub parity: Option<Parity>,
    /// How long to wait for an answer.
    pub timeout: Option<Duration>,
}

/// An HJ 212 station: over TCP (to `hj212.listen`) or on a serial port.
#[derive(Debug, Clone, PartialEq)]
pub struct Hj212Link {
    pub mn: String,
    pub port: Option<String>,
    pub baud: Option<u32>,
    pub parity: Option<Parity>,
    /// The station's `PW`, checked when given.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

/// A device publishing over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttLink {
    /// Its MQTT user name; the device id when not given.
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub format: Option<PayloadFormat>,
}

/// A simulated station: rain, river or air, and which stations share rain.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorLink {
    pub profile: String,
    pub catchment: Option<String>,
}

impl DeviceConfig {
    pub fn driver(&self) -> DriverKind {
        match &self.link {
            DeviceLink::ModbusRtu(_) => DriverKind::ModbusRtu,
            DeviceLink::Hj212(_) => DriverKind::Hj212,
            DeviceLink::Mqtt(_) => DriverKind::Mqtt,
            DeviceLink::Simulator(_) => DriverKind::Simulator,
        }
    }

    /// The serial port the device is on, if any, with its line settings.
    pub fn serial_line(&self) -> Option<(&str, Option<u32>, Option<Parity>)> {
        match &self.link {
            DeviceLink::ModbusRtu(m) => Some((m.port.as_str(), m.baud, m.parity)),
            DeviceLink::Hj212(h) => h.port.as_deref().map(|p| (p, h.baud, h.parity)),
            DeviceLink::Mqtt(_) | DeviceLink::Simulator(_) => None,
        }
    }

    /// The device's password (MQTT sign-in, or an HJ 212 station's `PW`), read from `password_file`
    /// when that is how it is given.
    pub fn password(&self) -> Result<Option<Secret>, String> {
        let (password, file) = match &self.link {
            DeviceLink::Hj212(h) => (&h.password, &h.password_file),
            DeviceLink::Mqtt(m) => (&m.password, &m.password_file),
            DeviceLink::ModbusRtu(_) | DeviceLink::Simulator(_) => return Ok(None),
        };
        if let Some(p) = password {
            return Ok(Some(p.clone()));
        }
        match file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| Some(Secret::new(s.trim_end_matches(['\r', '\n']))))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            None => Ok(None),
        }
    }
}

/// The TOML shape of a device: one table per driver, each naming every key it accepts, so a key
/// that belongs to another driver (or to none) is an error that names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "snake_case", deny_unknown_fields)]
enum DeviceToml {
    ModbusRtu {
        id: String,
        name: String,
        area: String,
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        interval: Option<Duration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        points: Vec<PointConfig>,
        port: String,
        slave: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        baud: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parity: Option<Parity>,
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        timeout: Option<Duration>,
    },
    Hj212 {
        id: String,
        name: String,
        area: String,
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        interval: Option<Duration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        points: Vec<PointConfig>,
        mn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        baud: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parity: Option<Parity>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
    },
    Mqtt {
        id: String,
        name: String,
        area: String,
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        interval: Option<Duration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        points: Vec<PointConfig>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<PayloadFormat>,
    },
    Simulator {
        id: String,
        name: String,
        area: String,
        #[serde(
            with = "humantime_serde",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        interval: Option<Duration>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        points: Vec<PointConfig>,
        profile: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catchment: Option<String>,
    },
}

impl From<DeviceToml> for DeviceConfig {
    fn from(t: DeviceToml) -> DeviceConfig {
        let device = |id, name, area, interval, points, link| DeviceConfig {
            id,
            name,
            area,
            interval,
            points,
            link,
        };
        match t {
            DeviceToml::ModbusRtu {
                id,
                name,
                area,
                interval,
                points,
                port,
                slave,
                baud,
                parity,
                timeout,
            } => device(
                id,
                name,
                area,
                interval,
                points,
                DeviceLink::ModbusRtu(ModbusLink {
                    port,
                    slave,
                    baud,
                    parity,
                    timeout,
                }),
            ),
            DeviceToml::Hj212 {
                id,
                name,
                area,
                interval,
                points,
                mn,
                port,
                baud,
                parity,
                password,
                password_file,
            } => device(
                id,
                name,
                area,
                interval,
                points,
                DeviceLink::Hj212(Hj212Link {
                    mn,
                    port,
                    baud,
                    parity,
                    password,
                    password_file,
                }),
            ),
            DeviceToml::Mqtt {
                id,
                name,
                area,
                interval,
                points,
                username,
                password,
                password_file,
                format,
            } => device(
                id,
                name,
                area,
                interval,
                points,
                DeviceLink::Mqtt(MqttLink {
                    username,
                    password,
                    password_file,
                    format,
                }),
            ),
            DeviceToml::Simulator {
                id,
                name,
                area,
                interval,
                points,
                profile,
                catchment,
            } => device(
                id,
                name,
                area,
                interval,
                points,
                DeviceLink::Simulator(SimulatorLink { profile, catchment }),
            ),
        }
    }
}

impl From<DeviceConfig> for DeviceToml {
    fn from(d: DeviceConfig) -> DeviceToml {
        let DeviceConfig {
            id,
            name,
            area,
            interval,
            points,
            link,
        } = d;
        match link {
            DeviceLink::ModbusRtu(ModbusLink {
                port,
                slave,
                baud,
                parity,
                timeout,
            }) => DeviceToml::ModbusRtu {
                id,
                name,
                area,
                interval,
                points,
                port,
                slave,
                baud,
                parity,
                timeout,
            },
            DeviceLink::Hj212(Hj212Link {
                mn,
                port,
                baud,
                parity,
                password,
                password_file,
            }) => DeviceToml::Hj212 {
                id,
                name,
                area,
                interval,
                points,
                mn,
                port,
                baud,
                parity,
                password,
                password_file,
            },
            DeviceLink::Mqtt(MqttLink {
                username,
                password,
                password_file,
                format,
            }) => DeviceToml::Mqtt {
                id,
                name,
                area,
                interval,
                points,
                username,
                password,
                password_file,
                format,
            },
            DeviceLink::Simulator(SimulatorLink { profile, catchment }) => DeviceToml::Simulator {
                id,
                name,
                area,
                interval,
                points,
                profile,
                catchment,
            },
        }
    }
}

/// A device id is a topic segment and a URL segment: letters, digits, `-`, `_` and `.` only.
pub fn device_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Passwords printed in documentation, refused so a copied example never goes live.
const EXAMPLE_PASSWORDS: &[&str] = &["change-me", "changeme", "password", "123456"];

/// Checks every device; the error names the key (`devices[2].slave`) and what to do.
pub fn validate_devices(
    devices: &[DeviceConfig],
    mqtt: &MqttConfig,
    hj212: &Hj212Config,
) -> Result<(), (String, String)> {
    let mut ids = HashSet::new();
    let mut usernames = HashSet::new();
    let mut mns = HashSet::new();
    // Devices on one serial line must agree on how the line is driven.
    let mut lines: std::collections::HashMap<&str, (DriverKind, Option<u32>, Option<Parity>)> =
        std::collections::HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        let key = |field: &str| format!("devices[{i}].{field}");
        if !device_id_ok(&d.id) {
            return Err((
                key("id"),
                "must be 1 to 64 letters, digits, '-', '_' or '.' (it is a topic and URL segment)"
                    .into(),
            ));
        }
        if !ids.insert(d.id.clone()) {
            return Err((key("id"), format!("`{}` is used by two devices", d.id)));
        }
        if d.area.parse::<township_sync::AreaCode>().is_err() {
            return Err((key("area"), format!("`{}` is not an area code", d.area)));
        }
        if d.interval.is_some_and(|i| i < Duration::from_millis(100)) {
            return Err((key("interval"), "must be at least 100ms".into()));
        }
        let mut metrics = HashSet::new();
        for (j, p) in d.points.iter().enumerate() {
            if !township_drivers::payload::metric_name_ok(&p.metric) {
                return Err((
                    format!("devices[{i}].points[{j}].metric"),
                    "must be 1 to 64 letters, digits, '_', '-' or '.'".into(),
                ));
            }
            if !metrics.insert(p.metric.clone()) {
                return Err((
                    format!("devices[{i}].points[{j}].metric"),
                    format!("`{}` appears twice", p.metric),
                ));
            }
            if !p.scale.is_finite() || !p.offset.is_finite() {
                return Err((
                    format!("devices[{i}].points[{j}].scale"),
                    "scale and offset must be finite".into(),
                ));
            }
        }
        if let Some((port, baud, parity)) = d.serial_line() {
            let line = (d.driver(), baud, parity);
            let first = *lines.entry(port).or_insert(line);
            if first.0 != line.0 {
                return Err((
                    key("port"),
                    format!(
                        "{port} is used by a modbus_rtu and an hj212 device; one line speaks one protocol"
                    ),
                ));
            }
            if first.1.unwrap_or(9600) != line.1.unwrap_or(9600)
                || first.2.unwrap_or_default() != line.2.unwrap_or_default()
            {
                return Err((
                    key("baud"),
                    format!("devices on {port} must share one baud rate and parity"),
                ));
            }
        }
        match &d.link {
            DeviceLink::ModbusRtu(m) => {
                if !(1..=247).contains(&m.slave) {
                    return Err((
                        key("slave"),
                        "a modbus_rtu device needs a slave id from 1 to 247".into(),
                    ));
                }
                if d.points.is_empty() {
                    return Err((
                        key("points"),
                        "a modbus_rtu device needs at least one point".into(),
                    ));
                }
                for (j, p) in d.points.iter().enumerate() {
                    if p.register.is_none() {
                        return Err((
                            format!("devices[{i}].points[{j}].register"),
                            "every modbus_rtu point needs a register".into(),
                        ));
                    }
                }
            }
            DeviceLink::Mqtt(m) => {
                let username = m.username.clone().unwrap_or_else(|| d.id.clone());
                if username.is_empty() || username.contains(['#', '+', '/']) {
                    return Err((
                        key("username"),
                        "must not be empty or contain '#', '+' or '/'".into(),
                    ));
                }
                if !usernames.insert(username.clone()) {
                    return Err((
                        key("username"),
                        format!("`{username}` is used by two devices"),
                    ));
                }
                let password = d.password().map_err(|e| (key("password_file"), e))?;
                // The embedded broker checks device passwords; an external broker does its own.
                match password {
                    None if mqtt.listen.is_some() => {
                        return Err((
                            key("password"),
                            "an mqtt device needs its own password or password_file for the embedded broker (there is no default)".into(),
                        ));
                    }
                    Some(p) if p.expose().len() < 8 || EXAMPLE_PASSWORDS.contains(&p.expose()) => {
                        return Err((
                            key("password"),
                            "needs at least 8 characters and must not be the example's".into(),
                        ));
                    }
                    _ => {}
                }
                if mqtt.listen.is_none() && mqtt.external.is_none() {
                    return Err((
                        key("driver"),
                        "an mqtt device needs mqtt.listen (the embedded broker) or mqtt.external"
                            .into(),
                    ));
                }
            }
            DeviceLink::Hj212(h) => {
                if h.port.is_none() && hj212.listen.is_none() {
                    return Err((
                        key("port"),
                        "an hj212 station needs a serial port or hj212.listen (the TCP listener)"
                            .into(),
                    ));
                }
                let mn = &h.mn;
                if mn.is_empty() || mn.len() > 24 || !mn.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err((key("mn"), "an MN is up to 24 letters and digits".into()));
                }
                if !mns.insert(mn.clone()) {
                    return Err((key("mn"), format!("`{mn}` is used by two devices")));
                }
                d.password().map_err(|e| (key("password_file"), e))?;
            }
            DeviceLink::Simulator(sim) => {
                if township_drivers::simulator::Profile::parse(&sim.profile).is_none() {
                    return Err((
                        key("profile"),
                        "a simulator device needs profile = \"rain\", \"river\" or \"air\"".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(devices: &str, mqtt_listen: bool) -> Result<(), (String, String)> {
        #[derive(Deserialize)]
        struct File {
            devices: Vec<DeviceConfig>,
        }
        let file: File = toml::from_str(devices).unwrap();
        let mqtt = MqttConfig {
            listen: mqtt_listen.then(|| "127.0.0.1:1883".parse().unwrap()),
            external: None,
        };
        let hj212 = Hj212Config {
            listen: Some("127.0.0.1:9212".parse().unwrap()),
            factors: BTreeMap::new(),
        };
        validate_devices(&file.devices, &mqtt, &hj212)
    }

    const MODBUS: &str = r#"
[[devices]]
id = "wl-01"
name = "a"
area = "330723001"
driver = "modbus_rtu"
port = "/dev/ttyUSB0"
slave = 1
points = [ { metric = "water_level", register = 0 } ]
"#;

    #[test]
    fn a_good_set_passes() {
        assert_eq!(parse(MODBUS, false), Ok(()));
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (MODBUS.replace("wl-01", "wl#01"), "devices[0].id"),
            (MODBUS.replace("slave = 1", "slave = 0"), "devices[0].slave"),
            (
                MODBUS.replace("register = 0 ", ""),
                "devices[0].points[0].register",
            ),
            (MODBUS.replace("330723001", "33"), "devices[0].area"),
            (
                format!("{MODBUS}{}", MODBUS.replace("slave = 1", "slave = 2")),
                "devices[1].id",
            ),
            (
                format!(
                    "{MODBUS}{}",
                    MODBUS
                        .replace("wl-01", "wl-02")
                        .replace("slave = 1", "slave = 2\nbaud = 19200")
                ),
                "devices[1].baud",
            ),
            (
                format!(
                    "{MODBUS}[[devices]]\nid = \"aq\"\nname = \"b\"\narea = \"330723001\"\ndriver = \"hj212\"\nmn = \"X1\"\nport = \"/dev/ttyUSB0\"\n"
                ),
                "devices[1].port",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text, false).expect_err(key);
            assert_eq!(err.0, key, "{}", err.1);
        }
    }

    #[test]
    fn a_key_the_driver_does_not_use_is_named() {
        #[derive(Debug, Deserialize)]
        struct File {
            #[allow(dead_code)]
            devices: Vec<DeviceConfig>,
        }
        for (text, named) in [
            (MODBUS.replace("slave = 1", "slave = 1\nslav = 2"), "slav"),
            // `mn` belongs to HJ 212 stations, not to Modbus devices.
            (MODBUS.replace("slave = 1", "slave = 1\nmn = \"X1\""), "mn"),
            (
                MODBUS.replace("driver = \"modbus_rtu\"", "driver = \"modbus\""),
                "modbus",
            ),
        ] {
            let err = toml::from_str::<File>(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{named}`")), "{named}: {err}");
        }
        let missing = toml::from_str::<File>(&MODBUS.replace("slave = 1\n", ""))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("`slave`"), "{missing}");
    }

    #[test]
    fn devices_survive_a_round_trip_through_toml() {
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct File {
            devices: Vec<DeviceConfig>,
        }
        let text = format!(
            "{MODBUS}[[devices]]\nid = \"aq\"\nname = \"b\"\narea = \"330723001\"\ndriver = \"hj212\"\nmn = \"X1\"\npassword = \"station-pw\"\n[[devices]]\nid = \"sim\"\nname = \"s\"\narea = \"330723001\"\ndriver = \"simulator\"\nprofile = \"rain\"\ninterval = \"5s\"\n"
        );
        let file: File = toml::from_str(&text).unwrap();
        assert_eq!(file.devices[0].driver(), DriverKind::ModbusRtu);
        assert_eq!(
            file.devices[1].password().unwrap().unwrap().expose(),
            "station-pw"
        );
        let again: File = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(again, file);
    }

    #[test]
    fn an_hj212_station_needs_a_way_in() {
        let station: DeviceConfig = toml::from_str(
            "id = \"aq\"\nname = \"a\"\narea = \"330723001\"\ndriver = \"hj212\"\nmn = \"MN1\"\n",
        )
        .unwrap();
        let err = validate_devices(&[station], &MqttConfig::default(), &Hj212Config::default());
        assert_eq!(err.unwrap_err().0, "devices[0].port");
    }

    #[test]
    fn mqtt_devices_need_their_own_real_password_for_the_embedded_broker() {
        let device = |extra: &str| {
            format!(
                "[[devices]]\nid = \"rain-02\"\nname = \"r\"\narea = \"330723001\"\ndriver = \"mqtt\"\n{extra}\n"
            )
        };
        assert_eq!(
            parse(&device(""), true).unwrap_err().0,
            "devices[0].password"
        );
        assert_eq!(
            parse(&device("password = \"change-me\""), true)
                .unwrap_err()
                .0,
            "devices[0].password"
        );
        assert_eq!(
            parse(&device("password = \"short\""), true).unwrap_err().0,
            "devices[0].password"
        );
        assert_eq!(parse(&device("password = \"a-long-secret\""), true), Ok(()));
        assert_eq!(
            parse(
                &device("username = \"r+\"\npassword = \"a-long-secret\""),
                true
            )
            .unwrap_err()
            .0,
            "devices[0].username"
        );
        // No broker at all: nowhere for the device to publish.
        assert_eq!(
            parse(&device("password = \"a-long-secret\""), false)
                .unwrap_err()
                .0,
            "devices[0].driver"
        );
    }
}
