//! `cella exec`: the task's namespaces and the filesystem it sees, with and without
//! `--rootfs`.

mod exec_harness;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use exec_harness::{RUN_COUNTER, Sandbox, make_rootfs};

// ---------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------

fn host_ns(kind: &str) -> String {
    fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap_or_else(|e| panic!("readlink /proc/self/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn task_is_pid_1_with_own_namespaces() {
    let out = Sandbox::run_sh(
        &[],
        "echo pid=$$; for n in pid mnt ipc uts net; do echo $n=$(readlink /proc/self/ns/$n); done",
    );
    out.assert_code(0);
    out.check(
        out.stdout.lines().any(|l| l == "pid=1"),
        "the task must be pid 1 in its namespace",
    );
    for kind in ["pid", "mnt", "ipc", "uts"] {
        let host = host_ns(kind);
        out.check(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{kind}={kind}:["))),
            format!("the task printed no {kind} namespace"),
        );
        out.stdout_lacks(
            &format!("{kind}={host}"),
            format!("the task shares the host's {kind} namespace {host}"),
        );
    }
    out.stdout_has(
        &format!("net={}", host_ns("net")),
        "--net host (the default) must share the host's network namespace",
    );
}

#[test]
fn hostname_is_private() {
    let before = fs::read_to_string("/proc/sys/kernel/hostname").expect("read hostname");
    let out = Sandbox::run_sh(&["--hostname", "h1"], "hostname");
    out.assert_code(0);
    out.check_eq(out.stdout.trim(), "h1", "hostname inside the task");
    let after = fs::read_to_string("/proc/sys/kernel/hostname").expect("read hostname");
    assert_eq!(before, after, "the host's hostname changed");
}

#[test]
fn net_none_has_only_loopback_and_it_is_up() {
    let out = Sandbox::run_sh(
        &["--net", "none"],
        "cat /proc/net/dev; echo ---; ip link show lo; echo ns=$(readlink /proc/self/ns/net)",
    );
    out.assert_code(0);
    let (dev, rest) = out.stdout.split_once("---").expect("separator");
    let ifaces: Vec<&str> = dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    out.check_eq(
        ifaces.as_slice(),
        ["lo"].as_slice(),
        "--net none: only lo may exist",
    );
    let flags = rest
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(f, _)| f)
        .unwrap_or("");
    out.check(flags.split(',').any(|f| f == "UP"), "lo must be UP");
    out.stdout_lacks(
        &host_ns("net"),
        "--net none must have its own network namespace",
    );
}

// ---------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------

/// A name no other test or run uses, for files a task tries to create on the host.
fn probe_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        RUN_COUNTER.load(Ordering::SeqCst)
    )
}

#[test]
fn host_tree_is_read_only() {
    let tag = probe_name("cella-probe");
    for dir in ["/etc", "/usr", "/"] {
        let target = Path::new(dir).join(&tag);
        let out = Sandbox::run_sh(&[], &format!("echo x > {}", target.display()));
        out.check(
            out.code != 0,
            format!("writing {} must fail", target.display()),
        );
        assert!(
            !target.exists(),
            "the task created {} on the host",
            target.display()
        );
    }
}

#[test]
fn workdir_and_private_tmp_are_writable() {
    let sb = Sandbox::new();
    let tag = probe_name("cella-tmp-probe");
    let script = format!("echo wd > ./in-workdir && echo tmp > /tmp/{tag} && cat /tmp/{tag}");
    let out = sb.sh(&[], &script);
    out.assert_code(0);
    out.check_eq(out.stdout.trim(), "tmp", "/tmp must be writable");
    out.check_eq(
        fs::read_to_string(sb.path().join("in-workdir"))
            .ok()
            .as_deref(),
        Some("wd\n"),
        "a file written in the working directory must be on the host",
    );
    assert!(
        !Path::new("/tmp").join(&tag).exists(),
        "/tmp must be private: /tmp/{tag} appeared on the host"
    );
}

#[test]
fn volumes_ro_and_rw() {
    let sb = Sandbox::new();
    let ro_host = sb.out().join("ro");
    let rw_host = sb.out().join("rw");
    fs::create_dir(&ro_host).expect("mkdir");
    fs::create_dir(&rw_host).expect("mkdir");
    fs::write(ro_host.join("data"), "ro-content\n").expect("write");
    // Without --rootfs the task path must exist: mount points inside the working dir.
    fs::create_dir(sb.path().join("vro")).expect("mkdir");
    fs::create_dir(sb.path().join("vrw")).expect("mkdir");
    let ro = format!(
        "{}:{}:ro",
        ro_host.display(),
        sb.path().join("vro").display()
    );
    let rw = format!(
        "{}:{}:rw",
        rw_host.display(),
        sb.path().join("vrw").display()
    );
    let script = "cat ./vro/data; if echo x > ./vro/new; then echo ro-written; fi; echo rw-data > ./vrw/new && echo rw-ok";
    let out = sb.sh(&["--volume", &ro, "--volume", &rw], script);
    out.assert_code(0);
    out.stdout_has("ro-content", "the :ro volume must be readable");
    out.stdout_lacks("ro-written", "the :ro volume must not be writable");
    assert!(
        !ro_host.join("new").exists(),
        "a file appeared in the :ro volume's host directory"
    );
    out.stdout_has("rw-ok", "the :rw volume must be writable");
    assert_eq!(
        fs::read_to_string(rw_host.join("new")).ok().as_deref(),
        Some("rw-data\n"),
        "the :rw write must reach the host"
    );
}

#[test]
fn root_task_cannot_use_devices_or_mount() {
    // mknod may be refused, or succeed on a nodev mount where opening fails.
    let script = "mknod ./blk b 7 0 2>/dev/null; if head -c 1 ./blk > /dev/null 2>&1; then echo DEVICE-OPENED; fi; \
                  mkdir ./m && if mount -t tmpfs none ./m; then echo MOUNTED; fi; echo end";
    let out = Sandbox::run_sh(&[], script);
    out.assert_code(0);
    out.stdout_has("end", "the script did not finish");
    out.stdout_lacks(
        "DEVICE-OPENED",
        "a root task opened a block device it created",
    );
    out.stdout_lacks(
        "MOUNTED",
        "a root task mounted a tmpfs (it must lack CAP_SYS_ADMIN)",
    );
}

// ---------------------------------------------------------------------------------
// --rootfs
// ---------------------------------------------------------------------------------

#[test]
fn rootfs_is_the_whole_view_and_read_only() {
    let sb = Sandbox::new();
    let root = make_rootfs();
    let root_arg = root.path().to_string_lossy().into_owned();
    let script = "ls /; echo ---; if [ -e /work ] || [ -e /usr ]; then echo HOST-VIS\"\"IBLE; fi; \
                  echo cmdline=$(tr '\\0' ' ' < /proc/1/cmdline); \
                  echo probe > /dev/null && echo devnull-ok; \
                  if touch /rootfs-probe 2>/dev/null; then echo ROOT-WRIT\"\"ABLE; fi; id -u";
    let out = sb.run(&["--rootfs", root_arg.as_str()], &["/bin/sh", "-c", script]);
    out.assert_code(0);
    out.stdout_lacks("HOST-VISIBLE", "the host's tree is visible inside --rootfs");
    out.check(
        out.stdout.lines().any(|l| l == "bin"),
        "ls / must list the rootfs",
    );
    out.stdout_has("cmdline=/bin/sh -c", "/proc must be the task's own");
    out.stdout_has("devnull-ok", "/dev/null must work");
    out.stdout_lacks("ROOT-WRITABLE", "the rootfs must be read-only");
    assert!(
        !root.path().join("rootfs-probe").exists(),
        "the task wrote into the rootfs"
    );
    out.check(out.stdout.lines().any(|l| l == "0"), "default user is root");

    let out = sb.run(
        &["--rootfs", root_arg.as_str(), "--user", "app"],
        &["/bin/sh", "-c", "id -u"],
    );
    out.assert_code(0);
    out.check_eq(
        out.stdout.trim(),
        "1234",
        "--user app must come from the rootfs's /etc/passwd",
    );
}
