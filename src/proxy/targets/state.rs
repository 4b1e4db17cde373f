//! Whether a target is in rotation: its active check's verdict and its passive ejection.
//!
//! Read on every request (one atomic load); written only when a verdict changes, so the
//! request path never takes a lock or reads the clock for it.

use crate::routing::Passive;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `out` bits: why a target is out of rotation.
const FAILING_CHECK: u8 = 1;
const EJECTED: u8 = 2;

#[derive(Debug, Default)]
pub(crate) struct TargetState {
    out: AtomicU8,
    /// Failed requests in a row (passive).
    failures: AtomicU32,
    /// Ejections in a row: each doubles the next one's length.
    ejections: AtomicU32,
    /// Unix milliseconds; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Unix milliseconds of the last return from an ejection.
    returned_at: AtomicU64,
    /// Active checks in a row: passes (> 0) or failures (< 0).
    streak: AtomicI32,
}

/// How a verdict moved the target in or out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    Out,
    In,
}

/// A passive ejection that just began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ejection {
    pub(crate) length: Duration,
    /// Unix milliseconds.
    pub(crate) until: u64,
    /// Whether the target was in rotation until now (not already failing its check).
    pub(crate) left_rotation: bool,
}

impl TargetState {
    pub(crate) fn in_rotation(&self) -> bool {
        self.out.load(Relaxed) == 0
    }

    pub(crate) fn failing_check(&self) -> bool {
        self.out.load(Relaxed) & FAILING_CHECK != 0
    }

    /// Unix milliseconds the passive ejection ends at, if ejected.
    pub(crate) fn ejected_until(&self) -> Option<u64> {
        match self.out.load(Relaxed) & EJECTED {
            0 => None,
            _ => Some(self.ejected_until.load(Relaxed)),
        }
    }

    /// A request succeeded: the failure streak ends. (A load first: the common case writes
    /// nothing, so targets shared by many cores do not bounce a cache line.)
    pub(crate) fn success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// A request failed (connect error, reset, 502/503/504); ejects the target once `passive`
    /// says so. Returns the ejection when this failure caused one.
    pub(crate) fn failure(&self, passive: Option<&Passive>) -> Option<Ejection> {
        let passive = passive?;
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures < passive.failures || self.ejected_until().is_some() {
            return None;
        }
        self.failures.store(0, Relaxed);
        let now = unix_millis();
        // A target that stayed back longer than the longest ejection starts over.
        let since_return = now.saturating_sub(self.returned_at.load(Relaxed));
        if since_return > Passive::MAX_EJECTION.as_millis() as u64 {
            self.ejections.store(0, Relaxed);
        }
        let repeats = self.ejections.fetch_add(1, Relaxed).min(16);
        let length = passive
            .eject_for
            .saturating_mul(1 << repeats)
            .min(Passive::MAX_EJECTION);
        let until = now + length.as_millis() as u64;
        self.ejected_until.store(until, Relaxed);
        let before = self.out.fetch_or(EJECTED, Relaxed);
        Some(Ejection {
            length,
            until,
            left_rotation: before == 0,
        })
    }

    /// The ejection that ended at `until` is over (a later one is left alone).
    pub(crate) fn end_ejection(&self, until: u64) -> Change {
        if self.ejected_until.load(Relaxed) != until {
            return Change::None;
        }
        self.returned_at.store(unix_millis(), Relaxed);
        let before = self.out.fetch_and(!EJECTED, Relaxed);
        match before & !EJECTED {
            0 if before & EJECTED != 0 => Change::In,
            _ => Change::None,
        }
    }

    /// One active check's result; the verdict flips after `threshold` results in a row.
    pub(crate) fn check(&self, passed: bool, unhealthy_after: u32, healthy_after: u32) -> Change {
        let streak = self.streak.load(Relaxed);
        let streak = match (passed, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Relaxed);
        let failing = self.failing_check();
        if failing && passed && streak >= healthy_after as i32 {
            let before = self.out.fetch_and(!FAILING_CHECK, Relaxed);
            return if before == FAILING_CHECK {
                Change::In
            } else {
                Change::None
            };
        }
        if !failing && !passed && -streak >= unhealthy_after as i32 {
            let before = self.out.fetch_or(FAILING_CHECK, Relaxed);
            return if before == 0 {
                Change::Out
            } else {
                Change::None
            };
        }
        Change::None
    }

    /// No active check any more (a reload removed it): its verdict no longer counts.
    pub(crate) fn clear_check(&self) {
        self.streak.store(0, Relaxed);
        self.out.fetch_and(!FAILING_CHECK, Relaxed);
    }
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(failures: u32, secs: u64) -> Passive {
        Passive {
            failures,
            eject_for: Duration::from_secs(secs),
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let s = TargetState::default();
        let p = passive(3, 10);
        assert_eq!(s.failure(Some(&p)), None);
        assert_eq!(s.failure(Some(&p)), None);
        s.success();
        assert_eq!(s.failure(Some(&p)), None);
        assert_eq!(s.failure(Some(&p)), None);
        assert!(s.in_rotation());
        let ejection = s.failure(Some(&p)).expect("ejected");
        assert_eq!(ejection.length, Duration::from_secs(10));
        assert!(ejection.left_rotation);
        assert!(!s.in_rotation());
        assert!(s.ejected_until().is_some());
        // Off: never ejected.
        let off = TargetState::default();
        for _ in 0..100 {
            assert_eq!(off.failure(None), None);
        }
        assert!(off.in_rotation());
    }

    #[test]
    fn repeated_ejections_double_up_to_five_minutes() {
        let s = TargetState::default();
        let p = passive(1, 60);
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let ejection = s.failure(Some(&p)).expect("ejected");
            lengths.push(ejection.length.as_secs());
            let until = s.ejected_until().expect("until");
            assert_eq!(s.end_ejection(until), Change::In);
            assert!(s.in_rotation());
        }
        assert_eq!(lengths, [60, 120, 240, 300, 300]);
        // A stale timer does not end a later ejection.
        s.failure(Some(&p));
        assert_eq!(s.end_ejection(1), Change::None);
        assert!(!s.in_rotation());
    }

    #[test]
    fn checks_flip_after_their_thresholds() {
        let s = TargetState::default();
        assert_eq!(s.check(false, 2, 3), Change::None);
        assert_eq!(s.check(false, 2, 3), Change::Out);
        assert!(!s.in_rotation() && s.failing_check());
        assert_eq!(s.check(false, 2, 3), Change::None);
        assert_eq!(s.check(true, 2, 3), Change::None);
        assert_eq!(s.check(true, 2, 3), Change::None);
        assert_eq!(s.check(true, 2, 3), Change::In);
        assert!(s.in_rotation());
        // Failing its check and ejected: back only when both are over.
        s.check(false, 1, 1);
        let ejection = s.failure(Some(&passive(1, 10))).expect("ejected");
        assert!(!ejection.left_rotation);
        assert_eq!(s.check(true, 1, 1), Change::None);
        assert!(!s.in_rotation());
        let until = s.ejected_until().expect("until");
        assert_eq!(s.end_ejection(until), Change::In);
    }
}
