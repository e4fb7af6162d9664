#!/usr/bin/env python3
"""Size and cost model of Cella's compiled default seccomp program (diagnosis helper).

    seccomp_size.py PROGRAM.bpf [COMPACT_OUT.bpf]

PROGRAM.bpf is build.rs's output (target/release/build/cella-containerizer-*/out/
default_seccomp.bpf: little-endian u64 `code<<48 | jt<<40 | jf<<32 | k`). Prints the
instruction mix, how many syscall numbers it allows (all arguments zero), in how many
contiguous ranges, and how many instructions the kernel walks per syscall number (the
filter load emulates the program for every syscall number to fill the seccomp action
cache, and a non-cached syscall runs it). With COMPACT_OUT, also writes a balanced
range tree over the same allowed numbers (argument checks left out: a size/timing
sketch, not a replacement) so `probes seccomp` can compare load times.
"""
import struct
import sys
from collections import Counter

AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW = 0x7FFF0000


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    return [((w >> 48) & 0xFFFF, (w >> 40) & 0xFF, (w >> 32) & 0xFF, w & 0xFFFFFFFF)
            for (w,) in struct.iter_unpack("<Q", raw)]


def run(prog, nr):
    data = struct.pack("<iIQ", nr, AUDIT_ARCH_X86_64, 0) + bytes(48)
    a, pc, steps = 0, 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        steps += 1
        cls = code & 7
        if cls == 0 and code == 0x20:
            a = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif cls == 4 and code & 0xF0 == 0x50:
            a &= k
            pc += 1
        elif cls == 5:
            op = code & 0xF0
            if op == 0x00:
                pc += 1 + k
                continue
            cond = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: (a & k) != 0}[op]
            pc += 1 + (jt if cond else jf)
        elif cls == 6:
            return k, steps
        else:
            raise ValueError(f"unsupported BPF instruction {code:#x} at {pc}")


def compact(ranges):
    """arch check, load nr, a balanced tree of range tests, RET ALLOW / RET ERRNO(EPERM)."""
    body = []

    def tree(rs):
        if len(rs) == 1:
            return [("ge", rs[0][0]), ("gt", rs[0][1])]
        mid = len(rs) // 2
        left, right = tree(rs[:mid]), tree(rs[mid:])
        return [("split", rs[mid][0], len(left))] + left + right

    body = tree(ranges)
    out = [(0x20, 0, 0, 4), (0x15, 1, 0, AUDIT_ARCH_X86_64), (0x06, 0, 0, 0x80000000), (0x20, 0, 0, 0)]
    allow = 4 + len(body)
    deny = allow + 1
    for i, ins in enumerate(body):
        pc = 4 + i
        if ins[0] == "split":
            out.append((0x35, ins[2], 0, ins[1]))
        elif ins[0] == "ge":
            out.append((0x35, 0, deny - pc - 1, ins[1]))
        else:
            out.append((0x25, deny - pc - 1, allow - pc - 1, ins[1]))
    out += [(0x06, 0, 0, RET_ALLOW), (0x06, 0, 0, 0x00050001)]
    return out


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    prog = load(sys.argv[1])
    names = {0x05: "ja", 0x15: "jeq", 0x06: "ret", 0x20: "ld", 0x54: "and", 0x35: "jge", 0x25: "jgt", 0x45: "jset"}
    mix = ", ".join(f"{names.get(c, hex(c))} {n}" for c, n in Counter(c for c, _, _, _ in prog).most_common())
    results = [run(prog, nr) for nr in range(0, 470)]
    allowed = [nr for nr, (ret, _) in enumerate(results) if ret == RET_ALLOW]
    ranges = []
    for nr in allowed:
        if ranges and ranges[-1][1] == nr - 1:
            ranges[-1][1] = nr
        else:
            ranges.append([nr, nr])
    steps = [s for _, s in results]
    print(f"program: {len(prog)} instructions ({mix})")
    print(f"allowed syscall numbers (arguments 0): {len(allowed)}, in {len(ranges)} contiguous ranges")
    print(f"instructions walked per syscall number: mean {sum(steps) / len(steps):.0f}, max {max(steps)} "
          f"(x {len(steps)} numbers when the kernel fills the action cache at load)")
    if len(sys.argv) == 3:
        c = compact(ranges)
        with open(sys.argv[2], "wb") as f:
            for code, jt, jf, k in c:
                f.write(struct.pack("<Q", (code << 48) | (jt << 40) | (jf << 32) | k))
        same = [nr for nr in range(0, 470) if run(c, nr)[0] == RET_ALLOW] == allowed
        cs = [run(c, nr)[1] for nr in range(0, 470)]
        print(f"range-tree sketch: {len(c)} instructions, same allowed set: {same}, "
              f"walk mean {sum(cs) / len(cs):.0f} max {max(cs)}")


if __name__ == "__main__":
    main()
