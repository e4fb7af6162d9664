//! Standard output that survives its reader going away. `println!` panics when
//! stdout is a pipe whose reader has closed it (`cella tasks | head -1`); [`outln!`]
//! and [`out!`] stop writing instead and let the command finish its work (a task
//! launched by `cella run --detach | head` stays launched) and exit as it would have.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout failed: nothing more is written.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes to stdout unless it has gone away; a failed write is not an error of the
/// command (the reader took what it wanted).
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

/// `print!` that does not panic on a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that does not panic on a closed stdout.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
