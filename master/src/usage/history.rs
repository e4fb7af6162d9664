//! A task's usage history: tiers of points, each coarser and reaching further back
//! than the one before (by default 1 s for the last 10 minutes, 10 s back to 6 hours,
//! 1 minute back to 24 hours). A sample enters the first tier; points that age out of
//! a tier are folded into the next one's buckets, and out of the last one they are
//! dropped. Each tier holds at most two points more than (its span minus the previous
//! span) / its resolution, so a task's history is bounded whatever the agents send,
//! and ingest is amortized O(1): one fold or push, and the few points that aged out.
//! Every tier but its newest point is stored packed ([`super::packed`]).

use std::time::Duration;

use cella_proto::time::parse_duration;

use super::packed::{MAX_POINT_BYTES, PackedTier};
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

    /// The most bytes a task's history can hold: every point packed at its largest
    /// (figures jumping at random; a real task's points take a tenth of it or less),
    /// the tiers' newest points, and per tier a block's spare room and the tier's
    /// own fields.
    pub fn max_bytes(&self) -> usize {
        let per_tier = std::mem::size_of::<PackedTier>()
            + std::mem::size_of::<Point>()
            + super::packed::BLOCK_POINTS as usize * MAX_POINT_BYTES / 8;
        self.max_points() * MAX_POINT_BYTES + self.0.len() * per_tier
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
    tiers: Vec<PackedTier>,
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
            self.tiers.resize_with(tiers.len(), PackedTier::default);
        }
        add(&mut self.tiers[0], nanos(tiers[0].resolution), point);
        let newest = self.tiers[0].back().map_or(0, |p| p.timestamp_ns);
        for k in 0..tiers.len() {
            let horizon = newest.saturating_sub(nanos(tiers[k].span));
            while self.tiers[k]
                .front_timestamp()
                .is_some_and(|oldest| oldest < horizon)
            {
                let Some(old) = self.tiers[k].pop_front() else {
                    break;
                };
                if k + 1 < tiers.len() {
                    add(&mut self.tiers[k + 1], nanos(tiers[k + 1].resolution), old);
                }
            }
        }
    }

    /// The points since `since_ns`, oldest first, folded into buckets of
    /// `resolution_ns` when given (coarser than the stored points is all it can do).
    pub fn points(&self, since_ns: u64, resolution_ns: Option<u64>) -> Vec<Point> {
        let mut out: Vec<Point> = Vec::new();
        for p in self.tiers.iter().rev().flat_map(PackedTier::iter) {
            if p.timestamp_ns < since_ns {
                continue;
            }
            match (resolution_ns.filter(|r| *r > 0), out.last_mut()) {
                (Some(r), Some(last)) if last.timestamp_ns / r == p.timestamp_ns / r => {
                    last.fold(&p);
                }
                _ => out.push(p),
            }
        }
        out
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.tiers.first().and_then(PackedTier::back)
    }

    pub fn len(&self) -> usize {
        self.tiers.iter().map(PackedTier::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, allocated capacity included.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.tiers.iter().map(PackedTier::bytes).sum::<usize>()
    }
}

/// Adds `p` to a tier: folded into the newest point when it falls in the same bucket
/// (or is older), otherwise appended.
fn add(tier: &mut PackedTier, resolution_ns: u64, p: Point) {
    if let Some(back) = tier.back_mut()
        && (p.timestamp_ns / resolution_ns == back.timestamp_ns / resolution_ns
            || p.timestamp_ns < back.timestamp_ns)
    {
        back.fold(&p);
        return;
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

    /// The tiers kept as plain deques of points: what the packed history must match.
    fn unpacked(tiers: &Tiers, samples: impl Iterator<Item = Point>) -> Vec<Point> {
        let tiers = tiers.tiers();
        let mut kept = vec![std::collections::VecDeque::<Point>::new(); tiers.len()];
        let add = |tier: &mut std::collections::VecDeque<Point>, r: u64, p: Point| match tier
            .back_mut()
        {
            Some(b)
                if p.timestamp_ns / r == b.timestamp_ns / r || p.timestamp_ns < b.timestamp_ns =>
            {
                b.fold(&p);
            }
            _ => tier.push_back(p),
        };
        for p in samples {
            add(&mut kept[0], nanos(tiers[0].resolution), p);
            let newest = kept[0].back().unwrap().timestamp_ns;
            for k in 0..tiers.len() {
                let horizon = newest.saturating_sub(nanos(tiers[k].span));
                while kept[k].front().is_some_and(|p| p.timestamp_ns < horizon) {
                    let old = kept[k].pop_front().unwrap();
                    if k + 1 < tiers.len() {
                        add(&mut kept[k + 1], nanos(tiers[k + 1].resolution), old);
                    }
                }
            }
        }
        kept.iter().rev().flatten().copied().collect()
    }

    #[test]
    fn packed_tiers_keep_exactly_the_points_of_plain_ones() {
        let tiers = Tiers::parse("1s:2m,10s:30m,1m:3h").unwrap();
        // Irregular samples: jitter, a late one, gaps, levels up and down.
        let samples = (0..4 * 3600u64).filter(|s| s % 97 != 0).map(|s| {
            let t = s * S + (s * 7919 % 1000) * 1_000_000;
            let late = if s % 1000 == 999 { 3 * S } else { 0 };
            let mut p = sample(t - late, s * s, s * 2_654_435_761 % 1_000_000);
            if s % 13 == 0 {
                p.fold(&Point::from_wire(&TaskUsage {
                    timestamp_ns: t - late,
                    io_pressure: Some(cella_proto::v1::Pressure {
                        some_avg10: f64::from(u32::try_from(s % 100).unwrap()) / 3.0,
                        some_total_us: s,
                        ..Default::default()
                    }),
                    ..Default::default()
                }));
            }
            p
        });
        let mut h = History::default();
        for p in samples.clone() {
            h.push(&tiers, p);
        }
        let expected = unpacked(&tiers, samples);
        assert_eq!(h.points(0, None), expected);
        assert_eq!(h.len(), expected.len());
        assert_eq!(h.latest(), expected.last());
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
