//! Where log lines go: one writer thread per process, fed whole lines by every thread, so a
//! request never waits on the pipe or terminal behind stderr and lines never tear or reorder.
//!
//! [`LogSink`] takes `tracing`'s formatted events (as its `MakeWriter`) and the access log's
//! lines, which skip `tracing`'s field machinery: they are written straight into a reused
//! [`LineBuf`] and appended here as bytes. Appending is one short lock and a copy; the writer,
//! once woken, lets lines gather for a millisecond, takes everything pending in one swap and
//! writes it with one `write`, so under load many lines share a system call. Nothing is dropped: past [`PENDING_BOUND`] bytes waiting, an
//! appending thread waits for the writer (the bound on memory, and the back-pressure a slow
//! stderr puts on the gateway, as a blocking write would).

mod line;
mod sink;

pub use line::LineBuf;
pub use sink::{LogSink, SinkGuard, SinkWriter, PENDING_BOUND};
