#!/usr/bin/env python3
"""Turn the config.json written by `crun spec` into a bundle equivalent to what
`cella exec --rootfs ROOT -- /bin/true` does by default, for the launch benchmark.

    oci_bundle.py CONFIG ROOTFS SANDBOX PROFILE [--no-seccomp] [--arg ARG]...

(--arg, repeatable: the command to run instead of /bin/true.)

CONFIG is edited in place. Equivalence with Cella's default isolation:
- process: /bin/true, no terminal, cwd /, uid 0, Docker's 14 default capabilities in
  the bounding/effective/permitted sets (inheritable and ambient empty, as Cella),
  no_new_privs;
- namespaces: pid, mount, uts, ipc; the host network (the network namespace that
  `crun spec` adds is removed); no hostname change (Cella keeps the host's name);
- filesystem: ROOTFS read-only, a fresh /proc, a tmpfs /dev with the usual devices,
  devpts, /dev/shm, /sys bound read-only from the host (Cella binds /sys; crun's
  default would mount a new sysfs and the cgroup hierarchies), a private tmpfs /tmp and
  the sandbox directory bound read-write at /mnt/sandbox (Cella binds the current
  directory there); /proc paths masked and made read-only as `crun spec` has them;
- no device cgroup rules (Cella does not use the devices controller; its devices are
  protected by nodev mounts);
- seccomp: PROFILE (Docker's JSON format, Cella's `containerizer/profiles/default.json`)
  converted to the OCI `linux.seccomp` form, with `includes`/`excludes` evaluated for
  Docker's default capabilities on x86_64 and the running kernel, exactly the rule set
  Cella compiles. With --no-seccomp, no `linux.seccomp` at all.
"""

import json
import os
import sys

# Cella's default set: Docker's 14 without CAP_NET_RAW.
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

X86_64_NAMES = {"amd64", "x86_64", "SCMP_ARCH_X86_64"}


def kernel_version():
    release = os.uname().release
    parts = release.split("-")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None


def parse_kernel(text):
    parts = text.split(".")
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)


def applies(entry, caps, kernel):
    """Docker's (and Cella's) rule: includes.caps all held, excludes.caps none held,
    includes.arches names x86_64 (if given), excludes.arches does not,
    includes.minKernel <= running kernel, excludes.minKernel > running kernel."""
    inc = entry.get("includes") or {}
    exc = entry.get("excludes") or {}
    if any(c not in caps for c in inc.get("caps") or []):
        return False
    arches = inc.get("arches") or []
    if arches and not any(a in X86_64_NAMES for a in arches):
        return False
    if inc.get("minKernel"):
        if kernel is None or kernel < parse_kernel(inc["minKernel"]):
            return False
    if any(c in caps for c in exc.get("caps") or []):
        return False
    if any(a in X86_64_NAMES for a in exc.get("arches") or []):
        return False
    if exc.get("minKernel") and kernel is not None and kernel >= parse_kernel(exc["minKernel"]):
        return False
    return True


def convert_profile(profile, caps):
    kernel = kernel_version()
    out = {
        "defaultAction": profile["defaultAction"],
        # Cella's program covers x86_64 only (other ABIs are killed): same here.
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [],
    }
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    for entry in profile["syscalls"]:
        if not applies(entry, caps, kernel):
            continue
        rule = {"names": list(entry["names"]), "action": entry["action"]}
        if entry.get("errnoRet") is not None:
            rule["errnoRet"] = entry["errnoRet"]
        args = []
        for a in entry.get("args") or []:
            arg = {"index": a["index"], "value": a["value"], "op": a["op"]}
            if a.get("valueTwo") is not None:
                arg["valueTwo"] = a["valueTwo"]
            args.append(arg)
        if args:
            rule["args"] = args
        out["syscalls"].append(rule)
    return out


def main():
    argv, rest = [], sys.argv[1:]
    no_seccomp, command = False, []
    while rest:
        a = rest.pop(0)
        if a == "--no-seccomp":
            no_seccomp = True
        elif a == "--arg" and rest:
            command.append(rest.pop(0))
        else:
            argv.append(a)
    if len(argv) != 4:
        sys.exit(__doc__)
    config_path, rootfs, sandbox, profile_path = argv
    with open(config_path) as f:
        config = json.load(f)

    proc = config["process"]
    proc["terminal"] = False
    proc["args"] = command or ["/bin/true"]
    proc["cwd"] = "/"
    proc["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    proc["noNewPrivileges"] = True
    proc["capabilities"] = {
        "bounding": list(DEFAULT_CAPS),
        "effective": list(DEFAULT_CAPS),
        "permitted": list(DEFAULT_CAPS),
        "inheritable": [],
        "ambient": [],
    }

    config["root"] = {"path": os.path.abspath(rootfs), "readonly": True}
    config.pop("hostname", None)
    config["mounts"] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "bind", "source": "/sys",
         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/mnt/sandbox", "type": "bind", "source": os.path.abspath(sandbox),
         "options": ["rbind", "nosuid", "nodev", "rw"]},
    ]

    linux = config.setdefault("linux", {})
    linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    linux.pop("resources", None)
    linux.pop("cgroupsPath", None)
    if no_seccomp:
        linux.pop("seccomp", None)
    else:
        with open(profile_path) as f:
            profile = json.load(f)
        linux["seccomp"] = convert_profile(profile, set(DEFAULT_CAPS))

    tmp = config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1)
    os.replace(tmp, config_path)
    if not no_seccomp:
        rules = linux["seccomp"]["syscalls"]
        names = sum(len(r["names"]) for r in rules)
        print(f"seccomp: {len(rules)} rules, {names} syscall names", file=sys.stderr)


if __name__ == "__main__":
    main()
