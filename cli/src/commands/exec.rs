//! `cella exec`: run one command under the isolation the agent uses, pass its
//! stdio through, and exit with its exit code.
//!
//! Exit codes: the command's own; 128+N when a signal N killed it; 125 when Cella
//! failed before the command started; 126 when the command is not executable; 127
//! when it is not found; 2 for invalid options (nothing was created).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use cella_containerizer::containerizer::Termination;
use cella_containerizer::task::{DEFAULT_DISK_BYTES, DEFAULT_PIDS_LIMIT, Resources, Stdio};
use cella_containerizer::units::{self, MilliCpus, format_bytes};
use cella_containerizer::usage::next_sample_in;
use cella_containerizer::{
    Containerizer, ContainerizerConfig, LaunchError, Limitation, NetMode, SeccompChoice,
    StartFailure, TaskConfig, TaskId, Volume,
};
use clap::Args;
use serde::Serialize;

pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CELLA_FAILED: i32 = StartFailure::Setup.exit_code();

/// How often usage is sampled while the task runs, after its first second (sampled
/// every 10 ms).
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a task may take to exit after a forwarded Ctrl-C or SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Run directories of `cella exec` (a tmpfs on most systems).
pub(super) const RUNTIME_DIR: &str = "/run/cella/exec";

/// Run a command isolated, limited and measured, like a Cella task.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: the command's; 128+N if killed by signal N; 125 if Cella failed; \
126 if the command is not executable; 127 if not found; 2 for invalid options."
)]
pub struct ExecArgs {
    /// CPUs (decimal, e.g. 0.5): a CFS quota and a proportional weight.
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    cpus: Option<MilliCpus>,
    /// Memory limit, e.g. 64MiB, 1GiB, 500M or bytes; the kernel kills the task past it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    mem: Option<u64>,
    /// Maximum number of processes and threads [default: 4096].
    #[arg(long, value_name = "N", value_parser = parse_pids, allow_negative_numbers = true)]
    pids: Option<u64>,
    /// Disk limit for what the task adds to the working directory and /tmp; writes
    /// past it fail or Cella kills the task [default: 10GiB]. Files already in the
    /// working directory at the start do not count: their size is the baseline, and
    /// only the growth is limited.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    disk: Option<u64>,
    /// Network: the host's stack, or a private namespace with only loopback.
    #[arg(long, value_name = "host|none", default_value = "host", value_parser = parse_net)]
    net: NetMode,
    /// A root filesystem directory to pivot_root into (read-only).
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    /// Run from a container image: HOST[:PORT]/REPO[:TAG][@DIGEST], a short name
    /// (against --default-registry), oci:DIR[:TAG] or a `docker save` archive (.tar).
    /// Its entrypoint, command, environment, user and working directory apply; a
    /// COMMAND replaces the image's command.
    #[arg(long, value_name = "REF")]
    pub(super) image: Option<String>,
    /// With --image: keep the image's root filesystem read-only.
    #[arg(long, requires = "image")]
    read_only: bool,
    #[command(flatten)]
    pub(super) store: crate::image_store::StoreArgs,
    /// Run as NAME, UID or UID:GID (looked up in the rootfs's /etc/passwd with --rootfs).
    #[arg(long, value_name = "USER")]
    pub(super) user: Option<String>,
    /// Environment variable for the command (repeatable); the host's is not passed on.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub(super) env: Vec<String>,
    /// Working directory: writable by the task (default: the current directory).
    /// With --rootfs, a path inside the rootfs (default /); with --image, a path
    /// inside the image (default: the image's, else the sandbox).
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Make a host path visible to the task: HOST:TASK[:ro|rw] (repeatable; default rw).
    #[arg(long = "volume", short = 'v', value_name = "HOST:TASK[:ro|rw]", value_parser = parse_volume)]
    volumes: Vec<Volume>,
    /// Pass a host device into the task's private /dev, e.g. /dev/fuse (repeatable):
    /// the node appears at the same path and the task's cgroup allows reading and
    /// writing it. No other device beyond null, zero, full, random, urandom, tty and
    /// pseudo-terminals can be opened.
    #[arg(long = "device", value_name = "/dev/NAME")]
    devices: Vec<PathBuf>,
    /// The task's hostname (it has its own UTS namespace).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// default, unconfined, or a profile FILE in Docker's JSON format.
    #[arg(long, value_name = "default|unconfined|FILE", default_value = "default", value_parser = parse_seccomp)]
    seccomp: SeccompChoice,
    /// Add a capability to Docker's default set (repeatable; ALL for every one).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from the default set (repeatable; ALL for every one).
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Print a usage table on stderr when the command ends.
    #[arg(long)]
    usage: bool,
    /// Write usage as JSON to FILE when the command ends ("-" for stdout).
    #[arg(long, value_name = "FILE")]
    usage_json: Option<PathBuf>,
    /// Create the task's cgroups under this path of each hierarchy (absolute), or
    /// relative to Cella's own cgroup. Default: <own cgroup>/cella.
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// The command and its arguments (with --image: instead of the image's command).
    #[arg(required_unless_present = "image", last = true, value_name = "COMMAND")]
    pub(super) command: Vec<String>,
}

pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

pub fn parse_cpus_arg(s: &str) -> Result<MilliCpus, String> {
    parse_cpus(s)
}

pub fn parse_pids_arg(s: &str) -> Result<u64, String> {
    parse_pids(s)
}

fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_size(s).map_err(|e| e.to_string())
}

fn parse_cpus(s: &str) -> Result<MilliCpus, String> {
    units::parse_cpus(s).map_err(|e| e.to_string())
}

fn parse_pids(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "invalid process count {s:?}: use a whole number greater than zero"
        )),
    }
}

fn parse_net(s: &str) -> Result<NetMode, String> {
    match s {
        "host" => Ok(NetMode::Host),
        "none" => Ok(NetMode::None),
        _ => Err(format!("invalid network mode {s:?}: use host or none")),
    }
}

fn parse_seccomp(s: &str) -> Result<SeccompChoice, String> {
    match s {
        "default" => Ok(SeccompChoice::Default),
        "unconfined" => Ok(SeccompChoice::Unconfined),
        "" => Err("empty seccomp value: use default, unconfined or a profile file".into()),
        file => Ok(SeccompChoice::Profile(PathBuf::from(file))),
    }
}

fn parse_volume(s: &str) -> Result<Volume, String> {
    let bad = || format!("invalid volume {s:?}: use HOST:TASK, HOST:TASK:ro or HOST:TASK:rw");
    let parts: Vec<&str> = s.split(':').collect();
    let (host, task, read_only) = match parts.as_slice() {
        [h, t] => (h, t, false),
        [h, t, "ro"] => (h, t, true),
        [h, t, "rw"] => (h, t, false),
        _ => return Err(bad()),
    };
    if host.is_empty() || task.is_empty() {
        return Err(bad());
    }
    Ok(Volume {
        host: PathBuf::from(host),
        task: PathBuf::from(task),
        read_only,
    })
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn catch_stop_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(remember_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("cella: {message}");
    code
}

pub fn run(args: ExecArgs) -> i32 {
    if args.image.is_some() {
        return super::exec_image::run(args);
    }
    run_with(args, None)
}

/// Runs the task; `image` gives the image's layers, its settings applied, and the
/// sandbox that holds the task's writable layer.
pub(super) fn run_with(mut args: ExecArgs, image: Option<super::exec_image::ImageTask>) -> i32 {
    if let Some(image) = &image {
        args.command = image.settings.command.clone();
        args.env = image.settings.env.clone();
        args.user = image.settings.user.clone();
        args.workdir = args.workdir.clone().or(image.settings.working_dir.clone());
    }
    let sandbox = match (&args.rootfs, &image) {
        (_, Some(image)) => Ok(image.sandbox.clone()),
        (Some(_), None) => std::env::current_dir(),
        (None, None) => args.workdir.clone().map_or_else(std::env::current_dir, Ok),
    };
    let sandbox = match sandbox {
        Ok(dir) => dir,
        Err(e) => {
            return fail(
                EXIT_CELLA_FAILED,
                format!("cannot read the current directory: {e}"),
            );
        }
    };
    let mut config = TaskConfig::new(args.command.clone(), sandbox);
    config.env = args.env.clone();
    config.resources = Resources {
        cpus: args.cpus,
        memory_bytes: args.mem,
        pids: Some(args.pids.unwrap_or(DEFAULT_PIDS_LIMIT)),
        disk_bytes: Some(args.disk.unwrap_or(DEFAULT_DISK_BYTES)),
    };
    config.net = args.net;
    config.rootfs = args.rootfs.clone();
    if args.rootfs.is_some() {
        config.workdir_in_task = Some(args.workdir.clone().unwrap_or_else(|| PathBuf::from("/")));
    }
    if let Some(image) = &image {
        config.image = Some(cella_containerizer::ImageRootfs {
            layers: image.layers.clone(),
            read_only: args.read_only,
        });
        config.workdir_in_task = args.workdir.clone();
    }
    config.volumes = args.volumes.clone();
    config.devices = args.devices.clone();
    config.hostname = args.hostname.clone();
    config.user = args.user.clone();
    config.seccomp = args.seccomp.clone();
    config.cap_add = args.cap_add.clone();
    config.cap_drop = args.cap_drop.clone();
    config.stdio = Stdio::Inherit;
    // Every task has a disk limit (--disk or the default), so the disk is always
    // measured. An existing working directory is not the task's doing: the
    // containerizer limits the whole tree, so its limit is what is there now plus the
    // limit, and the figures shown subtract the baseline again.
    config.measure_disk = true;
    let known = image.as_ref().and_then(|image| image.sandbox_bytes);
    let disk_baseline = known
        .or_else(|| cella_containerizer::isolators::disk_usage(&config.sandbox).ok())
        .unwrap_or(0);
    config.sandbox_bytes_at_launch = Some(disk_baseline);
    config.resources.disk_bytes = Some(
        args.disk
            .unwrap_or(DEFAULT_DISK_BYTES)
            .saturating_add(disk_baseline),
    );

    let containerizer = match Containerizer::new(ContainerizerConfig {
        shim_path: ContainerizerConfig::default_shim_path(),
        runtime_dir: PathBuf::from(RUNTIME_DIR),
        cgroup_root: args.cgroup_root.clone(),
        cleanup_if_orphaned: true,
        hidden: Vec::new(),
        systemd_slice: None,
    }) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CELLA_FAILED, e),
    };
    let id = match TaskId::new(task_id()) {
        Ok(id) => id,
        Err(e) => return fail(EXIT_CELLA_FAILED, e),
    };

    catch_stop_signals();
    let mut running = match containerizer.launch(&id, &config) {
        Ok(r) => r,
        Err(LaunchError::Invalid(e)) => return fail(EXIT_USAGE, e),
        Err(LaunchError::Setup(e)) => return fail(EXIT_CELLA_FAILED, e),
        Err(LaunchError::Start { code, message }) => return fail(code, message),
    };

    let mut stop_deadline: Option<Instant> = None;
    loop {
        let next = next_sample_in(running.age(), SAMPLE_INTERVAL);
        if containerizer.wait(&mut running, next) {
            break;
        }
        containerizer.sample(&mut running);
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            if stop_deadline.is_some() {
                // A second Ctrl-C: stop now.
                let _ = containerizer.kill(&running);
            } else if let Ok(signal) = nix::sys::signal::Signal::try_from(sig) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(running.pid), signal);
                stop_deadline = Some(Instant::now() + STOP_GRACE);
            }
        }
        // The task runs as its namespace's init, which ignores signals it has no
        // handler for: past the grace period it is killed.
        if stop_deadline.is_some_and(|d| Instant::now() > d) {
            let _ = containerizer.kill(&running);
        }
    }
    let mut end = containerizer.finish(running);
    end.peaks.disk_peak_bytes = end
        .peaks
        .disk_peak_bytes
        .map(|b| b.saturating_sub(disk_baseline));
    explain_limitation(&end, &args);
    if end.status.signal == Some(libc::SIGSYS) {
        let profile = match &args.seccomp {
            SeccompChoice::Default => Some("default".to_string()),
            SeccompChoice::Unconfined => None,
            SeccompChoice::Profile(path) => Some(path.display().to_string()),
        };
        eprintln!(
            "cella: {}",
            cella_containerizer::seccomp::sigsys_explanation(profile.as_deref())
        );
    }
    if let (SeccompChoice::Profile(path), Some(_)) = (&args.seccomp, end.status.signal)
        && end.status.signal != Some(libc::SIGSYS)
        && let Some(why) = cella_containerizer::seccomp::startup_explanation(path)
    {
        eprintln!("cella: {why}");
    }
    if let Some((_, why)) = &end.status.launch_failure {
        eprintln!("cella: {why}");
    }
    if args.usage {
        eprint!("{}", usage_table(&end, containerizer.cgroups().version()));
    }
    if let Some(path) = &args.usage_json {
        let json = usage_json(&end, containerizer.cgroups().version());
        let text = serde_json::to_string_pretty(&json).unwrap_or_default() + "\n";
        let written = if path.as_os_str() == "-" {
            std::io::stdout().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        };
        if let Err(e) = written {
            eprintln!("cella: writing usage to {}: {e}", path.display());
        }
    }
    end.status.shell_code()
}

/// The task's id, also the lease an image is held by while it runs.
pub(super) fn task_id() -> String {
    format!("exec-{}", std::process::id())
}

fn explain_limitation(end: &Termination, args: &ExecArgs) {
    let limit = |v: Option<u64>| v.map(format_bytes).unwrap_or_else(|| "?".into());
    match end.limitation {
        Some(Limitation::MemoryLimit) => eprintln!(
            "cella: memory limit of {} reached: the kernel killed the task (MEMORY_LIMIT)",
            limit(args.mem)
        ),
        Some(Limitation::DiskLimit) => eprintln!(
            "cella: disk limit of {} reached (growth of the working directory, and /tmp): writes past it failed or Cella killed the task (DISK_LIMIT)",
            limit(Some(args.disk.unwrap_or(DEFAULT_DISK_BYTES)))
        ),
        Some(Limitation::PidsLimit) => eprintln!(
            "cella: process limit of {} reached: the task could not create more processes (PIDS_LIMIT)",
            args.pids.unwrap_or(DEFAULT_PIDS_LIMIT)
        ),
        None => {}
    }
}

/// The usage JSON of `--usage-json`: exactly these keys, null where unknown.
#[derive(Serialize)]
struct UsageJson {
    wall_ns: u64,
    cpu_user_ns: Option<u64>,
    cpu_system_ns: Option<u64>,
    cpu_throttled_ns: Option<u64>,
    cpu_nr_throttled: Option<u64>,
    mem_peak_bytes: Option<u64>,
    mem_anon_bytes: Option<u64>,
    mem_file_bytes: Option<u64>,
    mem_kernel_bytes: Option<u64>,
    mem_swap_bytes: Option<u64>,
    oom_kills: Option<u64>,
    pids_peak: Option<u64>,
    io_read_bytes: Option<u64>,
    io_write_bytes: Option<u64>,
    io_read_ops: Option<u64>,
    io_write_ops: Option<u64>,
    disk_peak_bytes: Option<u64>,
    started_ns: u64,
    ended_ns: u64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    limitation: Option<&'static str>,
    cgroup_version: u8,
}

fn usage_json(end: &Termination, cgroup_version: u8) -> UsageJson {
    let u = &end.usage;
    let p = &end.peaks;
    UsageJson {
        wall_ns: u64::try_from(end.wall.as_nanos()).unwrap_or(u64::MAX),
        cpu_user_ns: u.cpu_user_ns,
        cpu_system_ns: u.cpu_system_ns,
        cpu_throttled_ns: u.cpu_throttled_ns,
        cpu_nr_throttled: u.cpu_nr_throttled,
        mem_peak_bytes: p.mem_peak_bytes,
        mem_anon_bytes: p.mem_anon_bytes,
        mem_file_bytes: p.mem_file_bytes,
        mem_kernel_bytes: p.mem_kernel_bytes,
        mem_swap_bytes: p.mem_swap_bytes,
        oom_kills: u.oom_kills,
        pids_peak: p.pids_peak,
        io_read_bytes: u.io_read_bytes,
        io_write_bytes: u.io_write_bytes,
        io_read_ops: u.io_read_ops,
        io_write_ops: u.io_write_ops,
        disk_peak_bytes: p.disk_peak_bytes,
        started_ns: end.started_ns,
        ended_ns: end.ended_ns,
        exit_code: end
            .status
            .code
            .or(end.status.launch_failure.as_ref().map(|(c, _)| *c)),
        signal: end.status.signal,
        limitation: end.limitation.map(Limitation::as_str),
        cgroup_version,
    }
}

fn usage_table(end: &Termination, cgroup_version: u8) -> String {
    let j = usage_json(end, cgroup_version);
    let secs = |ns: Option<u64>| {
        ns.map_or_else(|| "-".to_string(), |ns| format!("{:.3} s", ns as f64 / 1e9))
    };
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_string(), format_bytes);
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let rows: [(&str, String); 19] = [
        ("wall time", secs(Some(j.wall_ns))),
        ("cpu user", secs(j.cpu_user_ns)),
        ("cpu system", secs(j.cpu_system_ns)),
        (
            "cpu throttled",
            format!(
                "{} ({} periods)",
                secs(j.cpu_throttled_ns),
                count(j.cpu_nr_throttled)
            ),
        ),
        ("memory peak", bytes(j.mem_peak_bytes)),
        ("memory anon", bytes(j.mem_anon_bytes)),
        ("memory file", bytes(j.mem_file_bytes)),
        ("memory kernel", bytes(j.mem_kernel_bytes)),
        ("memory swap", bytes(j.mem_swap_bytes)),
        ("oom kills", count(j.oom_kills)),
        ("processes peak", count(j.pids_peak)),
        ("io read", bytes(j.io_read_bytes)),
        ("io written", bytes(j.io_write_bytes)),
        ("io reads", count(j.io_read_ops)),
        ("io writes", count(j.io_write_ops)),
        ("disk peak", bytes(j.disk_peak_bytes)),
        (
            "exit",
            match (j.exit_code, j.signal) {
                (Some(c), _) => format!("code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "-".into(),
            },
        ),
        ("limitation", j.limitation.unwrap_or("none").to_string()),
        ("cgroup version", format!("v{}", j.cgroup_version)),
    ];
    let mut out = String::from("cella: usage (- = not offered by this kernel)\n");
    for (name, value) in rows {
        out.push_str(&format!("  {name:<15} {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v = parse_volume("/a:/b:ro").unwrap();
        assert_eq!(
            (v.host, v.task, v.read_only),
            (PathBuf::from("/a"), PathBuf::from("/b"), true)
        );
        assert!(!parse_volume("/a:/b").unwrap().read_only);
        for bad in ["", "/a", ":/b", "/a:", "/a:/b:x", "/a:/b:ro:rw"] {
            assert!(parse_volume(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pids_and_net() {
        assert_eq!(parse_pids("5"), Ok(5));
        assert!(parse_pids("0").is_err() && parse_pids("-1").is_err() && parse_pids("x").is_err());
        assert!(parse_net("bridge").is_err());
    }
}
