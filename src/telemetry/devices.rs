//! The devices the node reads, behind one interface ([`DeviceDirectory`]). In this version they come
//! from `[[devices]]` in the configuration; a later version can make them synced records without the
//! drivers, the writer or the API noticing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use township_sync::AreaCode;

use super::config::{DeviceConfig, DriverKind, FactorName, MqttConfig, PointConfig};

/// One device, as every part of the node sees it.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub name: String,
    pub area: AreaCode,
    pub kind: DriverKind,
    /// The supervised driver that serves this device (`modbus_rtu:/dev/ttyUSB0`, `mqtt`, ...): when it
    /// is down, the device is faulty.
    pub driver_name: String,
    pub interval: Option<Duration>,
    pub config: Arc<DeviceConfig>,
    factors: Arc<BTreeMap<String, FactorName>>,
}

impl Device {
    pub fn point(&self, metric: &str) -> Option<&PointConfig> {
        self.config.points.iter().find(|p| p.metric == metric)
    }

    /// The configured metrics in their order, then any others the device sent (`seen`), sorted.
    pub fn metrics<'a>(&self, seen: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut metrics: Vec<String> = self
            .config
            .points
            .iter()
            .map(|p| p.metric.clone())
            .collect();
        let mut others: Vec<String> = seen.filter(|m| !metrics.contains(m)).cloned().collect();
        others.sort();
        others.dedup();
        metrics.extend(others);
        metrics
    }

    /// The configured name, else the HJ 212 factor table's (config first, then built in).
    pub fn display_name(&self, metric: &str) -> Option<String> {
        if let Some(name) = self.point(metric).and_then(|p| p.name.clone()) {
            return Some(name);
        }
        if let Some(f) = self.factors.get(metric) {
            return Some(f.name.clone());
        }
        township_drivers::hj212::factor_info(metric).map(|(name, _)| name.to_string())
    }

    pub fn default_unit(&self, metric: &str) -> Option<String> {
        if let Some(unit) = self.point(metric).and_then(|p| p.unit.clone()) {
            return Some(unit);
        }
        if let Some(f) = self.factors.get(metric) {
            return f.unit.clone();
        }
        township_drivers::hj212::factor_info(metric).map(|(_, unit)| unit.to_string())
    }
}

/// Where devices come from.
pub trait DeviceDirectory: Send + Sync {
    fn all(&self) -> Vec<Device>;
    fn get(&self, id: &str) -> Option<Device>;
}

/// Devices from `[[devices]]`.
pub struct ConfiguredDevices {
    ordered: Vec<Device>,
    by_id: HashMap<String, Device>,
}

/// The supervised driver name a device's readings come through.
pub fn driver_name(d: &DeviceConfig, mqtt: &MqttConfig) -> String {
    match (d.driver(), d.serial_line().map(|line| line.0)) {
        (DriverKind::Mqtt, _) if mqtt.listen.is_none() => mqtt.external.as_ref().map_or_else(
            || "mqtt".into(),
            |e| format!("mqtt_external:{}:{}", e.host, e.port),
        ),
        (DriverKind::ModbusRtu, Some(port)) => format!("modbus_rtu:{port}"),
        (DriverKind::Hj212, Some(port)) => format!("hj212_serial:{port}"),
        (DriverKind::Hj212, None) => "hj212".into(),
        (DriverKind::Mqtt, _) => "mqtt".into(),
        (kind, _) => kind.label().into(),
    }
}

impl ConfiguredDevices {
    /// Builds the directory; the configuration was validated at load, so an area that does not parse
    /// here cannot happen, and such a device is left out rather than trusted.
    pub fn new(
        devices: &[DeviceConfig],
        factors: &BTreeMap<String, FactorName>,
        mqtt: &MqttConfig,
    ) -> ConfiguredDevices {
        let factors = Arc::new(factors.clone());
        let ordered: Vec<Device> = devices
            .iter()
            .filter_map(|d| {
                Some(Device {
                    id: d.id.clone(),
                    name: d.name.clone(),
                    area: d.area.parse().ok()?,
                    kind: d.driver(),
                    driver_name: driver_name(d, mqtt),
                    interval: d.interval,
                    config: Arc::new(d.clone()),
                    factors: factors.clone(),
                })
            })
            .collect();
        let by_id = ordered.iter().map(|d| (d.id.clone(), d.clone())).collect();
        ConfiguredDevices { ordered, by_id }
    }
}

impl DeviceDirectory for ConfiguredDevices {
    fn all(&self) -> Vec<Device> {
        self.ordered.clone()
    }

    fn get(&self, id: &str) -> Option<Device> {
        self.by_id.get(id).cloned()
    }
}
