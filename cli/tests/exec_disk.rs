//! `cella exec --disk`: how far a task writing as fast as it can gets past its limit,
//! on an XFS filesystem with project quotas (exactly the limit, the kernel refuses the
//! rest) and on a filesystem without (the sandbox is walked; at most twice the limit).
//!
//! The XFS filesystem is made on a loop device in a temporary directory; it needs
//! `mkfs.xfs` (xfsprogs) and a kernel with XFS quotas (`CONFIG_XFS_QUOTA`, as Debian's
//! and the VM of tests/vm). Without them the test fails under `CELLA_TEST_STRICT=1` and
//! otherwise says why and returns.

mod exec_harness;
#[path = "../../containerizer/tests/common/xfs.rs"]
mod xfs;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use exec_harness::{MIB, Sandbox};
use xfs::XfsMount;

/// Bytes allocated under `dir`.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
        .sum()
}

/// As fast as it can: 100 MiB in 1 MiB writes into one file.
const WRITER: &str = "dd if=/dev/zero of=./big bs=1048576 count=100";

#[test]
fn xfs_quota_holds_a_fast_writer_to_its_limit() {
    let xfs = match XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            xfs::cannot_run(&format!("no XFS filesystem with project quotas: {why}"));
            return;
        }
    };
    let sandbox = xfs.mount_point().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let sb = Sandbox::new();
    let workdir = sandbox.to_string_lossy().into_owned();
    let out = sb.sh(&["--disk", "10MiB", "--workdir", &workdir], WRITER);
    out.check(out.code != 0, "the writer must fail at the limit");
    out.check_eq(out.limitation(), Some("DISK_LIMIT"), "limitation");
    out.stderr_has("disk limit", "stderr must say the disk limit was reached");
    let written = allocated(&sandbox);
    out.check(
        written <= 11 * MIB,
        format!("{written} bytes in the sandbox, more than 1 MiB past the 10 MiB limit"),
    );
    let peak = out.num("disk_peak_bytes");
    out.check(
        peak <= 11 * MIB,
        format!("disk_peak_bytes {peak} more than 1 MiB past the limit"),
    );
    eprintln!("xfs quota: {written} bytes written into a 10 MiB limit");
}

#[test]
fn without_quotas_a_fast_writer_stays_below_twice_its_limit() {
    let sb = Sandbox::new();
    if cella_containerizer::isolators::QuotaFs::of(sb.path()).is_some() {
        xfs::cannot_run(
            "the temporary directory enforces project quotas: the walk is not what limits here",
        );
        return;
    }
    let out = sb.sh(&["--disk", "10MiB"], WRITER);
    out.assert_code(137);
    out.check_eq(out.limitation(), Some("DISK_LIMIT"), "limitation");
    let written = allocated(sb.path());
    out.check(
        written <= 20 * MIB,
        format!("{written} bytes in the sandbox, more than twice the 10 MiB limit"),
    );
    eprintln!("walk: {written} bytes written into a 10 MiB limit");
}
