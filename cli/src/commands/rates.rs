//! Rates from two samples of a task's cumulative counters (CPU time, I/O), as
//! `cella usage` and `cella top` show them.

use cella_containerizer::units::in_binary_unit;
use cella_proto::api::Usage;

/// What a task did per second between two samples; `None` where a figure is missing
/// from either sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// CPU time per wall time: 1.0 is one core busy.
    pub cores: Option<f64>,
    /// Share of the wall time the task was throttled (CFS quota).
    pub throttled: Option<f64>,
    pub read_bytes: Option<f64>,
    pub write_bytes: Option<f64>,
    pub read_ops: Option<f64>,
    pub write_ops: Option<f64>,
}

impl Rates {
    /// From `before` to `after` (`after` the later sample); all `None` when they are
    /// not in time order.
    pub fn between(before: &Usage, after: &Usage) -> Rates {
        let wall = after.timestamp_ns.saturating_sub(before.timestamp_ns);
        if wall == 0 {
            return Rates::default();
        }
        #[allow(clippy::cast_precision_loss)]
        let per_second = |a: Option<u64>, b: Option<u64>, unit: f64| -> Option<f64> {
            Some(b?.saturating_sub(a?) as f64 / unit / (wall as f64 / 1e9))
        };
        let cpu = |u: &Usage| Some(u.cpu_user_ns?.saturating_add(u.cpu_system_ns?));
        Rates {
            cores: per_second(cpu(before), cpu(after), 1e9),
            throttled: per_second(before.cpu_throttled_ns, after.cpu_throttled_ns, 1e9),
            read_bytes: per_second(before.io_read_bytes, after.io_read_bytes, 1.0),
            write_bytes: per_second(before.io_write_bytes, after.io_write_bytes, 1.0),
            read_ops: per_second(before.io_read_ops, after.io_read_ops, 1.0),
            write_ops: per_second(before.io_write_ops, after.io_write_ops, 1.0),
        }
    }

    /// Read plus write bytes per second.
    pub fn io_bytes(&self) -> Option<f64> {
        match (self.read_bytes, self.write_bytes) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0.0) + w.unwrap_or(0.0)),
        }
    }
}

/// A rate of bytes for people: `1.5 MiB/s`.
pub fn bytes_per_second(rate: Option<f64>) -> String {
    let Some(r) = rate else { return "-".into() };
    match in_binary_unit(r) {
        (v, "B") => format!("{v:.0} B/s"),
        (v, unit) => format!("{v:.1} {unit}/s"),
    }
}

/// A share as a percentage: `12.5%`.
pub fn percent(share: Option<f64>) -> String {
    share.map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// Bars for a series, scaled to its largest value: `▁▂▅█`.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if top <= 0.0 {
                BARS[0]
            } else {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let i = ((v / top) * 7.0).round().clamp(0.0, 7.0) as usize;
                BARS[i]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use cella_proto::usage::Usage as Figures;

    use super::*;

    #[test]
    fn rates_are_per_second_of_wall_time() {
        let a = Usage {
            timestamp_ns: 1_000_000_000,
            figures: Figures {
                cpu_user_ns: Some(0),
                cpu_system_ns: Some(0),
                io_read_bytes: Some(0),
                ..Figures::default()
            },
        };
        let b = Usage {
            timestamp_ns: 3_000_000_000,
            figures: Figures {
                cpu_user_ns: Some(1_000_000_000),
                cpu_system_ns: Some(500_000_000),
                io_read_bytes: Some(2048),
                ..Figures::default()
            },
        };
        let r = Rates::between(&a, &b);
        assert_eq!(r.cores, Some(0.75));
        assert_eq!(r.read_bytes, Some(1024.0));
        assert_eq!(r.write_bytes, None);
        assert_eq!(Rates::between(&b, &a), Rates::default());
        assert_eq!(Rates::between(&a, &a), Rates::default());
        assert_eq!(bytes_per_second(Some(1536.0)), "1.5 KiB/s");
        assert_eq!(sparkline(&[0.0, 1.0, 2.0]), "▁▅█");
    }
}
