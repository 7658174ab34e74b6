//! Logging through tracing: human-readable by default, one JSON object per line with `json`, the
//! filter from `RUST_LOG` when set and from config otherwise.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Untrusted strings (usernames, peer reasons, client ids) go into log lines through this.
pub use township_drivers::untrusted::Untrusted;

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: LogFormat, config_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
