//! Selection: which ready instance takes the next call.
//!
//! Every policy looks only at instances that can take a call now (healthy,
//! not ejected, circuit closed or half-open with a probe slot free, under the
//! concurrency limit); when the instance a policy would choose is not ready,
//! it falls back to the next ready one (for `ring_hash`, the next one on the
//! ring).
//!
//! Why not `tower::balance`: its `p2c::Balance` draws from a `Discover`
//! stream of services and picks among those whose `poll_ready` is ready. Our
//! selection needs what that shape cannot carry: a per-call hash key
//! (`ring_hash`), weights (`weighted`), and readiness made of the breaker,
//! the outlier ejection and the bulkhead, all of which must be read together
//! under one lock so that choosing an instance and taking its slot is atomic.
//! So [`Balancer::pick`] is the `p2c`/`round_robin` idea over a plain slice of
//! [`Candidate`]s, and [`PeakEwma`] is the same estimator as
//! `tower::load::PeakEwma` (peak-sensitive, decaying towards zero with time,
//! cost = estimate × (in flight + 1)), kept per instance rather than inside
//! a wrapped service.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Balance;

/// Virtual nodes per unit of weight on the hash ring.
const VNODES_PER_WEIGHT: u32 = 160;

/// How fast a latency estimate forgets (as in Finagle and Linkerd).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// What the balancer knows about one instance for one pick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// The instance's id: placement on the hash ring derives from it alone.
    pub(crate) id: &'a str,
    /// Whether it can take a call now.
    pub(crate) ready: bool,
    /// Relative share for `weighted` and `ring_hash` (at least 1).
    pub(crate) weight: u32,
    /// Calls in flight to it.
    pub(crate) in_flight: u32,
    /// Its p2c cost: latency estimate × (in flight + 1).
    pub(crate) cost: f64,
}

/// The balancer of one service. Its per-instance memory (smooth weights,
/// the ring) is indexed like the candidate slice and rebuilt when the
/// membership changes, which [`Balancer::membership_changed`] announces.
#[derive(Debug)]
pub(crate) struct Balancer {
    cursor: usize,
    current_weights: Vec<i64>,
    ring: Option<Vec<(u64, usize)>>,
    rng: u64,
}

impl Balancer {
    pub(crate) fn new(seed: u64) -> Self {
        Balancer {
            cursor: 0,
            current_weights: Vec::new(),
            ring: None,
            rng: seed | 1,
        }
    }

    /// Forgets what depended on the set of instances (after one was added,
    /// removed or reweighted, or the policy changed).
    pub(crate) fn membership_changed(&mut self) {
        self.current_weights.clear();
        self.ring = None;
    }

    /// Picks a ready candidate, or `None` when none is ready.
    pub(crate) fn pick(
        &mut self,
        policy: Balance,
        candidates: &[Candidate<'_>],
        key: Option<&[u8]>,
    ) -> Option<usize> {
        if !candidates.iter().any(|c| c.ready) {
            return None;
        }
        match policy {
            Balance::RoundRobin => self.round_robin(candidates),
            Balance::Weighted => self.weighted(candidates),
            Balance::LeastRequest => self.least_request(candidates),
            Balance::RingHash => match key {
                Some(key) => self.ring_hash(candidates, key),
                None => self.round_robin(candidates),
            },
            Balance::P2cEwma => self.p2c(candidates),
        }
    }

    /// The first ready candidate at or after the cursor.
    fn round_robin(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let n = candidates.len();
        let start = self.cursor % n;
        let chosen = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| candidates[i].ready)?;
        self.cursor = chosen + 1;
        Some(chosen)
    }

    /// nginx's smooth weighted round robin over the ready candidates: each
    /// gains its weight, the richest is chosen and pays the total.
    fn weighted(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        if self.current_weights.len() != candidates.len() {
            self.current_weights = vec![0; candidates.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate().filter(|(_, c)| c.ready) {
            let weight = i64::from(c.weight.max(1));
            self.current_weights[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current_weights[i] > self.current_weights[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current_weights[best] -= total;
        Some(best)
    }

    /// The ready candidate with the fewest calls in flight; ties go round
    /// robin so that idle instances share the load.
    fn least_request(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let n = candidates.len();
        let start = self.cursor % n;
        let chosen = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| candidates[i].ready)
            .min_by_key(|&i| candidates[i].in_flight)?;
        self.cursor = chosen + 1;
        Some(chosen)
    }

    /// The first ready candidate clockwise from the key's point on the ring.
    fn ring_hash(&mut self, candidates: &[Candidate<'_>], key: &[u8]) -> Option<usize> {
        let ring = self.ring.get_or_insert_with(|| build_ring(candidates));
        if ring.is_empty() {
            return None;
        }
        let point = hash(key);
        let start = ring.partition_point(|(p, _)| *p < point);
        (0..ring.len())
            .map(|i| ring[(start + i) % ring.len()].1)
            .find(|&i| candidates[i].ready)
    }

    /// Power of two choices: two distinct random ready candidates, the
    /// cheaper one wins.
    fn p2c(&mut self, candidates: &[Candidate<'_>]) -> Option<usize> {
        let ready: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].ready)
            .collect();
        match ready.len() {
            0 => None,
            1 => Some(ready[0]),
            n => {
                let a = self.random(n);
                let b = (a + 1 + self.random(n - 1)) % n;
                let (a, b) = (ready[a], ready[b]);
                Some(if candidates[b].cost < candidates[a].cost {
                    b
                } else {
                    a
                })
            }
        }
    }

    /// xorshift64*: enough randomness for picking, no dependency.
    fn random(&mut self, below: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value % below as u64) as usize
    }
}

fn build_ring(candidates: &[Candidate<'_>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        for v in 0..c.weight.max(1) * VNODES_PER_WEIGHT {
            let mut node = Vec::with_capacity(c.id.len() + 5);
            node.extend_from_slice(c.id.as_bytes());
            node.push(b'#');
            node.extend_from_slice(&v.to_be_bytes());
            ring.push((hash(&node), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a followed by the murmur3 finalizer: stable across processes and
/// releases (unlike `DefaultHasher`), and well spread.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A peak-sensitive exponentially weighted moving average of latency: a
/// slower observation replaces the estimate at once, a faster one blends in;
/// without observations the estimate decays towards zero so an instance that
/// was slow once gets tried again.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    estimate_ms: f64,
    updated: Instant,
}

impl PeakEwma {
    /// A new instance starts at 1 ms: cheap enough to be tried soon, but not
    /// free, so that concurrent calls do not all pile onto it before its
    /// first answer.
    pub(crate) fn new(now: Instant) -> Self {
        PeakEwma {
            estimate_ms: 1.0,
            updated: now,
        }
    }

    fn decay(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
    }

    /// The estimate, decayed to `now`.
    pub(crate) fn estimate_ms(&self, now: Instant) -> f64 {
        self.estimate_ms * self.decay(now)
    }

    /// Adds one observed latency.
    pub(crate) fn observe(&mut self, now: Instant, latency: Duration) {
        let rtt = latency.as_secs_f64() * 1000.0;
        let estimate = self.estimate_ms(now);
        self.estimate_ms = if rtt > estimate {
            rtt
        } else {
            let decay = self.decay(now);
            estimate * decay + rtt * (1.0 - decay)
        };
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands<'a>(ids: &'a [&'a str], weights: &[u32]) -> Vec<Candidate<'a>> {
        ids.iter()
            .zip(weights)
            .map(|(id, w)| Candidate {
                id,
                ready: true,
                weight: *w,
                in_flight: 0,
                cost: 1.0,
            })
            .collect()
    }

    #[test]
    fn smooth_weighted_interleaves() {
        let mut b = Balancer::new(7);
        let c = cands(&["a", "b", "c"], &[5, 1, 1]);
        let picks: Vec<usize> = (0..7)
            .map(|_| b.pick(Balance::Weighted, &c, None).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ring_falls_through_to_the_next_ready_instance() {
        let mut b = Balancer::new(7);
        let mut c = cands(&["a", "b", "c"], &[1, 1, 1]);
        let key = b"some key";
        let first = b.pick(Balance::RingHash, &c, Some(key)).unwrap();
        assert_eq!(b.pick(Balance::RingHash, &c, Some(key)), Some(first));
        c[first].ready = false;
        let second = b.pick(Balance::RingHash, &c, Some(key)).unwrap();
        assert_ne!(second, first);
        c[first].ready = true;
        assert_eq!(b.pick(Balance::RingHash, &c, Some(key)), Some(first));
    }

    #[test]
    fn none_ready_none_picked() {
        let mut b = Balancer::new(7);
        let mut c = cands(&["a"], &[1]);
        c[0].ready = false;
        for policy in [
            Balance::RoundRobin,
            Balance::Weighted,
            Balance::LeastRequest,
            Balance::RingHash,
            Balance::P2cEwma,
        ] {
            assert_eq!(b.pick(policy, &c, Some(b"k")), None);
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays() {
        let now = Instant::now();
        let mut e = PeakEwma::new(now);
        e.observe(now, Duration::from_millis(100));
        assert!((e.estimate_ms(now) - 100.0).abs() < 1e-9);
        assert!(e.estimate_ms(now + Duration::from_secs(10)) < 40.0);
        e.observe(now + Duration::from_millis(1), Duration::from_millis(1));
        assert!(e.estimate_ms(now + Duration::from_millis(1)) > 90.0);
    }
}
