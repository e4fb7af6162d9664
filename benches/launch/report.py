#!/usr/bin/env python3
"""Helpers of benches/launch/run.sh (not meant to be run by hand).

    report.py procmem PID LABEL        one JSON line: VmRSS/RssAnon/RssFile/RssShmem (status)
                                       and Pss/Pss_Anon/Pss_File/Private_* (smaps_rollup), KiB
    report.py fsync DIR [N]            median/p90 latency (ms) of write+fsync+rename in DIR
    report.py median WORKDIR KEY       median (ms) of one variant, e.g. cella-rootfs
    report.py render WORKDIR           the Markdown report from WORKDIR/{meta,*.json,mem.jsonl}
"""

import glob
import json
import os
import statistics
import sys
import time

GOAL_RATIO = 0.5
GOAL_ABS_MS = 3.5
GOAL_RSS_KIB = 1.5 * 1024

# (key, label) in table order; the key is the hyperfine command name (-n) or, for the
# crun runs (one hyperfine benchmark per container id), derived from the bundle path.
VARIANTS = [
    ("cella-rootfs", "(a) `cella exec --rootfs ROOT -- /bin/true` (default isolation, seccomp on)"),
    ("cella-rootfs-unconfined", "(b) `cella exec --rootfs ROOT --seccomp unconfined -- /bin/true`"),
    ("cella-host", "(c) `cella exec -- /bin/true` (no rootfs: host tree read-only, seccomp on)"),
    ("crun-seccomp", "(d) `crun run` (same rootfs, equivalent seccomp allowlist)"),
    ("crun-noseccomp", "(e) `crun run` without seccomp"),
    ("unshare", "(f) `unshare --pid --mount --net --uts --ipc --fork /bin/true`"),
]


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def procmem(pid, label):
    out = {"label": label, "pid": int(pid)}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Name", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                v = value.strip()
                out[key] = int(v.split()[0]) if v.endswith("kB") or v.isdigit() else v
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty",
                           "Shared_Clean", "Shared_Dirty"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    print(json.dumps(out))


def fsync_probe(directory, n=20):
    xs = []
    tmp, final = os.path.join(directory, ".fsync-probe.tmp"), os.path.join(directory, ".fsync-probe")
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, b"12345 67890\n")
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, final)
        xs.append((time.perf_counter() - t0) * 1000)
    os.unlink(final)
    print(f"{statistics.median(xs):.2f} ms median, {pct(xs, 0.9):.2f} ms p90")


def read_meta(workdir):
    meta = {}
    with open(os.path.join(workdir, "meta")) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key:
                meta.setdefault(key, []).append(value)
    return meta


def load_times(workdir):
    times = {k: [] for k, _ in VARIANTS}
    for path in sorted(glob.glob(os.path.join(workdir, "hf-*.json"))):
        with open(path) as f:
            data = json.load(f)
        for r in data["results"]:
            cmd = r["command"]
            if cmd in times:
                key = cmd
            elif "bundle-noseccomp" in cmd:
                key = "crun-noseccomp"
            elif "bundle-seccomp" in cmd:
                key = "crun-seccomp"
            else:
                continue
            times[key].extend(t * 1000 for t in r["times"])
    return times


def render(workdir):
    meta = read_meta(workdir)
    m = lambda k, d="?": meta.get(k, [d])[0]
    times = load_times(workdir)
    stats = {}
    for key, _ in VARIANTS:
        xs = times[key]
        if xs:
            stats[key] = {
                "n": len(xs), "median": statistics.median(xs), "mean": statistics.fmean(xs),
                "p10": pct(xs, 0.10), "p90": pct(xs, 0.90), "min": min(xs), "max": max(xs),
            }

    out = []
    out.append("### Launch-to-exit of `/bin/true`")
    out.append("")
    note = f" ({m('git_note')})" if "git_note" in meta else ""
    out.append(f"- date: {m('date')}; cella {m('git')}{note}; {m('rustc')}")
    out.append(f"- machine: {m('cpu')}, {m('nproc')} CPUs, {m('mem')} RAM; kernel {m('kernel')}; "
               f"cgroups {m('cgroup_mode')}; /run on {m('run_fs')}")
    out.append(f"- tools: {m('crun')}; {m('hyperfine')}; rootfs: {m('busybox')} (static)")
    out.append(f"- runs: {m('runs')} per variant in {m('rounds')} interleaved rounds "
               f"(warm-up {m('warmup')} in the first round, {m('warmup_later')} in later ones); "
               "hyperfine -N, wall time of the whole command")
    if "check_cella" in meta or "check_crun" in meta:
        out.append(f"- isolation check, /proc/self/status inside: cella: `{m('check_cella').strip()}`; "
                   f"crun: `{m('check_crun').strip()}`")
    loads = meta.get("load", [])
    if loads:
        out.append(f"- load average (1/5/15 min) at the start of each round and at the end: {'; '.join(loads)}")
    fs = meta.get("fsync", [])
    if fs:
        out.append(f"- write+fsync+rename latency in the runtime dir (disk contention indicator), "
                   f"start / end: {' / '.join(fs)}")
    out.append("")
    out.append("| variant | n | median ms | mean ms | p10 ms | p90 ms | min ms | max ms |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, label in VARIANTS:
        s = stats.get(key)
        if not s:
            out.append(f"| {label} | 0 | - | - | - | - | - | - |")
            continue
        out.append(f"| {label} | {s['n']} | **{s['median']:.2f}** | {s['mean']:.2f} | {s['p10']:.2f} | "
                   f"{s['p90']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
    out.append("")

    def ratio(a, b, field="median"):
        if a in stats and b in stats and stats[b][field] > 0:
            return stats[a][field] / stats[b][field]
        return None

    out.append("| ratio | median | mean |")
    out.append("|---|---:|---:|")
    for a, b, label in [
        ("cella-rootfs", "crun-seccomp", "cella (a) / crun (d), seccomp on for both"),
        ("cella-rootfs-unconfined", "crun-noseccomp", "cella (b) / crun (e), seccomp off for both"),
        ("cella-rootfs", "unshare", "cella (a) / unshare baseline (f)"),
        ("crun-seccomp", "unshare", "crun (d) / unshare baseline (f)"),
    ]:
        r1, r2 = ratio(a, b), ratio(a, b, "mean")
        if r1 is not None:
            out.append(f"| {label} | {r1:.2f}x | {r2:.2f}x |")
    out.append("")
    if "cella-rootfs" in stats and "cella-rootfs-unconfined" in stats:
        d = stats["cella-rootfs"]["median"] - stats["cella-rootfs-unconfined"]["median"]
        out.append(f"Seccomp costs cella {d:+.2f} ms (median (a) - (b)); crun "
                   + (f"{stats['crun-seccomp']['median'] - stats['crun-noseccomp']['median']:+.2f} ms "
                      "(median (d) - (e)), as it compiles the profile at every launch."
                      if "crun-seccomp" in stats and "crun-noseccomp" in stats else "n/a."))
        out.append("")

    verdict = []
    if "cella-rootfs" in stats:
        med = stats["cella-rootfs"]["median"]
        r = ratio("cella-rootfs", "crun-seccomp")
        ok_abs = med <= GOAL_ABS_MS
        ok_ratio = r is not None and r <= GOAL_RATIO
        verdict.append(f"Goal: cella median <= {GOAL_RATIO}x crun with seccomp: "
                       f"**{'met' if ok_ratio else 'NOT met'}** ({r:.2f}x); "
                       f"<= {GOAL_ABS_MS} ms absolute: **{'met' if ok_abs else 'NOT met'}** ({med:.2f} ms)."
                       if r is not None else f"<= {GOAL_ABS_MS} ms: {'met' if ok_abs else 'NOT met'} ({med:.2f} ms)")
    out.extend(verdict)
    out.append("")

    mems = []
    mem_path = os.path.join(workdir, "mem.jsonl")
    if os.path.exists(mem_path):
        with open(mem_path) as f:
            mems = [json.loads(line) for line in f if line.strip()]
    if mems:
        out.append("### Resident memory while a task runs (`sleep 5`)")
        out.append("")
        out.append("| process | VmRSS KiB | RssAnon KiB | RssFile KiB | Pss KiB | Pss_Anon KiB | Pss_File KiB | Private_Dirty KiB |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for mm in mems:
            g = lambda k: str(mm.get(k, "-"))
            out.append(f"| {mm['label']} | **{g('VmRSS')}** | {g('RssAnon')} | {g('RssFile')} | **{g('Pss')}** | "
                       f"{g('Pss_Anon')} | {g('Pss_File')} | {g('Private_Dirty')} |")
        out.append("")
        shim = next((mm for mm in mems if mm["label"].startswith("cella-shim")), None)
        if shim and "VmRSS" in shim:
            rss = shim["VmRSS"]
            out.append(f"Goal: shim RSS <= 1.5 MiB: **{'met' if rss <= GOAL_RSS_KIB else 'NOT met'}** "
                       f"({rss / 1024:.2f} MiB RSS, {shim.get('Pss', 0) / 1024:.2f} MiB PSS).")
            out.append("")

    bd = os.path.join(workdir, "breakdown.md")
    if os.path.exists(bd):
        out.append("### Where a cella launch spends its time")
        out.append("")
        with open(bd) as f:
            out.append(f.read().rstrip())
        out.append("")
    probes = os.path.join(workdir, "probes.txt")
    if os.path.exists(probes):
        out.append("Mechanism probes (`benches/launch/probes.c`, `seccomp_size.py`):")
        out.append("")
        out.append("```")
        with open(probes) as f:
            out.append(f.read().rstrip())
        out.append("```")
        out.append("")
    hints = os.path.join(workdir, "hints.md")
    if os.path.exists(hints):
        with open(hints) as f:
            out.append(f.read().rstrip())
        out.append("")
    print("\n".join(out))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "procmem" and len(sys.argv) == 4:
        procmem(sys.argv[2], sys.argv[3])
    elif cmd == "fsync" and len(sys.argv) in (3, 4):
        fsync_probe(sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 20)
    elif cmd == "median" and len(sys.argv) == 4:
        xs = load_times(sys.argv[2]).get(sys.argv[3]) or [float("nan")]
        print(f"{statistics.median(xs):.3f}")
    elif cmd == "render" and len(sys.argv) == 3:
        render(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
