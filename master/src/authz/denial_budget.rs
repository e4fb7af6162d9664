//! How many of one principal's denials are written to the audit log. Each record is
//! fsynced before the refused caller gets its answer, under the log's lock that task
//! ends take too: a client refused in a loop must not make the master sync a record
//! per request, holding up everyone's task ends and filling its disk. Each principal
//! has a budget of [`BURST`] records, refilled at [`PER_SECOND`]; a denial past it is
//! still counted (`cella_master_authz_denied_total`) and refused, but not recorded: the
//! principal's next record says how many were left out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Records a principal may have written at once.
pub const BURST: u32 = 20;
/// Records a second a principal's budget regains.
pub const PER_SECOND: u32 = 5;
/// Above this many principals tracked, those back to a full budget with nothing
/// left out are forgotten (they would start from a full budget anyway).
const TRACKED: usize = 1024;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    left_out: u64,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(PER_SECOND);
        self.tokens = (self.tokens + gained).min(f64::from(BURST));
        self.at = now;
    }
}

/// The record budgets of the principals seen denied.
#[derive(Debug, Default)]
pub struct DenialBudget {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl DenialBudget {
    /// Takes one record from `principal`'s budget: `Some(n)` when the denial is to
    /// be recorded, `n` being how many of its denials were left out since its last
    /// record; `None` when it is to be left out.
    pub fn take(&self, principal: &str, now: Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= TRACKED && !buckets.contains_key(principal) {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < f64::from(BURST) || b.left_out > 0
            });
        }
        let bucket = buckets
            .entry(principal.to_string())
            .or_insert_with(|| Bucket {
                tokens: f64::from(BURST),
                at: now,
                left_out: 0,
            });
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(std::mem::take(&mut bucket.left_out))
        } else {
            bucket.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_recorded_then_one_record_per_refill_names_what_was_left_out() {
        let budget = DenialBudget::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(budget.take("user:mallory", t0), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(budget.take("user:mallory", t0), None);
        }
        // Another principal has its own budget.
        assert_eq!(budget.take("user:bob", t0), Some(0));
        let later = t0 + Duration::from_secs_f64(1.0 / f64::from(PER_SECOND));
        assert_eq!(budget.take("user:mallory", later), Some(100));
        assert_eq!(budget.take("user:mallory", later), None);
    }

    #[test]
    fn idle_principals_are_forgotten_when_many_are_tracked() {
        let budget = DenialBudget::default();
        let t0 = Instant::now();
        for i in 0..TRACKED {
            budget.take(&format!("user:{i}"), t0);
        }
        // One still out of budget, with denials left out: kept.
        for _ in 0..BURST + 3 {
            budget.take("user:0", t0);
        }
        let later = t0 + Duration::from_secs(60);
        budget.take("user:new", later);
        let buckets = budget.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 2, "{:?}", buckets.keys().collect::<Vec<_>>());
        assert!(buckets.contains_key("user:0"));
    }
}
