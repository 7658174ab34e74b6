//! township-drivers: sensor drivers, the sensor listeners' admission control and simulators.
//!
//! Drivers never touch the database. They emit [`Reading`]s on a channel and the node's telemetry
//! module persists them, so a stuck serial port or a flood of MQTT messages cannot block a write
//! transaction, and a driver can be tested without a store.
//!
//! Code map: [`driver`] (the trait, the sink, health counters, the supervisor), [`admission`]
//! (connection slots on the sensor listeners: pending and authenticated, per address and device), [`simulator`],
//! [`modbus`] (RTU master over [`serial`]), [`hj212`] (frames) and [`hj212_link`] (TCP and serial),
//! [`mqtt_broker`] (embedded) and [`mqtt_client`] (external broker), [`payload`] (JSON and SenML),
//! [`registers`] (Modbus value decoding), [`reading`] (the typed reading), [`untrusted`] (escaping
//! strings from devices before they reach the logs).

pub mod admission;
pub mod driver;
pub mod hj212;
pub mod hj212_link;
pub mod modbus;
pub mod mqtt_broker;
pub mod mqtt_client;
pub mod payload;
pub mod reading;
pub mod registers;
pub mod serial;
pub mod simulator;
pub mod untrusted;

pub use reading::{Quality, Reading};
