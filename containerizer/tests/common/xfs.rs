//! An XFS filesystem with project quotas on a loop device, for the disk quota tests
//! (shared by the containerizer's and `cella exec`'s tests). Needs `mkfs.xfs`
//! (xfsprogs) and a kernel with XFS quotas (`CONFIG_XFS_QUOTA`; the VM of tests/vm
//! loads `xfs` and carries `mkfs.xfs`).

use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;

/// Under `CELLA_TEST_STRICT=1` a test that cannot run fails; otherwise it says why.
pub fn cannot_run(why: &str) {
    assert!(
        std::env::var_os("CELLA_TEST_STRICT").is_none_or(|v| v != "1"),
        "{why} (CELLA_TEST_STRICT=1: a test that cannot run fails instead of skipping)"
    );
    eprintln!("not run: {why}");
}

/// An XFS filesystem mounted with `prjquota` on a loop device, unmounted and its loop
/// device detached on drop (also when the test fails).
pub struct XfsMount {
    dir: tempfile::TempDir,
    loop_dev: Option<String>,
}

impl XfsMount {
    pub fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Makes and mounts it; `Err(why)` when this machine cannot.
    pub fn new() -> Result<Self, String> {
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
