//! `cella exec`: attacks on the host from inside a task, each expected to fail with
//! a named error. Devices: the private /dev and the cgroup's device allowlist.

mod exec_harness;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use exec_harness::Sandbox;

const EPERM: &str = "Operation not permitted";

/// Nodes of the host's devices an attacker wants, with the numbers they have on this
/// host (or the kernel's fixed ones).
const ATTACKED: [(&str, char, u32, u32); 5] = [
    ("loop0", 'b', 7, 0),
    ("kvm", 'c', 10, 232),
    ("userfaultfd", 'c', 10, 126),
    ("kmsg", 'c', 1, 11),
    ("mem", 'c', 1, 1),
];

/// A directory of the test's own holding nodes of `ATTACKED` and of null, as a
/// read-only volume at `hostdev` in the working directory (read-only volumes are not
/// `nodev`): the nodes are visible to the task, so only the device allowlist stops
/// them. (A volume of the host's /dev itself would show the task's own /dev, mounted
/// on top of it.)
fn with_host_nodes(sb: &Sandbox) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = sb.out().join("nodes");
    fs::create_dir(&dir).expect("mkdir");
    for (name, kind, major, minor) in ATTACKED.into_iter().chain([("null", 'c', 1, 3)]) {
        let host = Path::new("/dev").join(name);
        let (major, minor) = match fs::metadata(&host) {
            Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => {
                (libc::major(m.rdev()), libc::minor(m.rdev()))
            }
            _ => (major, minor),
        };
        let flag = if kind == 'b' {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFCHR
        };
        nix::sys::stat::mknod(
            &dir.join(name),
            flag,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
        )
        .unwrap_or_else(|e| panic!("mknod {name} in the test's directory: {e}"));
    }
    fs::create_dir(sb.path().join("hostdev")).expect("create the volume's mount point");
    format!(
        "{}:{}:ro",
        dir.display(),
        sb.path().join("hostdev").display()
    )
}

/// Prints `NAME: ok` when `head -c 1` could read from the node, else `NAME: <error>`.
fn open_each(dir: &str, names: &[&str]) -> String {
    let mut script = String::new();
    for name in names {
        script.push_str(&format!(
            "if err=$(head -c 1 {dir}/{name} 2>&1 >/dev/null); then echo '{name}: ok'; \
             else echo \"{name}: $err\"; fi\n"
        ));
    }
    script
}

fn line_of<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find(|l| l.starts_with(&format!("{name}: ")))
}

#[test]
fn a_task_sees_only_its_own_minimal_dev() {
    let out = Sandbox::run_sh(
        &[],
        "ls -a /dev; echo --; grep ' /dev' /proc/self/mountinfo",
    );
    out.assert_code(0);
    let (listing, mountinfo) = out.stdout.split_once("--\n").unwrap_or((&out.stdout, ""));
    let names: BTreeSet<&str> = listing
        .split_whitespace()
        .filter(|n| *n != "." && *n != "..")
        .collect();
    let want: BTreeSet<&str> = [
        "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
        "urandom", "zero",
    ]
    .into_iter()
    .collect();
    out.check_eq(
        names,
        want,
        "the task's /dev must hold the minimal set only",
    );
    // The host's mounts under /dev are still listed, covered: the last mount on a
    // point is the one the task sees.
    for (point, want) in [
        ("/dev", ["ro", "nosuid", "noexec"]),
        ("/dev/pts", ["nodev", "nosuid", "noexec"]),
        ("/dev/shm", ["nodev", "nosuid", "noexec"]),
    ] {
        let line = mountinfo
            .lines()
            .rfind(|l| l.split_whitespace().nth(4) == Some(point))
            .unwrap_or("");
        let opts: Vec<&str> = line
            .split_whitespace()
            .nth(5)
            .unwrap_or("")
            .split(',')
            .collect();
        for flag in want {
            out.check(
                opts.contains(&flag),
                format!("{point} must be {flag}: {line:?}"),
            );
        }
        if point == "/dev" {
            out.check(
                line.contains(" - tmpfs "),
                format!("/dev must be a tmpfs: {line:?}"),
            );
        }
    }
}

#[test]
fn host_devices_cannot_be_opened_even_through_a_volume() {
    let sb = Sandbox::new();
    let volume = with_host_nodes(&sb);
    let attacked: Vec<&str> = ATTACKED.iter().map(|a| a.0).collect();
    let mut script = open_each("hostdev", &attacked);
    // The same volume reaches null: the mount lets nodes through, the cgroup decides.
    script.push_str(&open_each("hostdev", &["null"]));
    let out = sb.sh(&["--volume", &volume], &script);
    out.assert_code(0);
    for name in &attacked {
        let line = line_of(&out.stdout, name).unwrap_or("missing");
        out.check(
            line.contains(EPERM),
            format!("opening the host's /dev/{name} must fail with EPERM, got {line:?}"),
        );
    }
    out.check_eq(
        line_of(&out.stdout, "null"),
        Some("null: ok"),
        "an allowed device through the same volume",
    );
}

#[test]
fn mknod_fails_for_every_device() {
    // Root in the task keeps CAP_MKNOD (Docker's set); the allowlist has no mknod.
    let script = "for spec in 'b 7 0' 'c 10 232' 'c 1 3'; do \
                  if err=$(mknod /dev/shm/node $spec 2>&1); then echo \"$spec: ok\"; rm -f /dev/shm/node; \
                  else echo \"$spec: $err\"; fi; done";
    let out = Sandbox::run_sh(&[], script);
    out.assert_code(0);
    for spec in ["b 7 0", "c 10 232", "c 1 3"] {
        let line = line_of(&out.stdout, spec).unwrap_or("missing");
        out.check(
            line.contains(EPERM),
            format!("mknod {spec} must fail with EPERM, got {line:?}"),
        );
    }
}

#[test]
fn a_device_passed_in_is_usable_and_only_that_one() {
    let sb = Sandbox::new();
    let script = "echo '<7>cella: a device passed in' > /dev/kmsg && echo kmsg-written";
    let out = sb.sh(&["--device", "/dev/kmsg"], script);
    out.assert_code(0);
    out.stdout_has("kmsg-written", "--device /dev/kmsg: writing it must work");
    let out = sb.sh(&[], script);
    out.check(out.code != 0, "without --device, /dev/kmsg must not exist");
    out.stdout_lacks("kmsg-written", "without --device, /dev/kmsg must not exist");

    let out = sb.sh(&["--device", "/etc/passwd"], "true");
    out.assert_code(2);
    out.stderr_has("--device", "the error names the option");
}

/// Size, mode, owner and modification time: what an attack on a binary would change.
fn fingerprint(path: &Path) -> (u64, u32, u32, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.size(), m.mode(), m.uid(), m.mtime(), m.mtime_nsec())
}

#[test]
fn the_shim_runs_from_a_sealed_copy() {
    use exec_harness::{CgroupGuard, KillOnDrop, all_cmdlines, poll_until, shim_bin};
    let sb = Sandbox::new();
    let (mut command, _args, cgroup, _usage) = sb.command(&[], &["sleep", "30"]);
    let _guard = CgroupGuard(cgroup);
    let mut cella = KillOnDrop::spawn_quiet(&mut command);
    let run_dir = format!("exec-{}", cella.0.id());
    let shim = shim_bin().to_string_lossy().into_owned();
    let mut exe = None;
    let found = poll_until(exec_harness::run_timeout(), || {
        exe = all_cmdlines()
            .into_iter()
            .find(|(_, cmd)| cmd.starts_with(&shim) && cmd.contains(&run_dir))
            .and_then(|(pid, _)| fs::read_link(format!("/proc/{pid}/exe")).ok());
        exe.is_some()
    });
    assert!(found, "no shim for {run_dir} appeared");
    let exe = exe.unwrap_or_default();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:cella-shim"),
        "the shim must run from a sealed memfd, not {}",
        exe.display()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(cella.0.id()).unwrap_or(0)),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM cella");
    let status = cella.0.wait().expect("wait for cella");
    // sleep is its namespace's init and ignores SIGTERM: cella kills it after a grace.
    assert!(
        matches!(status.code(), Some(143 | 137)),
        "cella exec must end with the task: {status:?}"
    );
}

#[test]
fn binaries_cannot_be_written_or_chmodded_from_a_task() {
    let shim = exec_harness::shim_bin();
    let before = fingerprint(&shim);
    let script = format!(
        "for f in /proc/self/exe {shim}; do \
           if err=$(chmod 4777 $f 2>&1); then echo \"chmod $f: ok\"; else echo \"chmod $f: $err\"; fi; \
           if err=$(chown 65534 $f 2>&1); then echo \"chown $f: ok\"; else echo \"chown $f: $err\"; fi; \
           if (echo x >> $f) 2>/dev/null; then echo \"append $f: ok\"; else echo \"append $f: failed\"; fi; \
         done",
        shim = shim.display()
    );
    let out = Sandbox::run_sh(&[], &script);
    out.assert_code(0);
    for f in ["/proc/self/exe".to_string(), shim.display().to_string()] {
        for what in ["chmod", "chown"] {
            let line = line_of(&out.stdout, &format!("{what} {f}")).unwrap_or("missing");
            out.check(
                line.contains("Read-only file system"),
                format!("{what} of {f} must fail with EROFS, got {line:?}"),
            );
        }
    }
    out.check_eq(
        fingerprint(&shim),
        before,
        "the host's cella-shim must be unchanged",
    );
}

#[test]
fn cella_state_and_host_secrets_are_masked() {
    let shim = exec_harness::shim_bin();
    let script = format!(
        "echo \"run: $(ls -A {run} | wc -l)\"; \
         echo \"shadow: $(wc -c < /etc/shadow)\"; \
         echo \"root: $(ls -A /root | wc -l)\"; \
         if [ -c {shim} ]; then echo 'shim: masked'; else echo 'shim: visible'; fi; \
         if head -c 1 {shim} | grep -q .; then echo 'shim-bytes: readable'; else echo 'shim-bytes: none'; fi",
        run = exec_harness::RUNTIME_DIR,
        shim = shim.display()
    );
    let out = Sandbox::run_sh(&[], &script);
    out.assert_code(0);
    // The task's own run directory exists on the host while it runs.
    out.check_eq(
        line_of(&out.stdout, "run"),
        Some("run: 0"),
        "run directories (launch specs) must be hidden",
    );
    if Path::new("/etc/shadow").exists() {
        out.check_eq(
            line_of(&out.stdout, "shadow"),
            Some("shadow: 0"),
            "/etc/shadow must read as empty",
        );
    }
    if Path::new("/root").is_dir() {
        out.check_eq(
            line_of(&out.stdout, "root"),
            Some("root: 0"),
            "/root must look empty",
        );
    }
    out.check_eq(
        line_of(&out.stdout, "shim"),
        Some("shim: masked"),
        "the host's cella-shim must be masked",
    );
    out.check_eq(
        line_of(&out.stdout, "shim-bytes"),
        Some("shim-bytes: none"),
        "no byte of the host's cella-shim is readable",
    );
}

/// `path` in `root` replaced by a symbolic link to `to`.
fn relink(root: &Path, path: &str, to: &Path) {
    let at = root.join(path);
    if at.is_dir() {
        fs::remove_dir(&at).expect("remove the directory");
    }
    std::os::unix::fs::symlink(to, &at).expect("symlink");
}

#[test]
fn a_rootfs_whose_system_directories_are_links_is_refused() {
    let sb = Sandbox::new();
    for (dir, to) in [("proc", "/"), ("dev", "/dev"), ("tmp", "/etc")] {
        let root = exec_harness::make_rootfs();
        relink(root.path(), dir, Path::new(to));
        let root_arg = root.path().to_string_lossy().into_owned();
        let out = sb.run(&["--rootfs", root_arg.as_str()], &["/bin/true"]);
        out.assert_code(125);
        out.stderr_has(
            &format!("mount target /{dir} goes through a symbolic link"),
            format!("a rootfs with /{dir} -> {to} must be refused, naming the path"),
        );
    }
}

#[test]
fn links_in_a_rootfs_resolve_inside_it() {
    let sb = Sandbox::new();
    let root = exec_harness::make_rootfs();
    // The sandbox's mount point /mnt/sandbox goes through a link to /etc, a volume's
    // target through a link to /srv: both must land in the rootfs, not on the host.
    relink(root.path(), "mnt", Path::new("/etc"));
    fs::create_dir(root.path().join("srv")).expect("mkdir");
    relink(root.path(), "data", Path::new("/srv"));
    let volume = sb.out().join("volume");
    fs::create_dir(&volume).expect("mkdir");
    fs::write(volume.join("marker"), "from-the-volume\n").expect("write");
    let root_arg = root.path().to_string_lossy().into_owned();
    let volume_arg = format!("{}:/data", volume.display());
    let out = sb.run(
        &[
            "--rootfs",
            root_arg.as_str(),
            "--volume",
            volume_arg.as_str(),
            "-w",
            "/mnt/sandbox",
        ],
        &[
            "/bin/sh",
            "-c",
            "cat /data/marker /srv/marker; echo written > ./probe",
        ],
    );
    out.assert_code(0);
    out.check_eq(
        out.stdout.matches("from-the-volume").count(),
        2,
        "the volume must be mounted (on the rootfs's /srv, which /data links to)",
    );
    out.check(
        sb.path().join("probe").is_file(),
        "the sandbox must be mounted through the link",
    );
    out.check(
        root.path().join("etc/sandbox").is_dir(),
        "the mount point must be made in the rootfs's /etc",
    );
    out.check(
        !Path::new("/etc/sandbox").exists(),
        "nothing may be created in the host's /etc",
    );

    // A link to a host directory that the rootfs lacks: refused, nothing created.
    let host_dir = sb.out().join("host-dir");
    fs::create_dir(&host_dir).expect("mkdir");
    let root = exec_harness::make_rootfs();
    relink(root.path(), "mnt", &host_dir);
    let root_arg = root.path().to_string_lossy().into_owned();
    let out = sb.run(&["--rootfs", root_arg.as_str()], &["/bin/true"]);
    out.assert_code(125);
    out.stderr_has(
        "mount target /mnt/sandbox is a symbolic link to nothing",
        "a dangling link is refused, naming the path",
    );
    out.check_eq(
        fs::read_dir(&host_dir).map(Iterator::count).unwrap_or(99),
        0,
        "nothing may be created in the host directory a link names",
    );
}

#[test]
fn raw_sockets_only_on_request() {
    use exec_harness::helper::helper_value;
    let sb = Sandbox::new();
    let out = sb.helper(&[], "raw-socket");
    out.assert_code(0);
    out.check_eq(
        helper_value(&out, "raw_socket_errno"),
        u64::try_from(libc::EPERM).unwrap_or(0),
        "a root task must not open a raw socket by default (CAP_NET_RAW dropped)",
    );
    let out = sb.helper(&["--cap-add", "NET_RAW"], "raw-socket");
    out.assert_code(0);
    out.check_eq(
        helper_value(&out, "raw_socket_errno"),
        0,
        "--cap-add NET_RAW gives raw sockets back",
    );
}

/// The default seccomp profile's socket rules, from inside a real task: the kernel's
/// crypto API (AF_ALG) and the hypervisor's sockets (AF_VSOCK) fail with EPERM, the
/// ordinary families open. Unconfined, the same calls reach the kernel, which answers
/// for itself (0, or EAFNOSUPPORT where it lacks the family): never EPERM.
#[test]
fn seccomp_battery_denies_kernel_crypto_and_vsock_sockets() {
    use exec_harness::helper::{SOCKETS, helper_value};
    let sb = Sandbox::new();
    let eperm = u64::try_from(libc::EPERM).unwrap_or(0);
    let confined = sb.helper(&[], "sockets");
    confined.assert_code(0);
    let unconfined = sb.helper(&["--seccomp", "unconfined"], "sockets");
    unconfined.assert_code(0);
    for (name, _, _) in SOCKETS {
        let key = format!("socket_{name}_errno");
        let denied = matches!(name, "alg" | "vsock");
        let errno = helper_value(&confined, &key);
        confined.check(
            (errno == eperm) == denied,
            format!("default profile: socket({name}) gave errno {errno}; denied must be {denied} (EPERM)"),
        );
        let errno = helper_value(&unconfined, &key);
        unconfined.check(
            errno != eperm,
            format!("unconfined: socket({name}) gave EPERM; only the profile may deny it"),
        );
    }
}

#[test]
fn a_system_directory_cannot_be_the_working_directory() {
    let sb = Sandbox::new();
    for dir in ["/etc", "/usr/share", "/"] {
        let out = sb.run(&["--workdir", dir], &["touch", "cella-probe"]);
        out.assert_code(2);
        out.stderr_has(
            "--workdir",
            format!("--workdir {dir} must be refused, naming the option"),
        );
        out.check(
            !Path::new(dir).join("cella-probe").exists(),
            format!("nothing may be written in {dir}"),
        );
    }
}
