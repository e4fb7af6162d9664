//! Compact usage reports: the agent sends, after the first report of a stream, only
//! the figures that changed ([`encode_report`]), and the master rebuilds full samples
//! from the ones it holds ([`merge`]).
//!
//! A figure that is absent from a delta sample is unchanged. A figure the kernel stops
//! offering (present before, absent now) therefore keeps its last value on the master:
//! the protocol cannot say "gone", and kernels do not take figures back while a task
//! runs. A pressure message travels whole when any of its figures changed. A task
//! whose figures all stayed the same still travels as its id and timestamp (a few
//! bytes), so the master knows it was sampled and rates read 0, not unknown.

use std::collections::HashMap;

use crate::v1::{TaskUsage, agent_message::UsageReport};

/// Applies `$m!(field)` to every optional scalar figure of [`TaskUsage`] (pressure
/// messages are handled beside it), so encode and merge cannot disagree on the list.
macro_rules! each_figure {
    ($m:ident) => {
        $m!(cpu_user_ns);
        $m!(cpu_system_ns);
        $m!(cpu_throttled_ns);
        $m!(mem_current_bytes);
        $m!(mem_peak_bytes);
        $m!(mem_anon_bytes);
        $m!(mem_file_bytes);
        $m!(mem_kernel_bytes);
        $m!(oom_kills);
        $m!(pids_current);
        $m!(io_read_bytes);
        $m!(io_write_bytes);
        $m!(disk_used_bytes);
        $m!(mem_swap_bytes);
        $m!(cpu_nr_throttled);
        $m!(io_read_ops);
        $m!(io_write_ops);
        $m!(cpu_pressure);
        $m!(memory_pressure);
        $m!(io_pressure);
    };
}

/// The figures of `current` that differ from `previous` (all of them without a
/// previous sample), with its task id and timestamp.
pub fn encode(previous: Option<&TaskUsage>, current: &TaskUsage) -> TaskUsage {
    let Some(previous) = previous else {
        return current.clone();
    };
    let mut delta = TaskUsage {
        task_id: current.task_id.clone(),
        timestamp_ns: current.timestamp_ns,
        ..Default::default()
    };
    macro_rules! keep_changed {
        ($f:ident) => {
            if current.$f.is_some() && current.$f != previous.$f {
                delta.$f = current.$f.clone();
            }
        };
    }
    each_figure!(keep_changed);
    delta
}

/// The full sample that `delta` describes on top of `previous` (the latest full sample
/// of the same task, if any).
pub fn merge(previous: Option<&TaskUsage>, delta: TaskUsage) -> TaskUsage {
    let Some(previous) = previous else {
        return delta;
    };
    let mut full = delta;
    macro_rules! fill_unchanged {
        ($f:ident) => {
            if full.$f.is_none() {
                full.$f = previous.$f.clone();
            }
        };
    }
    each_figure!(fill_unchanged);
    full
}

/// The report to send after `previous` (the last full report sent on this stream):
/// `current` itself when there is none, otherwise a delta report. The node's totals
/// always travel whole (one small message).
pub fn encode_report(previous: Option<&UsageReport>, current: &UsageReport) -> UsageReport {
    let Some(previous) = previous else {
        return UsageReport {
            delta: false,
            ..current.clone()
        };
    };
    let before: HashMap<&str, &TaskUsage> = previous
        .tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t))
        .collect();
    UsageReport {
        tasks: current
            .tasks
            .iter()
            .map(|t| encode(before.get(t.task_id.as_str()).copied(), t))
            .collect(),
        node: current.node.clone(),
        delta: true,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::v1::Pressure;

    fn pressure() -> impl Strategy<Value = Option<Pressure>> {
        proptest::option::of(
            (0u8..3, any::<u64>(), proptest::option::of(0u8..3)).prop_map(|(avg, total, full)| {
                Pressure {
                    some_avg10: f64::from(avg),
                    some_total_us: total % 3,
                    full_avg10: full.map(f64::from),
                    ..Default::default()
                }
            }),
        )
    }

    /// Samples with few distinct values, so that equal and changed figures both occur.
    fn sample() -> impl Strategy<Value = TaskUsage> {
        let figure = || proptest::option::of(0u64..3);
        (
            proptest::collection::vec(figure(), 17),
            pressure(),
            pressure(),
            pressure(),
            any::<u64>(),
        )
            .prop_map(|(f, cpu, mem, io, ts)| TaskUsage {
                task_id: "t".into(),
                timestamp_ns: ts,
                cpu_user_ns: f[0],
                cpu_system_ns: f[1],
                cpu_throttled_ns: f[2],
                mem_current_bytes: f[3],
                mem_peak_bytes: f[4],
                mem_anon_bytes: f[5],
                mem_file_bytes: f[6],
                mem_kernel_bytes: f[7],
                oom_kills: f[8],
                pids_current: f[9],
                io_read_bytes: f[10],
                io_write_bytes: f[11],
                disk_used_bytes: f[12],
                mem_swap_bytes: f[13],
                cpu_nr_throttled: f[14],
                io_read_ops: f[15],
                io_write_ops: f[16],
                cpu_pressure: cpu,
                memory_pressure: mem,
                io_pressure: io,
            })
    }

    /// What the master holds after `current`: its figures, and the previous value of
    /// any figure `current` lacks (see the module's note on figures that go away).
    fn sticky(previous: &TaskUsage, current: &TaskUsage) -> TaskUsage {
        merge(Some(previous), current.clone())
    }

    proptest! {
        #[test]
        fn merge_of_encode_rebuilds_the_sample(prev in sample(), cur in sample()) {
            let expected = sticky(&prev, &cur);
            let delta = encode(Some(&prev), &cur);
            prop_assert_eq!(&delta.task_id, &cur.task_id);
            prop_assert_eq!(delta.timestamp_ns, cur.timestamp_ns);
            prop_assert_eq!(merge(Some(&prev), delta), expected);
        }

        #[test]
        fn a_full_sample_round_trips_without_a_previous_one(cur in sample()) {
            let delta = encode(None, &cur);
            prop_assert_eq!(merge(None, delta), cur);
        }

        #[test]
        fn a_chain_of_deltas_tracks_the_samples(samples in proptest::collection::vec(sample(), 1..8)) {
            // The agent compares with the sample it last sent, the master merges into
            // the one it holds: every figure the agent measured reaches the master.
            let mut sent: Option<TaskUsage> = None;
            let mut held: Option<TaskUsage> = None;
            for cur in samples {
                let expected = match &held { Some(h) => sticky(h, &cur), None => cur.clone() };
                held = Some(merge(held.as_ref(), encode(sent.as_ref(), &cur)));
                prop_assert_eq!(held.clone().unwrap(), expected);
                sent = Some(cur);
            }
        }
    }

    #[test]
    fn an_unchanged_task_is_its_id_and_timestamp_and_the_first_report_is_full() {
        let a = TaskUsage {
            task_id: "a".into(),
            cpu_user_ns: Some(1),
            ..Default::default()
        };
        let b = TaskUsage {
            task_id: "b".into(),
            cpu_user_ns: Some(1),
            ..Default::default()
        };
        let first = UsageReport {
            tasks: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let full = encode_report(None, &first);
        assert!(!full.delta);
        assert_eq!(full.tasks.len(), 2);
        let next = UsageReport {
            tasks: vec![
                a,
                TaskUsage {
                    cpu_user_ns: Some(2),
                    mem_current_bytes: Some(10),
                    ..b
                },
            ],
            ..Default::default()
        };
        let delta = encode_report(Some(&first), &next);
        assert!(delta.delta);
        let a = TaskUsage {
            task_id: "a".into(),
            ..Default::default()
        };
        assert_eq!(delta.tasks[0], a, "nothing changed");
        assert_eq!(delta.tasks[1].task_id, "b");
        assert_eq!(delta.tasks[1].cpu_user_ns, Some(2));
        assert_eq!(delta.tasks[1].mem_current_bytes, Some(10));
    }
}
