//! One usage sample as the master's history keeps it: every figure the agent
//! measures, in a fixed-size record without heap allocations (the wire's `TaskUsage`
//! carries a task id string and boxed pressure messages), and how two samples are
//! folded into one when the history coarsens with age.

use cella_proto::v1::{Pressure, TaskUsage};

/// The scalar figures, by index. Gauges (a level, not a running total) keep the
/// largest value when samples are folded, so a coarse point still shows the peak;
/// counters and the kernel's own peaks keep the newest.
pub(super) const FIGURES: usize = 17;
const GAUGES: [usize; 7] = [3, 5, 6, 7, 9, 12, 13];

/// Bits of `Point::present` above the figures: per pressure, measured and "full" line.
const PRESSURE_BIT: usize = FIGURES;

/// Every number of a point but its timestamp and presence bits, by index (what
/// [`super::packed`] stores as differences): the figures, then per pressure its six
/// averages and two totals.
pub(super) const FIELDS: usize = FIGURES + 3 * 8;

/// A sample of a task's figures: 248 bytes as it is folded; the history stores older
/// points packed ([`super::packed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub timestamp_ns: u64,
    present: u32,
    figures: [u64; FIGURES],
    pressure: [PressurePoint; 3],
}

/// A pressure message: averages in hundredths of a percent (the kernel's precision),
/// some avg10/60/300 then full avg10/60/300, and the some/full totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PressurePoint {
    avg: [u16; 6],
    total_us: [u64; 2],
}

/// `$m!(index, field)` for every scalar figure.
macro_rules! each_figure {
    ($m:ident) => {
        $m!(0, cpu_user_ns);
        $m!(1, cpu_system_ns);
        $m!(2, cpu_throttled_ns);
        $m!(3, mem_current_bytes);
        $m!(4, mem_peak_bytes);
        $m!(5, mem_anon_bytes);
        $m!(6, mem_file_bytes);
        $m!(7, mem_kernel_bytes);
        $m!(8, oom_kills);
        $m!(9, pids_current);
        $m!(10, io_read_bytes);
        $m!(11, io_write_bytes);
        $m!(12, disk_used_bytes);
        $m!(13, mem_swap_bytes);
        $m!(14, cpu_nr_throttled);
        $m!(15, io_read_ops);
        $m!(16, io_write_ops);
    };
}

fn hundredths(percent: f64) -> u16 {
    // Shares of time in percent: 0..=100 fits with room to spare.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let h = (percent * 100.0).round().clamp(0.0, f64::from(u16::MAX)) as u16;
    h
}

fn percent(hundredths: u16) -> f64 {
    f64::from(hundredths) / 100.0
}

impl PressurePoint {
    fn from_wire(p: &Pressure) -> Self {
        Self {
            avg: [
                hundredths(p.some_avg10),
                hundredths(p.some_avg60),
                hundredths(p.some_avg300),
                hundredths(p.full_avg10.unwrap_or(0.0)),
                hundredths(p.full_avg60.unwrap_or(0.0)),
                hundredths(p.full_avg300.unwrap_or(0.0)),
            ],
            total_us: [p.some_total_us, p.full_total_us.unwrap_or(0)],
        }
    }

    fn to_wire(self, full: bool) -> Pressure {
        let a = self.avg;
        Pressure {
            some_avg10: percent(a[0]),
            some_avg60: percent(a[1]),
            some_avg300: percent(a[2]),
            some_total_us: self.total_us[0],
            full_avg10: full.then(|| percent(a[3])),
            full_avg60: full.then(|| percent(a[4])),
            full_avg300: full.then(|| percent(a[5])),
            full_total_us: full.then_some(self.total_us[1]),
        }
    }

    /// `newer` folded in: the largest averages, the newest totals.
    fn fold(&mut self, newer: &Self) {
        for (a, b) in self.avg.iter_mut().zip(newer.avg) {
            *a = (*a).max(b);
        }
        self.total_us = newer.total_us;
    }
}

impl Point {
    pub fn from_wire(u: &TaskUsage) -> Self {
        let mut p = Point {
            timestamp_ns: u.timestamp_ns,
            ..Default::default()
        };
        macro_rules! take {
            ($i:expr, $f:ident) => {
                if let Some(v) = u.$f {
                    p.figures[$i] = v;
                    p.present |= 1 << $i;
                }
            };
        }
        each_figure!(take);
        let pressures = [&u.cpu_pressure, &u.memory_pressure, &u.io_pressure];
        for (i, wire) in pressures.into_iter().enumerate() {
            if let Some(w) = wire {
                p.pressure[i] = PressurePoint::from_wire(w);
                p.present |= 1 << (PRESSURE_BIT + 2 * i);
                if w.full_total_us.is_some() {
                    p.present |= 1 << (PRESSURE_BIT + 2 * i + 1);
                }
            }
        }
        p
    }

    pub fn to_wire(&self, task_id: &str) -> TaskUsage {
        let mut u = TaskUsage {
            task_id: task_id.to_string(),
            timestamp_ns: self.timestamp_ns,
            ..Default::default()
        };
        macro_rules! give {
            ($i:expr, $f:ident) => {
                u.$f = self.figure($i);
            };
        }
        each_figure!(give);
        let pressure = |i: usize| {
            (self.present & (1 << (PRESSURE_BIT + 2 * i)) != 0).then(|| {
                let full = self.present & (1 << (PRESSURE_BIT + 2 * i + 1)) != 0;
                self.pressure[i].to_wire(full)
            })
        };
        u.cpu_pressure = pressure(0);
        u.memory_pressure = pressure(1);
        u.io_pressure = pressure(2);
        u
    }

    /// The presence bits: per figure, then per pressure measured and "full" line.
    pub(super) fn present(&self) -> u32 {
        self.present
    }

    pub(super) fn set_present(&mut self, present: u32) {
        self.present = present;
    }

    /// The [`FIELDS`], present or not (an absent one is 0).
    pub(super) fn fields(&self) -> [u64; FIELDS] {
        let mut f = [0; FIELDS];
        f[..FIGURES].copy_from_slice(&self.figures);
        for (p, out) in self.pressure.iter().zip(f[FIGURES..].chunks_exact_mut(8)) {
            for (o, a) in out.iter_mut().zip(p.avg) {
                *o = u64::from(a);
            }
            out[6..].copy_from_slice(&p.total_us);
        }
        f
    }

    /// Sets the [`FIELDS`]; an average past `u16::MAX` (never stored) is capped.
    pub(super) fn set_fields(&mut self, f: &[u64; FIELDS]) {
        self.figures.copy_from_slice(&f[..FIGURES]);
        for (p, from) in self.pressure.iter_mut().zip(f[FIGURES..].chunks_exact(8)) {
            for (a, v) in p.avg.iter_mut().zip(from) {
                *a = u16::try_from(*v).unwrap_or(u16::MAX);
            }
            p.total_us.copy_from_slice(&from[6..]);
        }
    }

    fn figure(&self, i: usize) -> Option<u64> {
        (self.present & (1 << i) != 0).then_some(self.figures[i])
    }

    /// Folds `newer` (a later sample of the same task) into this point: the newest
    /// timestamp, counters and pressure totals; the largest gauges and averages.
    pub fn fold(&mut self, newer: &Point) {
        for i in 0..FIGURES {
            let Some(v) = newer.figure(i) else { continue };
            self.figures[i] = if GAUGES.contains(&i) && self.figure(i).is_some() {
                self.figures[i].max(v)
            } else {
                v
            };
        }
        for i in 0..3 {
            if newer.present & (1 << (PRESSURE_BIT + 2 * i)) != 0 {
                if self.present & (1 << (PRESSURE_BIT + 2 * i)) != 0 {
                    self.pressure[i].fold(&newer.pressure[i]);
                } else {
                    self.pressure[i] = newer.pressure[i];
                }
            }
        }
        self.present |= newer.present;
        self.timestamp_ns = self.timestamp_ns.max(newer.timestamp_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_survives_the_round_trip() {
        let u = TaskUsage {
            task_id: "t".into(),
            timestamp_ns: 7,
            cpu_user_ns: Some(1),
            io_write_ops: Some(0),
            mem_swap_bytes: Some(u64::MAX),
            memory_pressure: Some(Pressure {
                some_avg10: 1.25,
                some_total_us: 9,
                full_avg10: Some(0.5),
                full_avg60: Some(0.0),
                full_avg300: Some(0.0),
                full_total_us: Some(3),
                ..Default::default()
            }),
            io_pressure: Some(Pressure::default()),
            ..Default::default()
        };
        assert_eq!(Point::from_wire(&u).to_wire("t"), u);
        assert_eq!(std::mem::size_of::<Point>(), 248);
    }

    #[test]
    fn folding_keeps_peaks_of_gauges_and_the_newest_counters() {
        let a = TaskUsage {
            timestamp_ns: 1,
            cpu_user_ns: Some(10),
            mem_current_bytes: Some(500),
            ..Default::default()
        };
        let b = TaskUsage {
            timestamp_ns: 2,
            cpu_user_ns: Some(20),
            mem_current_bytes: Some(100),
            pids_current: Some(3),
            ..Default::default()
        };
        let mut p = Point::from_wire(&a);
        p.fold(&Point::from_wire(&b));
        let u = p.to_wire("t");
        assert_eq!(
            (
                u.timestamp_ns,
                u.cpu_user_ns,
                u.mem_current_bytes,
                u.pids_current
            ),
            (2, Some(20), Some(500), Some(3))
        );
    }
}
