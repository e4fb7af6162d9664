//! `cella exec --disk`: how far a task writing as fast as it can gets past its limit,
//! on an XFS filesystem with project quotas (exactly the limit, the kernel refuses the
//! rest) and on a filesystem without (the sandbox is walked; at most twice the limit).
//!
//! The XFS filesystem is made on a loop device in a temporary directory; it needs
//! `mkfs.xfs` (xfsprogs) and a kernel with XFS quotas (`CONFIG_XFS_QUOTA`, as Debian's;
//! the VM of tests/vm: `CELLA_VM_MODULES="veth overlay loop xfs"
//! CELLA_VM_EXTRA_FILES=/usr/sbin/mkfs.xfs`). Without them the test fails under
//! `CELLA_TEST_STRICT=1` and otherwise says why and returns.

mod exec_harness;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use exec_harness::{MIB, Sandbox};

/// An XFS filesystem mounted with `prjquota` on a loop device, unmounted and its loop
/// device detached on drop (also when the test fails).
struct XfsMount {
    dir: tempfile::TempDir,
    loop_dev: Option<String>,
}

impl XfsMount {
    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Makes and mounts it; `Err(why)` when this machine cannot.
    fn new() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("cella-xfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(300 * MIB))
            .map_err(|e| format!("creating {}: {e}", image.display()))?;
        let mut mount = XfsMount {
            dir,
            loop_dev: None,
        };
        std::fs::create_dir(mount.mount_point()).map_err(|e| e.to_string())?;
        run("mkfs.xfs", &["-q".as_ref(), image.as_os_str()])
            .map_err(|e| format!("{e} (install xfsprogs: scripts/install-test-deps.sh)"))?;
        let point = mount.mount_point();
        run(
            "mount",
            &[
                "-t".as_ref(),
                "xfs".as_ref(),
                "-o".as_ref(),
                "loop,prjquota".as_ref(),
                image.as_os_str(),
                point.as_os_str(),
            ],
        )
        .map_err(|e| format!("{e} (does the kernel have XFS with quotas, CONFIG_XFS_QUOTA?)"))?;
        mount.loop_dev = source_of(&point);
        Ok(mount)
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let point = self.mount_point();
        if run("umount", &[point.as_os_str()]).is_err() {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
        // `mount -o loop` asks for the device to be detached at unmount; make sure.
        if let Some(dev) = &self.loop_dev {
            let _ = run("losetup", &["-d".as_ref(), dev.as_ref()]);
        }
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The device mounted at `point` (from /proc/self/mountinfo).
fn source_of(point: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (Path::new(fields.get(4)?) == point)
            .then(|| fields.get(dash + 2).map(|s| (*s).to_string()))?
    })
}

/// Bytes allocated under `dir`.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map_or(0, |m| m.blocks() * 512))
        .sum()
}

/// Under `CELLA_TEST_STRICT=1` a test that cannot run fails; otherwise it says why.
fn cannot_run(why: &str) {
    assert!(
        std::env::var_os("CELLA_TEST_STRICT").is_none_or(|v| v != "1"),
        "{why} (CELLA_TEST_STRICT=1: a test that cannot run fails instead of skipping)"
    );
    eprintln!("not run: {why}");
}

/// As fast as it can: 100 MiB in 1 MiB writes into one file.
const WRITER: &str = "dd if=/dev/zero of=./big bs=1048576 count=100";

#[test]
fn xfs_project_quota_holds_a_fast_writer_to_its_limit() {
    let xfs = match XfsMount::new() {
        Ok(m) => m,
        Err(why) => {
            cannot_run(&format!("no XFS filesystem with project quotas: {why}"));
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
        cannot_run(
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
