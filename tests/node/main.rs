//! The node's integration tests, one binary (so `tests/common` is built and the node linked once on a
//! 2-core machine), one module per feature. Real processes on port 0 and in-process nodes with a
//! manual clock share the helpers in `common`. Set `TEST_LOG=1` to see node logs with a failing test.

mod common;

mod accounts;
mod areas;
mod authz;
mod broadcast;
mod cap;
mod cap_feeds;
mod cli;
mod crash;
mod ebd;
mod graceful;
mod hostile;
mod http;
mod hygiene;
mod idempotency;
mod incidents;
mod lan_https;
mod layers;
mod listeners;
mod module_docs;
mod offline_app;
mod pa_peers;
mod problems;
mod resumable;
mod rules;
mod sensors;
mod signin;
mod speech;
mod sync;
mod telemetry;
mod uploads;
mod warnings;
