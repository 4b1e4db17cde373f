//! Where log lines go and how they look (`log.format`): text for people, or one JSON object
//! per line for log shippers. `RUST_LOG` filters either way (default `info`).
//!
//! Set once per process, after the config is read: commands that read no config log as text.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber; a second call (there is none) would be ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).try_init()
        }
        // Fields at the top level (`{"timestamp", "level", "message", "route", ...}`), as log
        // shippers index them; no ANSI colours, which would not be JSON.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .try_init(),
    };
}
