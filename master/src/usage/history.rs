//! A task's usage history: tiers of points, each coarser and reaching further back
//! than the one before (by default 1 s for the last 10 minutes, 10 s back to 6 hours,
//! 1 minute back to 24 hours). A sample enters the first tier; points that age out of
//! a tier are folded into the next one's buckets, and out of the last one they are
//! dropped. Each tier holds at most two points more than (its span minus the previous
//! span) / its resolution, so a task's history is bounded whatever the agents send,
//! and ingest is amortized O(1): one fold or push, and the few points that aged out.

use std::collections::VecDeque;
use std::time::Duration;

use cella_proto::time::parse_duration;

use super::point::Point;

/// One tier: points `resolution` apart, kept until they are `span` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub resolution: Duration,
    pub span: Duration,
}

/// The tiers of every task's history, finest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers(Vec<Tier>);

impl Default for Tiers {
    fn default() -> Self {
        Self::parse("1s:10m,10s:6h,1m:24h").expect("the default tiers parse")
    }
}

impl Tiers {
    /// `RESOLUTION:SPAN,...`, finest first, e.g. `1s:10m,10s:6h,1m:24h`: spans must
    /// grow and resolutions may not shrink from one tier to the next.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write RESOLUTION:SPAN pairs, finest first, e.g. \"1s:10m,10s:6h,1m:24h\"";
        let mut tiers: Vec<Tier> = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (res, span) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is no tier; {hint}"))?;
            let tier = Tier {
                resolution: parse_duration(res)?,
                span: parse_duration(span)?,
            };
            if tier.span < tier.resolution {
                return Err(format!(
                    "{part:?}: the span is shorter than the resolution; {hint}"
                ));
            }
            if let Some(prev) = tiers.last()
                && (tier.span <= prev.span || tier.resolution < prev.resolution)
            {
                return Err(format!(
                    "{part:?}: each tier must reach further back than the one before, \
                     at the same or a coarser resolution; {hint}"
                ));
            }
            tiers.push(tier);
        }
        Ok(Self(tiers))
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.0
    }

    /// How far back the history reaches.
    pub fn retention(&self) -> Duration {
        self.0.last().map_or(Duration::ZERO, |t| t.span)
    }

    /// The most points a task's history holds.
    pub fn max_points(&self) -> usize {
        (0..self.0.len()).map(|k| bound(&self.0, k)).sum()
    }

    /// The most bytes a task's history holds (the points; the deques' own headers
    /// add 32 bytes per tier).
    pub fn max_bytes(&self) -> usize {
        self.max_points() * std::mem::size_of::<Point>()
    }
}

/// The most points tier `k` holds.
fn bound(tiers: &[Tier], k: usize) -> usize {
    let before = if k == 0 {
        Duration::ZERO
    } else {
        tiers[k - 1].span
    };
    let reach = (tiers[k].span - before).as_nanos() / tiers[k].resolution.as_nanos();
    usize::try_from(reach)
        .unwrap_or(usize::MAX)
        .saturating_add(2)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One task's history.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Per tier, oldest first.
    tiers: Vec<VecDeque<Point>>,
}

impl History {
    /// Adds a sample. Samples come in time order; one older than the newest point is
    /// folded into it rather than reordering the history.
    pub fn push(&mut self, tiers: &Tiers, point: Point) {
        let tiers = tiers.tiers();
        if tiers.is_empty() {
            return;
        }
        if self.tiers.len() != tiers.len() {
            self.tiers.resize_with(tiers.len(), VecDeque::new);
        }
        add(
            &mut self.tiers[0],
            nanos(tiers[0].resolution),
            bound(tiers, 0),
            point,
        );
        let newest = self.tiers[0].back().map_or(0, |p| p.timestamp_ns);
        for k in 0..tiers.len() {
            let horizon = newest.saturating_sub(nanos(tiers[k].span));
            while let Some(old) = self.tiers[k].front().copied() {
                if old.timestamp_ns >= horizon {
                    break;
                }
                self.tiers[k].pop_front();
                if k + 1 < tiers.len() {
                    add(
                        &mut self.tiers[k + 1],
                        nanos(tiers[k + 1].resolution),
                        bound(tiers, k + 1),
                        old,
                    );
                }
            }
        }
    }

    /// The points since `since_ns`, oldest first, folded into buckets of
    /// `resolution_ns` when given (coarser than the stored points is all it can do).
    pub fn points(&self, since_ns: u64, resolution_ns: Option<u64>) -> Vec<Point> {
        let mut out: Vec<Point> = Vec::new();
        for p in self.tiers.iter().rev().flatten() {
            if p.timestamp_ns < since_ns {
                continue;
            }
            match (resolution_ns.filter(|r| *r > 0), out.last_mut()) {
                (Some(r), Some(last)) if last.timestamp_ns / r == p.timestamp_ns / r => {
                    last.fold(p);
                }
                _ => out.push(*p),
            }
        }
        out
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.tiers.first().and_then(VecDeque::back)
    }

    pub fn len(&self) -> usize {
        self.tiers.iter().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, allocated capacity included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .tiers
                .iter()
                .map(|t| {
                    std::mem::size_of::<VecDeque<Point>>()
                        + t.capacity() * std::mem::size_of::<Point>()
                })
                .sum::<usize>()
    }
}

/// Adds `p` to a tier: folded into the newest point when it falls in the same bucket
/// (or is older), otherwise appended. The deque grows by doubling but never past
/// `bound`, so a full tier holds no spare capacity.
fn add(tier: &mut VecDeque<Point>, resolution_ns: u64, bound: usize, p: Point) {
    if let Some(back) = tier.back_mut()
        && (p.timestamp_ns / resolution_ns == back.timestamp_ns / resolution_ns
            || p.timestamp_ns < back.timestamp_ns)
    {
        back.fold(&p);
        return;
    }
    if tier.len() == tier.capacity() {
        let room = bound.saturating_sub(tier.len()).max(1);
        tier.reserve_exact(tier.capacity().max(8).min(room));
    }
    tier.push_back(p);
}

#[cfg(test)]
mod tests {
    use cella_proto::v1::TaskUsage;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample(t: u64, cpu: u64, mem: u64) -> Point {
        Point::from_wire(&TaskUsage {
            timestamp_ns: t,
            cpu_user_ns: Some(cpu),
            mem_current_bytes: Some(mem),
            ..Default::default()
        })
    }

    #[test]
    fn the_history_stays_within_its_bound_over_two_days() {
        let tiers = Tiers::default();
        let mut h = History::default();
        for s in 0..2 * 86_400 {
            h.push(&tiers, sample(s * S, s, 100));
        }
        assert!(
            h.len() <= tiers.max_points(),
            "{} > {}",
            h.len(),
            tiers.max_points()
        );
        assert!(h.bytes() <= tiers.max_bytes() + 200, "{} bytes", h.bytes());
        let all = h.points(0, None);
        let oldest = all.first().unwrap().timestamp_ns;
        assert!(
            oldest >= (2 * 86_400 - 86_400 - 60) * S,
            "kept too old a point: {oldest}"
        );
        // Fine near now, coarse further back.
        let last_minute = h.points((2 * 86_400 - 60) * S, None);
        assert!(
            (59..=61).contains(&last_minute.len()),
            "{}",
            last_minute.len()
        );
        let hour_ago = h.points((2 * 86_400 - 7200) * S, None).len()
            - h.points((2 * 86_400 - 3600) * S, None).len();
        assert!((359..=361).contains(&hour_ago), "{hour_ago}");
    }

    #[test]
    fn aged_points_keep_the_peak_and_the_last_counter() {
        let tiers = Tiers::parse("1s:10s,10s:1h").unwrap();
        let mut h = History::default();
        for s in 0..100 {
            let mem = if s == 23 { 9_999 } else { 100 };
            h.push(&tiers, sample(s * S, s, mem));
        }
        let bucket = h.points(20 * S, Some(10 * S));
        let p = bucket.first().unwrap().to_wire("t");
        assert_eq!(p.mem_current_bytes, Some(9_999));
        assert_eq!(p.cpu_user_ns, Some(29));
    }

    #[test]
    fn bad_tiers_are_refused_with_the_fix() {
        assert!(
            Tiers::parse("10s:1h,1s:2h")
                .unwrap_err()
                .contains("coarser")
        );
        assert!(Tiers::parse("10s").unwrap_err().contains("RESOLUTION:SPAN"));
        assert!(Tiers::parse("10s:1h,1m:30m").is_err());
        assert!(Tiers::parse("1m:10s").is_err());
    }
}
