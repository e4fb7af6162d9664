#!/usr/bin/env python3
"""Where does the time of one `cella exec` launch go? (perf-free: strace only)

    breakdown.py [--runs N] [--out FILE] -- CELLA exec [OPTIONS] -- COMMAND

Runs the command N times (default 30) under
`strace -f -ttt -T --seccomp-bpf -e trace=<a few marker syscalls>` and cuts each
launch into phases between marker syscalls of the three processes involved: the
launcher (`cella exec`), the shim (`cella-shim`) and the task (the shim's child in the
new namespaces). With --seccomp-bpf only the marker syscalls stop the tracee, so the
distortion is a few tens of microseconds per marker (about 80 markers per launch
with --rootfs); the script measures it and reports it (traced total vs. untraced
median) so the phases can be read with that in mind. Prints a Markdown table of the
median (and p90) of each phase to stdout.

Phases (L = launcher, S = shim, T = task):
  L exec + runtime init + argument parsing   execve(cella)        -> getcwd
  L cgroup discovery (mountinfo, /proc/self/cgroup) getcwd        -> first mkdir
  L cgroup creation (mkdir in every hierarchy) first mkdir         -> mkdir of the run dir
  L run dir, spec.json, events FIFO          run dir mkdir        -> clone3 (spawn)
  L spawn the shim (vfork + exec)            clone3               -> execve(cella-shim)
  S exec + runtime init + spec parsing       execve(cella-shim)   -> setsid
  S shim.pid (write + fsync)                 setsid               -> clone3 (namespaces)
  S clone3 into new pid/mnt/uts/ipc ns       clone3 entry         -> clone3 return
  S attach the child to the cgroups          clone3 return        -> last cgroup.procs write
  S task.pid (write + fsync), release child  last cgroup.procs    -> write "g"
  T wake-up                                  write "g"            -> first mount
  T mounts (private, rootfs, /tmp, /proc, /dev, pivot_root, read-only) first mount -> last mount
  T cwd, program lookup, capabilities, no_new_privs  last mount   -> close_range
  T seccomp filter load                      close_range          -> execve(task)
  T exec the command and run it to exit      execve(task)         -> task's exit_group
  S task exit + namespace teardown + reap    task exit_group      -> shim's wait4 returns
  S exit_status (write + fsync), exit        wait4 return         -> shim exit_group
  L notice the exit (poll on pidfd, wait4)   shim exit_group      -> launcher's wait4 returns
  L final usage sample, read exit status     wait4 return         -> first rmdir
  L cleanup (rmdir cgroups, run dir)         first rmdir          -> launcher exit_group
  L process exit                             exit_group           -> exited
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MARKERS = "execve,getcwd,mkdir,clone3,setsid,fsync,write,mount,close_range,wait4,rmdir,exit_group"

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
CALL = re.compile(r"^([a-z_0-9]+)\((.*)$")
RESUMED = re.compile(r"^<\.\.\. ([a-z_0-9]+) resumed>(.*)$")
DURATION = re.compile(r"<(\d+\.\d+)>\s*$")


class Call:
    __slots__ = ("pid", "name", "start", "end", "args")

    def __init__(self, pid, name, start, args):
        self.pid, self.name, self.start, self.args, self.end = pid, name, start, args, None


def parse(path):
    """Calls in start order, each with start and end time (seconds), and exit times."""
    calls, pending, exited = [], {}, {}
    with open(path, errors="replace") as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.startswith("+++ exited") or rest.startswith("+++ killed"):
                exited[pid] = ts
                continue
            if rest.startswith("---"):
                continue
            r = RESUMED.match(rest)
            if r:
                call = pending.pop(pid, None)
                if call is not None:
                    call.args += r.group(2)
                    d = DURATION.search(rest)
                    call.end = call.start + float(d.group(1)) if d else ts
                continue
            c = CALL.match(rest)
            if not c:
                continue
            call = Call(pid, c.group(1), ts, c.group(2))
            calls.append(call)
            if rest.endswith("<unfinished ...>"):
                pending[pid] = call
            else:
                d = DURATION.search(rest)
                call.end = ts + float(d.group(1)) if d else ts
    for call in calls:
        if call.end is None:
            call.end = call.start
    return calls, exited


def phases(calls, exited):
    """The phase durations (ms) of one launch, or raise ValueError."""
    if not calls:
        raise ValueError("empty trace")
    launcher = calls[0].pid
    shim_exec = next(c for c in calls if c.name == "execve" and "cella-shim" in c.args.split(",")[0])
    shim = shim_exec.pid
    task = next(c.pid for c in calls if c.pid not in (launcher, shim))

    def first(pid, name, pred=lambda c: True, after=0.0):
        for c in calls:
            if c.pid == pid and c.name == name and c.start >= after and pred(c):
                return c
        raise ValueError(f"no {name} in pid {pid}")

    def last(pid, name, pred=lambda c: True):
        found = [c for c in calls if c.pid == pid and c.name == name and pred(c)]
        if not found:
            raise ValueError(f"no {name} in pid {pid}")
        return found[-1]

    l_exec = first(launcher, "execve")
    l_cwd = first(launcher, "getcwd")
    l_mkdir = first(launcher, "mkdir")
    l_rundir = first(launcher, "mkdir", lambda c: "/tasks/" in c.args)
    l_spawn = first(launcher, "clone3")
    s_setsid = first(shim, "setsid")
    s_clone = first(shim, "clone3", lambda c: "CLONE_NEWPID" in c.args)
    # (v1) the shim writes the task's pid to each cgroup.procs file.
    procs = lambda c: f'"{task}"' in c.args
    try:
        s_procs_last = last(shim, "write", procs)
    except ValueError:  # cgroup v2: clone3(CLONE_INTO_CGROUP), nothing to write
        s_procs_last = s_clone
    s_go = first(shim, "write", lambda c: '"g"' in c.args, after=s_procs_last.start)
    t_mount_first = first(task, "mount")
    t_mount_last = last(task, "mount")
    t_close = first(task, "close_range")
    t_exec = first(task, "execve")
    t_exit = last(task, "exit_group")
    s_wait = first(shim, "wait4")
    s_exit = last(shim, "exit_group")
    l_wait = first(launcher, "wait4", after=s_exit.start)
    l_rmdir = first(launcher, "rmdir", after=l_wait.start)
    l_exit = last(launcher, "exit_group")
    l_gone = exited.get(launcher, l_exit.end)

    ms = lambda a, b: (b - a) * 1000.0
    return [
        ("L exec + runtime init + argument parsing", ms(l_exec.start, l_cwd.start)),
        ("L cgroup discovery (mountinfo, /proc/self/cgroup)", ms(l_cwd.start, l_mkdir.start)),
        ("L cgroup creation (mkdir in every hierarchy)", ms(l_mkdir.start, l_rundir.start)),
        ("L run dir, spec.json, events FIFO", ms(l_rundir.start, l_spawn.start)),
        ("L spawn the shim (vfork + exec)", ms(l_spawn.start, shim_exec.start)),
        ("S exec + runtime init + spec parsing", ms(shim_exec.start, s_setsid.start)),
        ("S shim.pid (write + fsync)", ms(s_setsid.start, s_clone.start)),
        ("S clone3 into new pid/mnt/uts/ipc namespaces", ms(s_clone.start, s_clone.end)),
        ("S attach the child to its cgroups (cgroup.procs)", ms(s_clone.end, s_procs_last.end)),
        ("S task.pid (write + fsync), release the child", ms(s_procs_last.end, s_go.end)),
        ("T wake-up after the go byte", ms(s_go.end, t_mount_first.start)),
        ("T mounts (private, rootfs, /tmp, /proc, /dev, /sys, pivot_root, read-only)",
         ms(t_mount_first.start, t_mount_last.end)),
        ("T cwd, program lookup, capabilities, no_new_privs", ms(t_mount_last.end, t_close.start)),
        ("T seccomp filter load (close_range -> execve)", ms(t_close.start, t_exec.start)),
        ("T exec the command, run it to exit", ms(t_exec.start, t_exit.start)),
        ("S task exit + namespace teardown + reap (wait4)", ms(t_exit.start, s_wait.end)),
        ("S exit_status (write + fsync), shim exit", ms(s_wait.end, s_exit.start)),
        ("L notice the shim's exit (pidfd poll, wait4)", ms(s_exit.start, l_wait.end)),
        ("L final usage sample, read exit status", ms(l_wait.end, l_rmdir.start)),
        ("L cleanup (rmdir cgroups, remove run dir)", ms(l_rmdir.start, l_exit.start)),
        ("L process exit", ms(l_exit.start, l_gone)),
        ("= total (traced, launcher execve -> launcher exited)", ms(l_exec.start, l_gone)),
    ], {
        "fsync_ms": sum(ms(c.start, c.end) for c in calls if c.name == "fsync"),
        "procs_writes_ms": [round(ms(c.start, c.end), 3) for c in calls if c.pid == shim and c.name == "write" and procs(c)],
        "markers": len(calls),
    }


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    argv = sys.argv[1:]
    runs, out = 30, None
    while argv and argv[0] != "--":
        opt = argv.pop(0)
        if opt == "--runs":
            runs = int(argv.pop(0))
        elif opt == "--out":
            out = argv.pop(0)
        else:
            sys.exit(__doc__)
    if not argv:
        sys.exit(__doc__)
    cmd = argv[1:]

    # Untraced reference (same loop, no strace) to size the tracing overhead.
    plain = []
    for _ in range(max(10, runs)):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        plain.append((time.perf_counter() - t0) * 1000)

    per_phase, extras = {}, []
    with tempfile.TemporaryDirectory(prefix="cella-breakdown-") as tmp:
        for i in range(runs):
            trace = os.path.join(tmp, f"t{i}")
            subprocess.run(
                ["strace", "-f", "-ttt", "-T", "--seccomp-bpf", "-e", "trace=" + MARKERS,
                 "-s", "64", "-o", trace, "--"] + cmd,
                check=True,
            )
            calls, exited = parse(trace)
            try:
                ph, extra = phases(calls, exited)
            except (ValueError, StopIteration) as e:
                print(f"breakdown: run {i}: {e}", file=sys.stderr)
                continue
            extras.append(extra)
            for name, v in ph:
                per_phase.setdefault(name, []).append(v)
    if not extras:
        sys.exit("breakdown: no usable trace")

    lines = [
        f"Launch breakdown of `{' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}` "
        f"({len(extras)} traced runs; strace -f --seccomp-bpf, {extras[0]['markers']} marker syscalls per launch)",
        "",
        "| phase | median ms | p90 ms |",
        "|---|---:|---:|",
    ]
    for name, xs in per_phase.items():
        bold = "**" if name.startswith("=") else ""
        lines.append(f"| {bold}{name}{bold} | {bold}{statistics.median(xs):.3f}{bold} | {pct(xs, 0.9):.3f} |")
    traced = statistics.median(per_phase[list(per_phase)[-1]])
    untraced = statistics.median(plain)
    lines += [
        "",
        f"Untraced median of the same command (python wall clock, incl. its fork/exec): {untraced:.2f} ms; "
        f"traced median {traced:.2f} ms: tracing adds about {traced - untraced:.2f} ms "
        f"(~{(traced - untraced) * 1000 / max(1, extras[0]['markers']):.0f} us per marker), "
        "spread over the phases in proportion to their marker count.",
        f"fsync total per launch (median): {statistics.median(e['fsync_ms'] for e in extras):.3f} ms; "
        f"cgroup.procs writes (first run, ms each): {extras[0]['procs_writes_ms']}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
