//! The process's log writer: a buffer of whole lines and the thread that writes it out.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Bytes that may wait for the writer before appending threads wait for it instead.
pub const PENDING_BOUND: usize = 1 << 20;
/// Once woken, the writer lets lines gather this long before it takes them: under load one
/// `write` carries a millisecond of lines, and appending threads rarely find the writer
/// waiting (no wake-up to send) or holding the lock. A line reaches the output at most this
/// much later; nothing is lost by it (the guard writes out what is pending).
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// A handle for appending whole lines; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

opaque_debug!(LogSink);

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for bytes (or the close).
    ready: Condvar,
    /// Appending threads wait here for room.
    room: Condvar,
    bound: usize,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
    writer_waiting: bool,
    appenders_waiting: usize,
    /// The most bytes ever pending at once (for the bound's test).
    high_water: usize,
}

/// Written out and joined on drop: keep it until the process ends, so queued lines reach
/// the output.
pub struct SinkGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

opaque_debug!(SinkGuard);

impl LogSink {
    /// Starts the writer thread over `out`, which gets each batch in one `write_all`.
    pub fn start(out: impl Write + Send + 'static, bound: usize) -> (LogSink, SinkGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            bound,
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("scopegate-log".into())
                .spawn(move || write_out(&shared, out))
                .expect("spawn the log writer thread")
        };
        let guard = SinkGuard {
            shared: shared.clone(),
            writer: Some(writer),
        };
        (LogSink { shared }, guard)
    }

    /// Appends whole lines (each ending in `\n`). Waits while the pending bytes are past the
    /// bound, unless nothing is pending (so one line longer than the bound still goes).
    pub fn append(&self, lines: &[u8]) {
        let shared = &*self.shared;
        let mut state = lock(&shared.state);
        while !state.pending.is_empty()
            && state.pending.len() + lines.len() > shared.bound
            && !state.closed
        {
            state.appenders_waiting += 1;
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.appenders_waiting -= 1;
        }
        state.pending.extend_from_slice(lines);
        state.high_water = state.high_water.max(state.pending.len());
        let wake = std::mem::take(&mut state.writer_waiting);
        drop(state);
        // After unlocking, so the woken writer does not find the lock still held.
        if wake {
            shared.ready.notify_one();
        }
    }

    /// The most bytes that were ever pending at once.
    pub fn high_water(&self) -> usize {
        lock(&self.shared.state).high_water
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding it leaves whole lines behind; keep writing them.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: swaps out everything pending, writes it, until closed and empty.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = lock(&shared.state);
            while state.pending.is_empty() {
                if state.closed {
                    return;
                }
                state.writer_waiting = true;
                state = shared
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            // Let more lines gather, unless closing or appending threads wait for room.
            if !state.closed && state.appenders_waiting == 0 {
                drop(state);
                std::thread::sleep(GATHER);
                state = lock(&shared.state);
            }
            std::mem::swap(&mut state.pending, &mut batch);
            if state.appenders_waiting > 0 {
                shared.room.notify_all();
            }
        }
        // A closed or failing stderr loses its lines; there is nowhere to say so.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            self.shared.ready.notify_one();
            self.shared.room.notify_all();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// `tracing-subscriber`'s writer: it hands over each formatted event in one `write_all`.
#[derive(Debug)]
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An output that takes its time, so lines pile up against the bound.
    #[derive(Clone, Default)]
    struct SlowOutput {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for SlowOutput {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_micros(200));
            self.written.lock().expect("lock").extend_from_slice(bytes);
            *self.writes.lock().expect("lock") += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_each_threads_order_within_the_bound() {
        const THREADS: usize = 4;
        const LINES: usize = 5_000;
        const BOUND: usize = 4_096;
        let output = SlowOutput::default();
        let (sink, guard) = LogSink::start(output.clone(), BOUND);
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..LINES {
                        sink.append(
                            format!("thread={t} line={i} {}\n", "x".repeat(i % 50)).as_bytes(),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("appender");
        }
        let high_water = sink.high_water();
        drop(guard);

        let written =
            String::from_utf8(output.written.lock().expect("lock").clone()).expect("utf-8");
        let mut next = [0usize; THREADS];
        for line in written.lines() {
            let mut parts = line.split(' ');
            let t: usize = parts
                .next()
                .and_then(|p| p.strip_prefix("thread="))
                .and_then(|p| p.parse().ok())
                .expect(line);
            let i: usize = parts
                .next()
                .and_then(|p| p.strip_prefix("line="))
                .and_then(|p| p.parse().ok())
                .expect(line);
            assert_eq!(i, next[t], "thread {t} out of order");
            assert_eq!(
                parts.next().unwrap_or(""),
                "x".repeat(i % 50),
                "torn line: {line}"
            );
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS], "lines lost");
        assert!(
            high_water <= BOUND,
            "{high_water} bytes pending, bound {BOUND}"
        );
        let writes = *output.writes.lock().expect("lock");
        assert!(
            writes < THREADS * LINES / 2,
            "lines were not batched: {writes} writes"
        );
    }

    #[test]
    fn a_line_longer_than_the_bound_still_goes_and_the_guard_writes_out_the_rest() {
        let output = SlowOutput::default();
        let (sink, guard) = LogSink::start(output.clone(), 16);
        let long = format!("{}\n", "y".repeat(100));
        sink.append(long.as_bytes());
        sink.append(b"short\n");
        drop(guard);
        let written = output.written.lock().expect("lock").clone();
        assert_eq!(written, format!("{long}short\n").into_bytes());
    }

    #[test]
    fn tracing_events_go_through_the_sink() {
        use tracing_subscriber::fmt::MakeWriter;
        let output = SlowOutput::default();
        let (sink, guard) = LogSink::start(output.clone(), PENDING_BOUND);
        sink.make_writer().write_all(b"event\n").expect("write");
        drop(guard);
        assert_eq!(*output.written.lock().expect("lock"), b"event\n");
    }
}
