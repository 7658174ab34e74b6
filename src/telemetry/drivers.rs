//! Builds the drivers the configuration asks for and starts each under the supervisor: one Modbus
//! driver per serial port (devices on one RS-485 line share it), one HJ 212 listener, one HJ 212
//! reader per serial station, the embedded MQTT broker and/or the external broker client, and one
//! simulator for every simulated station.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use township_drivers::driver::Driver;
use township_drivers::hj212_link::{Hj212Listener, Hj212Serial, Stations};
use township_drivers::modbus::{ModbusDevice, ModbusPoint, ModbusPort};
use township_drivers::mqtt_broker::{Account, EmbeddedBroker, Format};
use township_drivers::mqtt_client::{ExternalBroker, ExternalBrokerSettings};
use township_drivers::serial::Parity as SerialParity;
use township_drivers::simulator::{Profile, SimulatedStation, Simulator, Storm};

use super::config::{
    DeviceConfig, DeviceLink, Hj212Link, ModbusLink, MqttLink, Parity, PayloadFormat, RegisterKind,
};
use crate::config::Config;

/// How long a Modbus device has to answer when the configuration does not say.
const DEFAULT_MODBUS_TIMEOUT: Duration = Duration::from_millis(500);

fn format_of(m: &MqttLink) -> Format {
    match m.format.unwrap_or_default() {
        PayloadFormat::Json => Format::Json,
        PayloadFormat::Senml => Format::Senml,
    }
}

fn modbus_device(d: &DeviceConfig, m: &ModbusLink, default_interval: Duration) -> ModbusDevice {
    ModbusDevice {
        id: d.id.clone(),
        slave: m.slave,
        interval: d.interval.unwrap_or(default_interval),
        timeout: m.timeout.unwrap_or(DEFAULT_MODBUS_TIMEOUT),
        points: d
            .points
            .iter()
            .filter_map(|p| {
                Some(ModbusPoint {
                    metric: p.metric.clone(),
                    register: p.register?,
                    input: p.kind == RegisterKind::Input,
                    data_type: p.data_type,
                    word_order: p.word_order,
                    scale: p.scale,
                    offset: p.offset,
                    unit: p.unit.clone(),
                    min: p.min,
                    max: p.max,
                })
            })
            .collect(),
    }
}

/// What the loudspeakers need from the drivers: relay lines (served by the Modbus driver of their
/// port, sensors or not) and the speakers' sign-ins on the embedded broker.
#[derive(Default)]
pub struct PaWiring {
    /// (port, baud, parity, the coil commands for that line).
    pub coil_lines: Vec<(
        String,
        u32,
        SerialParity,
        tokio::sync::mpsc::Receiver<township_drivers::modbus::CoilCommand>,
    )>,
    pub speakers: Option<Arc<township_drivers::mqtt_broker::SpeakerLink>>,
}

/// Every driver the configuration describes, each with a name unique on the node.
pub fn build(config: &Config, pa: PaWiring) -> Vec<Box<dyn Driver>> {
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    let devices = &config.devices;
    let default_interval = config.telemetry.default_interval;

    // Modbus: one driver per port; the first device on a port sets its baud rate and parity.
    let mut ports: BTreeMap<String, ModbusPort> = BTreeMap::new();
    for d in devices {
        let DeviceLink::ModbusRtu(m) = &d.link else {
            continue;
        };
        let entry = ports.entry(m.port.clone()).or_insert_with(|| ModbusPort {
            port: m.port.clone(),
            baud: m.baud.unwrap_or(9600),
            parity: match m.parity.unwrap_or_default() {
                Parity::None => SerialParity::None,
                Parity::Even => SerialParity::Even,
                Parity::Odd => SerialParity::Odd,
            },
            devices: Vec::new(),
            coils: None,
        });
        entry.devices.push(modbus_device(d, m, default_interval));
    }
    for (port, baud, parity, commands) in pa.coil_lines {
        let entry = ports.entry(port.clone()).or_insert_with(|| ModbusPort {
            port,
            baud,
            parity,
            devices: Vec::new(),
            coils: None,
        });
        entry.coils = Some(commands);
    }
    drivers.extend(ports.into_values().map(|p| Box::new(p) as Box<dyn Driver>));

    // HJ 212: the TCP listener serves every station without a serial port.
    let hj: Vec<(&DeviceConfig, &Hj212Link)> = devices
        .iter()
        .filter_map(|d| match &d.link {
            DeviceLink::Hj212(h) => Some((d, h)),
            _ => None,
        })
        .collect();
    let stations = Arc::new(Stations::new(hj.iter().map(|(d, h)| {
        let password = d.password().ok().flatten().map(|p| p.expose().to_string());
        (h.mn.clone(), d.id.clone(), password)
    })));
    if let Some(addr) = config.hj212.listen {
        drivers.push(Box::new(Hj212Listener {
            addr,
            stations: stations.clone(),
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections: 256,
        }));
    }
    // One reader per serial line, whichever of its stations a frame comes from.
    let mut serial_lines: BTreeMap<String, u32> = BTreeMap::new();
    for (_, h) in &hj {
        if let Some(port) = &h.port {
            serial_lines
                .entry(port.clone())
                .or_insert(h.baud.unwrap_or(9600));
        }
    }
    for (port, baud) in serial_lines {
        drivers.push(Box::new(Hj212Serial {
            port,
            baud,
            stations: stations.clone(),
        }));
    }

    // MQTT.
    let mqtt: Vec<(&DeviceConfig, &MqttLink)> = devices
        .iter()
        .filter_map(|d| match &d.link {
            DeviceLink::Mqtt(m) => Some((d, m)),
            _ => None,
        })
        .collect();
    if let Some(addr) = config.mqtt.listen {
        let accounts: HashMap<String, Account> = mqtt
            .iter()
            .filter_map(|(d, m)| {
                let password = d.password().ok()??;
                Some((
                    m.username.clone().unwrap_or_else(|| d.id.clone()),
                    Account {
                        device: d.id.clone(),
                        password: password.expose().to_string(),
                        format: format_of(m),
                        speaker: false,
                    },
                ))
            })
            .collect();
        drivers.push(Box::new(EmbeddedBroker {
            addr,
            accounts,
            max_connections: 1024,
            speakers: pa.speakers.clone(),
        }));
    }
    if let Some(ext) = &config.mqtt.external {
        drivers.push(Box::new(ExternalBroker {
            settings: ExternalBrokerSettings {
                host: ext.host.clone(),
                port: ext.port,
                username: ext.username.clone(),
                password: ext.password.as_ref().map(|p| p.expose().to_string()),
                password_file: ext.password_file.clone(),
                tls: ext.tls,
                ca_file: ext.ca_file.clone(),
                client_id: ext
                    .client_id
                    .clone()
                    .unwrap_or_else(|| "township-node".into()),
            },
            devices: mqtt
                .iter()
                .map(|(d, m)| (d.id.clone(), format_of(m)))
                .collect(),
        }));
    }

    // Simulated stations.
    let sims: Vec<SimulatedStation> = devices
        .iter()
        .filter_map(|d| {
            let DeviceLink::Simulator(sim) = &d.link else {
                return None;
            };
            Some(SimulatedStation {
                device: d.id.clone(),
                profile: Profile::parse(&sim.profile)?,
                interval: d.interval.unwrap_or(default_interval),
                catchment: sim.catchment.clone().unwrap_or_else(|| d.area.clone()),
            })
        })
        .collect();
    if !sims.is_empty() {
        let s = &config.simulator;
        let storm = s.storm_after.map(|after| Storm {
            after,
            duration: s.storm_for,
            peak_mm_per_h: s.storm_peak,
        });
        drivers.push(Box::new(Simulator::new(sims, s.seed, storm, s.speedup)));
    }
    drivers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::devices::driver_name;

    /// A device's status turns faulty when the driver named by `driver_name` is down, so that name
    /// must be one a built driver really has.
    #[test]
    fn every_device_names_a_driver_that_is_built() {
        let config: Config = toml::from_str(
            r#"
[mqtt]
listen = "127.0.0.1:1883"
external = { host = "10.0.0.5" }
[hj212]
listen = "127.0.0.1:9212"
[[devices]]
id = "wl"
name = "w"
area = "330723001"
driver = "modbus_rtu"
port = "/dev/ttyUSB0"
slave = 1
points = [{ metric = "level", register = 0 }]
[[devices]]
id = "aq"
name = "a"
area = "330723001"
driver = "hj212"
mn = "MN1"
[[devices]]
id = "ww"
name = "w"
area = "330723001"
driver = "hj212"
mn = "MN2"
port = "/dev/ttyS1"
[[devices]]
id = "rain"
name = "r"
area = "330723001"
driver = "mqtt"
password = "a-long-secret"
[[devices]]
id = "sim"
name = "s"
area = "330723001"
driver = "simulator"
profile = "rain"
"#,
        )
        .unwrap();
        let built: Vec<String> = build(&config, PaWiring::default())
            .iter()
            .map(|d| d.name())
            .collect();
        for d in &config.devices {
            let name = driver_name(d, &config.mqtt);
            assert!(
                built.contains(&name),
                "{} names {name}, built: {built:?}",
                d.id
            );
        }
        let mut external_only = config.clone();
        external_only.mqtt.listen = None;
        let built: Vec<String> = build(&external_only, PaWiring::default())
            .iter()
            .map(|d| d.name())
            .collect();
        let rain = &external_only.devices[3];
        assert!(
            built.contains(&driver_name(rain, &external_only.mqtt)),
            "{built:?}"
        );
    }
}
