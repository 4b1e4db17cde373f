//! A log-line budget: at most a few lines per window for events a client can cause at will
//! (failed admin logins), so a flood cannot fill the disk. What is held back is counted and
//! said in the next line that gets through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per window for one kind of event.
#[derive(Debug)]
pub(crate) struct Throttle {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    written: u32,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(per_window: u32, window: Duration) -> Throttle {
        Throttle {
            per_window,
            window,
            state: Mutex::new(State {
                started: Instant::now(),
                written: 0,
                held_back: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held back before it;
    /// `None` when the budget of this window is spent.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else {
            return None;
        };
        if now.duration_since(s.started) >= self.window {
            s.started = now;
            s.written = 0;
        }
        if s.written >= self.per_window {
            s.held_back += 1;
            return None;
        }
        s.written += 1;
        Some(std::mem::take(&mut s.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_past_the_budget_and_says_so_later() {
        let t = Throttle::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.admit(start), Some(0));
        assert_eq!(t.admit(start), Some(0));
        assert_eq!(t.admit(start), None);
        assert_eq!(t.admit(start), None);
        assert_eq!(t.admit(start + Duration::from_secs(61)), Some(2));
        assert_eq!(t.admit(start + Duration::from_secs(61)), Some(0));
    }
}
