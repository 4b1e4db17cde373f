//! Where log lines go and how they look (`log.format`): text for people, or one JSON object
//! per line for log shippers. `RUST_LOG` filters either way (default `info`).
//!
//! Set once per process, after the config is read: commands that read no config log as text.
//! Lines are formatted where they happen and written to stderr by the process's [`LogSink`]
//! thread, so a request never waits on the terminal or pipe behind stderr, and many lines share
//! a write under load. When the writer falls behind, requests wait for it rather than lose lines.
//! Access lines take a shorter way into the same sink (see `pipeline::access`).

use crate::config::LogFormat;
use crate::log::{LogSink, SinkGuard, PENDING_BOUND};
use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber and access-line writer; a second call (there is none)
/// would be ignored. Keep the guard until the process ends: dropping it writes out the lines
/// still queued.
pub(super) fn init(format: LogFormat) -> SinkGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, guard) = LogSink::start(std::io::stderr(), PENDING_BOUND);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink.clone());
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
    crate::pipeline::access::install(sink, matches!(format, LogFormat::Json));
    guard
}
