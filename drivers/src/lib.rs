//! township-drivers: sensor drivers, PA outputs and simulators.
//!
//! Drivers never touch the database. They emit [`Reading`]s on a channel and the node's telemetry
//! module persists them, so a stuck serial port or a flood of MQTT messages cannot block a write
//! transaction, and a driver can be tested without a store.

pub mod hj212;
pub mod payload;
pub mod reading;
pub mod registers;

pub use reading::{Quality, Reading};
