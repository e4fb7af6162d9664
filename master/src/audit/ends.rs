//! The task ends the master remembers having recorded, so that a resent terminal
//! update is not recorded twice: the newest `capacity` of them, in the order they
//! were written; once a sync makes new ones durable, the oldest beyond `capacity`
//! are forgotten.
//!
//! Why the newest ones are enough: the master writes an end only for a task it
//! still tracks, and it tracks ended tasks only until `completed_tasks_kept` newer
//! ones have ended (they are forgotten oldest first). While it tracks a task, the
//! ends written after that task's end are of tasks ahead of it in that queue or
//! behind it, fewer than `completed_tasks_kept` each, and a task has at most one
//! end (an agent's update after a state the master decided is dropped, and a state
//! the master decides after a recorded end is not an end). So remembering
//! `2 × completed_tasks_kept` ends covers every task the master can still record.
//! The one case outside: an agent away for so long that its ended task was
//! forgotten, and that comes back with the terminal update it never had
//! acknowledged while more than `capacity` other tasks ended.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// How many ends a master that keeps `completed_tasks_kept` ended tasks remembers, so
/// that every end it can still be sent again is among them (see above).
pub const fn ends_to_keep(completed_tasks_kept: usize) -> usize {
    2 * completed_tasks_kept
}

/// The newest task ends recorded: (task id, update uuid), oldest first.
#[derive(Debug, Default)]
pub struct RecentEnds {
    capacity: usize,
    /// The task of every end remembered, in the order written (its id shared
    /// with `by_task`, where its uuids are in the same order).
    order: VecDeque<Arc<str>>,
    /// The update uuids of each task's remembered ends, oldest first (almost
    /// always one).
    by_task: HashMap<Arc<str>, Vec<Box<str>>>,
}

impl RecentEnds {
    /// Remembers at most `capacity` ends (at least one).
    pub fn new(capacity: usize) -> RecentEnds {
        RecentEnds {
            capacity: capacity.max(1),
            ..RecentEnds::default()
        }
    }

    /// How many ends are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether the end of `task_id` with update `uuid` is remembered.
    pub fn contains(&self, task_id: &str, uuid: &str) -> bool {
        self.by_task
            .get(task_id)
            .is_some_and(|uuids| uuids.iter().any(|u| &**u == uuid))
    }

    /// Whether any end of `task_id` is remembered.
    pub fn contains_task(&self, task_id: &str) -> bool {
        self.by_task.contains_key(task_id)
    }

    /// Remembers an end written after every one remembered. Nothing is forgotten
    /// here: until the end is synced it may be lost again ([`RecentEnds::forget_newest`]),
    /// and the ends forgotten to make room for it would be gone for nothing.
    pub fn push(&mut self, task_id: &str, uuid: &str) {
        let task = match self.by_task.get_key_value(task_id) {
            Some((task, _)) => Arc::clone(task),
            None => Arc::from(task_id),
        };
        self.by_task
            .entry(Arc::clone(&task))
            .or_default()
            .push(uuid.into());
        self.order.push_back(task);
    }

    /// Forgets the `n` newest ends (written, then lost again with a failed sync).
    pub fn forget_newest(&mut self, n: usize) {
        for _ in 0..n {
            let Some(task) = self.order.pop_back() else {
                return;
            };
            self.forget_end_of(&task, Vec::pop);
        }
    }

    /// Forgets the oldest ends beyond the capacity (once the newest are synced).
    pub fn trim(&mut self) {
        while self.order.len() > self.capacity {
            let Some(task) = self.order.pop_front() else {
                return;
            };
            self.forget_end_of(&task, |uuids| (!uuids.is_empty()).then(|| uuids.remove(0)));
        }
    }

    /// Removes one of `task`'s uuids (the one `take` picks), and the task when it
    /// has none left.
    fn forget_end_of(
        &mut self,
        task: &str,
        take: impl FnOnce(&mut Vec<Box<str>>) -> Option<Box<str>>,
    ) {
        if let Some(uuids) = self.by_task.get_mut(task) {
            take(uuids);
            if uuids.is_empty() {
                self.by_task.remove(task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_covers_the_ended_tasks_a_default_master_keeps() {
        assert_eq!(
            crate::audit::DEFAULT_ENDS_KEPT,
            ends_to_keep(crate::MasterConfig::default().completed_tasks_kept)
        );
    }

    #[test]
    fn the_oldest_end_is_forgotten_first() {
        let mut ends = RecentEnds::new(3);
        ends.push("a", "1");
        ends.push("b", "2");
        ends.push("a", "3");
        ends.push("c", "4");
        assert_eq!(ends.len(), 4, "nothing is forgotten before the trim");
        assert!(ends.contains("a", "1"));
        ends.trim();
        assert_eq!(ends.len(), 3);
        assert!(!ends.contains("a", "1"));
        assert!(ends.contains("a", "3"));
        assert!(ends.contains_task("a"));
        ends.push("d", "5");
        ends.push("e", "6");
        ends.trim();
        assert!(!ends.contains_task("a"), "both of a's ends are forgotten");
        assert!(!ends.contains_task("b"));
        assert!(ends.contains("e", "6"));
    }

    #[test]
    fn the_newest_ends_are_forgotten_after_a_failed_sync() {
        let mut ends = RecentEnds::new(10);
        ends.push("a", "1");
        ends.push("b", "2");
        ends.push("b", "");
        ends.forget_newest(2);
        assert!(ends.contains("a", "1"));
        assert!(!ends.contains_task("b"));
        ends.forget_newest(5);
        assert!(ends.is_empty());
    }

    #[test]
    fn ends_lost_with_a_failed_sync_do_not_push_older_ones_out() {
        let mut ends = RecentEnds::new(2);
        ends.push("a", "1");
        ends.push("b", "2");
        // Two more written, then lost again: a and b stay remembered.
        ends.push("c", "3");
        ends.push("d", "4");
        ends.forget_newest(2);
        ends.trim();
        assert!(ends.contains("a", "1"));
        assert!(ends.contains("b", "2"));
    }
}
