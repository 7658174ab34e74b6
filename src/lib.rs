//! township-node: the offline-first node for grassroots digital governance.
//!
//! Code map (see ARCHITECTURE.md for the whole picture, its "Layers" section for who may use whom):
//! - [`cli`]: the `township-node` command line; the only place with `anyhow`.
//! - [`app`]: the composition root: state, background tasks, start-up and shutdown.
//! - [`demo`]: `township-node demo`, a node with sample people, cases and sensors.
//! - [`config`]: the layered, typed configuration.
//! - [`node`]: the data directory, `init`, identity checks and the directory lock.
//! - [`clock`]: wall time (controllable in tests) and the one wire format for times.
//! - [`store`]: SQLite, the writer thread, the read pool and migrations.
//! - [`records`]: record writes through the document store, always with their audit entry.
//! - [`codes`]: the stable machine codes of refusals, which clients translate.
//! - [`invalid`]: the one "this field is wrong, because" error every domain uses.
//! - [`auth`]: sessions, API tokens, passwords, throttling and the access table.
//! - [`areas`]: the area directory: names for area codes, as records that flow down.
//! - [`users`]: accounts as records, their projection and API.
//! - [`incidents`]: reporting, dispatch, deadlines and closed-loop handling of incidents.
//! - [`telemetry`]: devices, drivers, the readings stream, retention, status and the sensors API.
//! - [`blobs`]: content-addressed attachments and thumbnails (core and routes).
//! - [`rules`]: rules on live readings: the rule body, the evaluation semantics, records, the watcher.
//! - [`warnings`]: four-colour warnings as records, their workflow, automation from rules, the API.
//! - [`broadcast`]: broadcasts to the loudspeakers as records, their safety rules, the playback engine.
//! - [`pa`]: the loudspeaker outputs and zones, speech synthesis, audio checks.
//! - [`cap`]: CAP 1.2 messages for warnings, signed, and their Atom feed.
//! - [`ebd`]: the emergency-broadcast platform link (EBD/EBM, SM2): signed orders in, reports out.
//! - [`audit`]: the hash-chained, signed audit log.
//! - [`sync`]: enrolment, the sync WebSocket, sessions, streams, attachments and the upstream link.
//! - [`control`]: the local control socket the CLI uses while the node runs.
//! - [`http`]: router assembly, middleware, problem details, the embedded UI.
//! - [`map`]: the maps' base layer (MBTiles served by the node, or a tile URL) and area outlines.
//! - [`metrics`]: the Prometheus registry.
//! - [`outbound`]: outgoing HTTP to servers outside the trust boundary (CAP feeds, the EBD platform).
//! - [`logging`]: log set-up and the wrapper for untrusted strings in log lines.
//! - [`doctor`]: the data-directory checks behind `township-node doctor`.

pub mod app;
pub mod areas;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod broadcast;
pub mod cap;
pub mod cli;
pub mod clock;
pub mod codes;
pub mod config;
pub mod control;
pub mod demo;
pub mod doctor;
pub mod ebd;
pub mod http;
pub mod incidents;
pub mod invalid;
pub mod logging;
pub mod map;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod pa;
pub mod records;
pub mod rules;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod uploads;
pub mod users;
pub mod warnings;
