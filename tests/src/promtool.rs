//! `promtool check metrics`, as an operator's Prometheus set-up would judge a
//! `/metrics` answer. Also compiled into the master's tests (`#[path]`), so it uses
//! nothing but `std`.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether `promtool check metrics` passes `text` without a word; what it said
/// otherwise. Needs Debian's `prometheus` package (`scripts/install-test-deps.sh`).
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; see scripts/install-test-deps.sh)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool's answer");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
