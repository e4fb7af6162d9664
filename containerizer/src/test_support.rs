//! Helpers for the crate's unit tests.

/// Reports a test that cannot run on this machine (no root, a missing package). Under
/// `CELLA_TEST_STRICT=1`, which scripts/test.sh sets, that is a failure: it panics with
/// `why`. Otherwise it says why on stderr and the caller returns.
pub fn cannot_run(why: &str) {
    if std::env::var_os("CELLA_TEST_STRICT").is_some_and(|v| v == "1") {
        panic!("{why} (CELLA_TEST_STRICT=1: a test that cannot run fails instead of skipping)");
    }
    eprintln!("not run: {why}");
}
