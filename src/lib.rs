//! township-node: the offline-first node for grassroots digital governance.
//!
//! Code map (see ARCHITECTURE.md for the whole picture):
//! - [`cli`]: the `township-node` command line; the only place with `anyhow`.
//! - [`app`]: wiring, start-up and shutdown.
//! - [`config`]: the layered, typed configuration.
//! - [`node`]: the data directory, `init`, identity checks and the directory lock.
//! - [`store`]: SQLite, the writer thread, the read pool and migrations.
//! - [`http`]: router assembly, middleware, problem details, the embedded UI.
//! - [`metrics`]: the Prometheus registry.
//! - [`doctor`]: the data-directory checks behind `township-node doctor`.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod store;
