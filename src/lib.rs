//! township-node: the offline-first node for grassroots digital governance.
//!
//! Code map (see ARCHITECTURE.md for the whole picture):
//! - [`cli`]: the `township-node` command line; the only place with `anyhow`.
//! - [`app`]: wiring, start-up and shutdown.
//! - [`config`]: the layered, typed configuration.
//! - [`node`]: the data directory, `init`, identity checks and the directory lock.
//! - [`store`]: SQLite, the writer thread, the read pool and migrations.
//! - [`records`]: record writes through the document store, always with their audit entry.
//! - [`auth`]: sessions, API tokens, passwords, throttling and the access table.
//! - [`users`]: accounts as records, their projection and API.
//! - [`incidents`]: reporting, dispatch, deadlines and closed-loop handling of incidents.
//! - [`telemetry`]: devices, drivers, the readings stream, retention, status and the sensors API.
//! - [`blobs`]: content-addressed attachments and thumbnails.
//! - [`audit`]: the hash-chained, signed audit log.
//! - [`peers`]: enrollment, the sync WebSocket, the upstream client and the sync sessions.
//! - [`control`]: the local control socket the CLI uses while the node runs.
//! - [`http`]: router assembly, middleware, problem details, the embedded UI.
//! - [`metrics`]: the Prometheus registry.
//! - [`doctor`]: the data-directory checks behind `township-node doctor`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod doctor;
pub mod http;
pub mod incidents;
pub mod invalid;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod records;
pub mod store;
pub mod telemetry;
pub mod users;
