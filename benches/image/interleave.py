#!/usr/bin/env python3
"""Warm launches from an image against launches from a root filesystem directory,
interleaved: each round runs every command once (the order rotated each round), so
load that comes and goes weighs on all of them alike. Wall time from fork to wait4;
CPU time (user + system) from wait4's rusage: the launcher, its shim and the task,
not the detached process that tidies the sandboxes.

    interleave.py ROUNDS ROOTFS REF HOST NAME=BIN_DIR:STORE...

Each NAME runs BIN_DIR/cella (with BIN_DIR/cella-shim) from ROOTFS and from REF in
STORE (already pulled), from the current directory. Prints medians and mean CPU.
"""
import os
import statistics
import sys
import time


def main():
    rounds, rootfs, ref, host = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    cmds = []
    for spec in sys.argv[5:]:
        name, rest = spec.split("=", 1)
        bin_dir, store = rest.split(":", 1)
        env = dict(os.environ, CELLA_SHIM=f"{bin_dir}/cella-shim")
        cella = f"{bin_dir}/cella"
        cmds.append((name, "rootfs", [cella, "exec", "--rootfs", rootfs, "--", "/bin/true"], env))
        cmds.append((name, "image", [cella, "exec", "--image", ref, "--image-store", store,
                                     "--insecure-registry", host, "--", "/bin/true"], env))
    null = os.open("/dev/null", os.O_RDWR)

    def run(argv, env):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.execve(argv[0], argv, env)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"failed: {' '.join(argv)}")
        return wall, usage.ru_utime + usage.ru_stime

    for _ in range(3):
        for _, _, argv, env in cmds:
            run(argv, env)
    results = {(c[0], c[1]): ([], []) for c in cmds}
    for r in range(rounds):
        k = r % len(cmds)
        for name, kind, argv, env in cmds[k:] + cmds[:k]:
            wall, cpu = run(argv, env)
            results[(name, kind)][0].append(wall)
            results[(name, kind)][1].append(cpu)
    load = open("/proc/loadavg").read().split()[0]
    print(f"| {time.strftime('%H:%M')} UTC, load {load}, {rounds} rounds | median rootfs / image (ratio) | CPU rootfs / image |")
    print("|---|---|---|")
    for name in dict.fromkeys(c[0] for c in cmds):
        rw, rc = results[(name, "rootfs")]
        iw, ic = results[(name, "image")]
        print(f"| {name} | {statistics.median(rw) * 1e3:.1f} / {statistics.median(iw) * 1e3:.1f} ms"
              f" ({statistics.median(iw) / statistics.median(rw):.2f}) |"
              f" {statistics.mean(rc) * 1e3:.1f} / {statistics.mean(ic) * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
