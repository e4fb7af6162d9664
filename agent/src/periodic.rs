//! The timer of the agent's background loops (re-sends, usage samples, garbage
//! collection): a tick every period, until the agent stops.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Ticks every `period` (late ticks are delayed, not bunched up) until `stop` is set.
pub struct Periodic {
    tick: Interval,
    stop: watch::Receiver<bool>,
}

impl Periodic {
    pub fn new(period: Duration, stop: watch::Receiver<bool>) -> Periodic {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Periodic { tick, stop }
    }

    /// Waits for the next tick; false once the agent stops (then the loop ends).
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => {}
            _ = self.stop.changed() => return false,
        }
        !*self.stop.borrow()
    }
}
