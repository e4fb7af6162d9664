//! `cella exec --image` with an OCI image layout the test writes itself (no registry,
//! no tools but the host's busybox-static), so that it runs unchanged in the cgroup v2
//! VM: the overlay root, the image's configuration, a command override, a read-only
//! root, the writable layer counted against `--disk`, its sandbox made ahead and
//! removed after the task, and tasks at once on the shared mount point of their roots.

mod exec_harness;

/// The image crate's layout writers (they reach for two tools of its registry
/// module, which this test does not need).
#[path = "../../image/tests/common/images.rs"]
#[allow(dead_code)]
mod images;
mod registry {
    pub fn require_tool(tool: &str) {
        panic!("{tool} is not used by this test");
    }
    pub fn run(command: &mut std::process::Command) -> String {
        panic!("{command:?} is not used by this test");
    }
}

use std::path::{Path, PathBuf};

use exec_harness::{MIB, Sandbox};
use images::{Compression, layer, write_image};

const APPLETS: [&str; 12] = [
    "sh", "echo", "cat", "id", "pwd", "ls", "touch", "head", "sleep", "true", "test", "mkdir",
];

/// Two layers: busybox with a few applets, /etc and /tmp; then /etc/hello and /data.
/// Entrypoint `/bin/sh -c`, command `echo hi`, `GREETING=hello`, working dir /data.
fn busybox_image(dir: &Path) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (busybox-static): run scripts/install-test-deps.sh");
    let base = layer(Compression::Gzip, |t| {
        t.dir("bin/", 0o755).file("bin/busybox", &busybox, 0o755);
        for applet in APPLETS {
            t.symlink(&format!("bin/{applet}"), "busybox");
        }
        t.dir("etc/", 0o755)
            .file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
                0o644,
            )
            .file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)
            .dir("tmp/", 0o1777);
    });
    let top = layer(Compression::None, |t| {
        t.file("etc/hello", b"from the second layer\n", 0o644)
            .dir("data/", 0o755);
    });
    let layout = dir.join("layout");
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    write_image(
        &layout,
        "latest",
        arch,
        &[base, top],
        serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/data",
        }),
    );
    layout
}

fn image_opts(sb: &Sandbox, extra: &[&str]) -> Vec<String> {
    let layout = busybox_image(sb.out());
    let mut opts = vec![
        "--image".to_string(),
        format!("oci:{}:latest", layout.display()),
        "--image-store".to_string(),
        sb.out().join("store").display().to_string(),
    ];
    opts.extend(extra.iter().map(|s| (*s).to_string()));
    opts
}

/// Runs `script` as the command of the image (whose entrypoint is `sh -c`) and
/// asserts that it exits 0 having printed exactly `stdout`.
#[track_caller]
fn assert_prints(sb: &Sandbox, opts: &[String], script: &str, stdout: &str, what: &str) {
    let out = sb.run(opts, &[script.to_string()]);
    out.assert_code(0);
    out.check_eq(out.stdout.as_str(), stdout, what);
}

#[test]
fn the_image_config_applies_and_a_command_replaces_its_command() {
    let sb = Sandbox::new();
    let opts = image_opts(&sb, &[]);
    let out = sb.run::<String>(&opts, &[]);
    out.assert_code(0);
    out.check_eq(
        out.stdout.as_str(),
        "hi\n",
        "the image's entrypoint and command",
    );

    let script =
        "echo $GREETING from $(pwd) as $(id -u); cat /etc/hello; echo x > /written && cat /written";
    assert_prints(
        &sb,
        &opts,
        script,
        "hello from /data as 0\nfrom the second layer\nx\n",
        "the override with the image's env, working dir, layers and a writable root",
    );
}

#[test]
fn a_read_only_image_root_refuses_writes() {
    let sb = Sandbox::new();
    let opts = image_opts(&sb, &["--read-only"]);
    assert_prints(
        &sb,
        &opts,
        "echo x > /written || echo refused; echo y > /tmp/y && cat /tmp/y",
        "refused\ny\n",
        "/ read-only, /tmp writable",
    );
}

#[test]
fn writes_to_the_image_root_count_against_disk() {
    let sb = Sandbox::new();
    let opts = image_opts(&sb, &["--disk", "4MiB"]);
    let bytes = 8 * MIB;
    let out = sb.run(
        &opts,
        &[format!("head -c {bytes} /dev/zero > /big && sleep 30")],
    );
    out.check_eq(out.limitation(), Some("DISK_LIMIT"), "the disk limitation");
}

/// The names in `dir` (none when it is missing).
fn names(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// After a task its sandbox (with what it wrote) is removed and empty ones are made
/// ahead; the next launch takes one of those.
#[test]
fn the_sandbox_goes_after_the_task_and_the_next_launch_takes_one_made_ahead() {
    use exec_harness::poll_until;
    use std::time::Duration;

    let sb = Sandbox::new();
    let opts = image_opts(&sb, &[]);
    let sandboxes = sb.out().join("store/sandboxes");
    let ready = sandboxes.join("ready");
    // Only the pool's own entries: no sandbox in use, and two ready.
    let tidied = || {
        let all = names(&sandboxes);
        all.iter().all(|n| n == "ready" || n == "lock") && names(&ready).len() == 2
    };
    let out = sb.run(&opts, &["echo x > /written".to_string()]);
    out.assert_code(0);
    assert!(
        poll_until(Duration::from_secs(30), tidied),
        "the task's sandbox was removed and two made ahead: {:?} {:?}",
        names(&sandboxes),
        names(&ready)
    );
    let before = names(&ready);
    assert_prints(
        &sb,
        &opts,
        "test ! -e /written && echo fresh",
        "fresh\n",
        "an empty writable layer",
    );
    assert!(
        poll_until(Duration::from_secs(30), tidied),
        "{:?} {:?}",
        names(&sandboxes),
        names(&ready)
    );
    assert!(
        !before.is_subset(&names(&ready)),
        "the launch took a sandbox made ahead: {before:?} then {:?}",
        names(&ready)
    );
}

/// A directory the test opens a gate in (a file `go`), seen by the task as `/gate`,
/// and the image options with it as a volume.
fn gated_image_opts(sb: &Sandbox) -> (PathBuf, Vec<String>) {
    let gate = sb.out().join("gate");
    std::fs::create_dir(&gate).unwrap();
    let volume = format!("{}:/gate", gate.display());
    let opts = image_opts(sb, &["--volume", &volume]);
    (gate, opts)
}

/// `cella images --image-store STORE ARGS…` (the store directly: no agent).
fn images(store: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(exec_harness::cella_bin())
        .arg("images")
        .arg("--image-store")
        .arg(store)
        .args(args)
        .output()
        .expect("run cella images")
}

/// The image's lease held by `cella exec` is released by its death (kill -9) once the
/// task that uses the image has ended too: GC then collects the image.
#[test]
fn a_lease_of_a_killed_exec_is_released_when_its_task_ends() {
    use exec_harness::{CgroupGuard, KillOnDrop, poll_until};
    use std::time::Duration;

    let sb = Sandbox::new();
    let (gate, opts) = gated_image_opts(&sb);
    let store = sb.out().join("store");
    let (mut command, _, cgroup, _) = sb.command(
        &opts,
        &["while ! test -e /gate/go; do sleep 1; done".to_string()],
    );
    let _cgroup_guard = CgroupGuard(cgroup);
    let mut cella = KillOnDrop::spawn_quiet(&mut command);
    let lease = store.join("leases");
    let listed = |needle: &str| {
        let out = images(&store, &[]);
        String::from_utf8_lossy(&out.stdout).contains(needle)
    };
    let holder = format!("exec-{}", cella.0.id());
    // The lease, written once, names cella exec and the lock its shim holds (the run
    // directory's spec.json); the task runs once the shim has recorded its pid.
    let run_dir = Path::new("/run/cella/exec/tasks").join(&holder);
    let running = poll_until(Duration::from_secs(30), || {
        let spec = run_dir.join("spec.json").display().to_string();
        let named = std::fs::read_dir(&lease).is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| {
                    t.matches("\"pid\"").count() == 1
                        && t.contains(&format!("\"lock\": \"{spec}\""))
                })
            })
        });
        named && run_dir.join("task.pid").exists()
    });
    assert!(running, "cella exec did not start the task");
    assert!(listed(&holder), "{:?}", images(&store, &[]));

    cella.0.kill().expect("kill -9 cella exec");
    let _ = cella.0.wait();
    // The task still runs from the image (its shim outlives cella exec): kept.
    let out = images(&store, &["gc"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        listed(&holder),
        "the running task's image was kept: {:?}",
        images(&store, &[])
    );

    // The task ends: nothing holds the lease any more; GC removes it and the image.
    std::fs::write(gate.join("go"), "").unwrap();
    let collected = poll_until(Duration::from_secs(30), || {
        images(&store, &["gc"]);
        std::fs::read_dir(store.join("images")).is_ok_and(|d| d.count() == 0)
    });
    assert!(collected, "the image stayed: {:?}", images(&store, &[]));
    assert!(
        std::fs::read_dir(&lease).is_ok_and(|d| d.count() == 0),
        "the abandoned lease was removed"
    );
}

/// Every image task's root is mounted on one directory of the runtime directory, each
/// in its own mount namespace: two tasks running at once see their own roots only, the
/// host sees an empty directory, and no task has a mount point of its own to remove.
#[test]
fn image_tasks_at_once_share_the_mount_point_and_see_their_own_roots() {
    use exec_harness::{CgroupGuard, KillOnDrop, poll_until};
    use std::io::Read as _;
    use std::time::Duration;

    let sb = Sandbox::new();
    let (gate, opts) = gated_image_opts(&sb);
    let mut running = Vec::new();
    for name in ["a", "b"] {
        let script = format!(
            "touch /written-by-{name} && touch /gate/{name} && \
             while ! test -e /gate/go; do sleep 1; done; ls / | grep written-by"
        );
        let (mut command, _, cgroup, _) = sb.command(&opts, &[script]);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let child = KillOnDrop(command.spawn().expect("start cella exec"));
        running.push((name, child, CgroupGuard(cgroup)));
    }
    let both = poll_until(Duration::from_secs(30), || {
        gate.join("a").exists() && gate.join("b").exists()
    });
    assert!(both, "the two tasks did not start");
    let shared = Path::new("/run/cella/exec/image-root");
    assert!(
        shared.is_dir() && names(shared).is_empty(),
        "the host sees the shared mount point empty: {:?}",
        names(shared)
    );
    for (_, child, _) in &running {
        let run_dir = Path::new("/run/cella/exec/tasks").join(format!("exec-{}", child.0.id()));
        assert!(
            !run_dir.join("rootfs").exists(),
            "no mount point in the run directory: {:?}",
            names(&run_dir)
        );
    }
    std::fs::write(gate.join("go"), "").unwrap();
    for (name, mut child, _guard) in running {
        let status = child.0.wait().expect("wait for cella exec");
        let mut stdout = String::new();
        child
            .0
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)
            .unwrap();
        assert!(status.success(), "task {name}: {status:?}");
        assert_eq!(
            stdout,
            format!("written-by-{name}\n"),
            "task {name}'s own root"
        );
    }
}
