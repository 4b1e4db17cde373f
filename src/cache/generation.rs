//! Generation counters: how the cache tells a fill that raced an invalidation from a good one.
//!
//! A fill snapshots the generation of its id before it reads the store; an invalidation bumps
//! that generation when it arrives. An entry whose generation is no longer current was read
//! before some invalidation of its id, so it may be stale, and is never served, however late its
//! store reply arrives. Ids share a fixed number of stripes (a bump of one id makes fills of the
//! ids sharing its stripe retry once), so the memory is bounded whatever the number of ids.

use std::sync::atomic::{AtomicU64, Ordering};

/// Enough stripes that two ids rarely share one, few enough to stay in a few pages.
const STRIPES: usize = 4096;

/// Where an id's generation lives, computed once per lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stripe(usize);

/// The generation counters of one kind of entry (keys or apps).
#[derive(Debug)]
pub(crate) struct Generations {
    /// Bumped by "drop everything" (the change feed had a gap).
    epoch: AtomicU64,
    stripes: Box<[AtomicU64]>,
}

impl Generations {
    pub(crate) fn new() -> Generations {
        Generations {
            epoch: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// FNV-1a: ids are short, and a client choosing colliding ids only slows its own fills.
    pub(crate) fn stripe(id: &str) -> Stripe {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in id.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // The remainder is below STRIPES, so it fits usize on every platform.
        Stripe(usize::try_from(hash % STRIPES as u64).unwrap_or(0))
    }

    /// The current generation of a stripe: changes whenever the stripe or the epoch is bumped
    /// (both only grow, so their sum does too).
    pub(crate) fn current(&self, stripe: Stripe) -> u64 {
        // SeqCst pairs a fill's snapshot with a bump on another thread without reasoning about
        // which loads may move; these are a few loads per lookup.
        self.epoch.load(Ordering::SeqCst) + self.stripes[stripe.0].load(Ordering::SeqCst)
    }

    /// Marks every entry of `id` (and of ids sharing its stripe) filled before now as stale.
    pub(crate) fn bump(&self, id: &str) {
        self.stripes[Self::stripe(id).0].fetch_add(1, Ordering::SeqCst);
    }

    /// Marks every entry filled before now as stale.
    pub(crate) fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_changes_the_ids_generation_and_only_its_stripes() {
        let g = Generations::new();
        let a = Generations::stripe("keyA");
        let before = g.current(a);
        let other = (0..100)
            .map(|i| format!("other{i}"))
            .find(|id| Generations::stripe(id) != a)
            .expect("an id on another stripe");
        let b = Generations::stripe(&other);
        let b_before = g.current(b);
        g.bump("keyA");
        assert_ne!(g.current(a), before);
        assert_eq!(g.current(b), b_before);
        g.bump_all();
        assert_ne!(g.current(b), b_before);
    }
}
