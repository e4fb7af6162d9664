//! Notifications to the service manager (systemd's `Type=notify`, sd_notify(3)):
//! readiness, a status line, stopping, start-up time extensions and the watchdog.
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog is pinged by the loop that does a daemon's work ([`watchdog`]), so a
//! daemon whose work is stuck stops pinging and systemd restarts it.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        // Once: a broken socket would otherwise log every second.
        static WARNED: OnceLock<()> = OnceLock::new();
        if WARNED.set(()).is_ok() {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}

/// Start-up is done: READY=1, with the status line `status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=: what the daemon is doing, shown by `systemctl status`. Repeated text is
/// sent once.
pub fn status(text: &str) {
    static LAST: Mutex<String> = Mutex::new(String::new());
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *last != text {
        text.clone_into(&mut last);
        send(&[NotifyState::Status(text)]);
    }
}

/// STOPPING=1, with the status line `status`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// EXTEND_TIMEOUT_USEC=: start-up (or stop) takes longer; systemd waits `by` from now.
pub fn extend_timeout(by: Duration, status: &str) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status(status),
    ]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=` → WATCHDOG_USEC), if any.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(sd_notify::watchdog_enabled)
}

/// How often a work loop must come round for [`watchdog`] to keep systemd content:
/// a third of the interval (`None` without a watchdog).
pub fn watchdog_period() -> Option<Duration> {
    watchdog_interval().map(|i| i / 3)
}

/// WATCHDOG=1, at most every quarter of the interval: call it from the loop that
/// does the work, each time round.
pub fn watchdog() {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= interval / 4) {
        *last = Some(Instant::now());
        send(&[NotifyState::Watchdog]);
    }
}
