//! Which target a request goes to: power of two choices by load per weight
//! (`least_requests`) or a weighted turn (`round_robin`), over targets in rotation that this
//! request has not tried yet.

use super::{TargetList, UpstreamSet};
use crate::routing::Balance;
use rand::Rng;
use std::sync::atomic::Ordering::Relaxed;

/// The longest round-robin schedule: weights beyond it are scaled down (the ratio kept).
const MAX_SCHEDULE: u64 = 4096;

impl UpstreamSet {
    /// The target for the next attempt, or `None` when every target is out of rotation or
    /// already tried.
    pub(crate) fn pick(&self, list: &TargetList, tried: &Tried) -> Option<usize> {
        // One target, the common case: no draw.
        if list.targets.len() == 1 {
            let usable = tried.is_empty() && list.targets[0].0.state.in_rotation();
            return usable.then_some(0);
        }
        let usable = |i: usize| !tried.contains(i) && list.targets[i].0.state.in_rotation();
        match self.spec.balance {
            Balance::RoundRobin => {
                let n = list.schedule.len();
                let start = self.next.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| list.schedule[(start + k) % n] as usize)
                    .find(|&i| usable(i))
            }
            Balance::LeastRequests => {
                let mut rng = rand::rng();
                let a = draw(list, &usable, &mut rng)?;
                let b = draw(list, &usable, &mut rng)?;
                // Fewer in flight per weight wins; a tie (nothing in flight, say) goes to the
                // first draw, made by weight, so idle targets get shares proportional to their
                // weights. (Adding one to each side would hand every tie to the heavier.)
                let (ta, wa) = &list.targets[a];
                let (tb, wb) = &list.targets[b];
                let a_wins = ta.in_flight() * u64::from(*wb) <= tb.in_flight() * u64::from(*wa);
                Some(if a_wins { a } else { b })
            }
        }
    }
}

/// A usable target drawn with probability proportional to its weight.
fn draw(list: &TargetList, usable: &dyn Fn(usize) -> bool, rng: &mut impl Rng) -> Option<usize> {
    let total: u64 = (0..list.targets.len())
        .filter(|&i| usable(i))
        .map(|i| u64::from(list.targets[i].1))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for i in (0..list.targets.len()).filter(|&i| usable(i)) {
        let w = u64::from(list.targets[i].1);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// Target indices, each as often as its weight, spread out (smooth weighted round robin, as
/// nginx does it), so a heavy target's turns are not bunched together.
pub(super) fn schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| (u64::from(w) / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, -(i as i64)))
        else {
            break;
        };
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// The targets a request has tried (indices; at most `1 + retry.attempts` ≤ 11), on the stack.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    indices: [u16; 11],
    len: u8,
}

impl Tried {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        self.indices[..self.len()]
            .iter()
            .any(|&i| usize::from(i) == index)
    }

    pub(crate) fn push(&mut self, index: usize) {
        if self.len() < self.indices.len() {
            self.indices[self.len()] = index as u16;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_weights_and_interleave() {
        assert_eq!(schedule(&[1]), [0]);
        assert_eq!(schedule(&[1, 1]), [0, 1]);
        let s = schedule(&[3, 1]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(s.len(), 4);
        // Smooth: the light target is not last after a run of the heavy one's turns only.
        assert_eq!(schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        // Huge weights are scaled, keeping the ratio.
        let s = schedule(&[1000, 1000, 1000, 1000, 1000]);
        assert!(s.len() <= 5000 && s.len() >= 5);
    }

    #[test]
    fn tried_holds_what_was_pushed() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        t.push(3);
        t.push(7);
        assert!(t.contains(3) && t.contains(7) && !t.contains(0));
        assert_eq!(t.len(), 2);
    }
}
