//! Equivalence tests of the generated BPF: a classic-BPF interpreter (the opcodes the
//! compilers emit) runs the programs on `seccomp_data` values and compares them with an
//! oracle evaluating the profile's JSON rules directly, and with the program Cella
//! generated before with seccompiler ([`compile::seccompiler_reference`]).

use std::collections::BTreeSet;
use std::str::FromStr;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::codegen::{
    ALU_AND_K, AUDIT_ARCH_X86_64, Insn, JMP_JA, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, JMP_JSET_K,
    LD_W_ABS, Policy, RET_K,
};
use super::{DEFAULT_PROFILE_JSON, compile, default_program};

const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// `struct seccomp_data`.
#[derive(Debug, Clone, Copy)]
struct Data {
    nr: u32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

impl Data {
    fn x86_64(nr: u32, args: [u64; 6]) -> Data {
        Data {
            nr,
            arch: AUDIT_ARCH_X86_64,
            ip: 0x7f00_dead_beef,
            args,
        }
    }

    /// The 32-bit word at `offset`, as the kernel's `seccomp_data` layout (little
    /// endian) gives it.
    fn word(&self, offset: u32) -> u32 {
        let lo = |v: u64| {
            let [a, b, c, d, ..] = v.to_le_bytes();
            u32::from_le_bytes([a, b, c, d])
        };
        let hi = |v: u64| {
            let [.., e, f, g, h] = v.to_le_bytes();
            u32::from_le_bytes([e, f, g, h])
        };
        match offset {
            0 => self.nr,
            4 => self.arch,
            8 => lo(self.ip),
            12 => hi(self.ip),
            16..64 if offset % 4 == 0 => {
                let arg = self.args[usize::try_from((offset - 16) / 8).expect("index")];
                if offset % 8 == 0 { lo(arg) } else { hi(arg) }
            }
            _ => panic!("load at {offset} outside seccomp_data"),
        }
    }
}

/// Checks what the kernel's `bpf_check_classic` / `seccomp_check_filter` check, for the
/// opcodes used: known opcodes, jumps inside the program, aligned loads inside
/// `seccomp_data`, a `ret` at the end.
fn validate(program: &[u64]) {
    assert!(!program.is_empty() && program.len() <= compile::MAX_INSTRUCTIONS);
    validate_code(program);
}

/// [`validate`] without the kernel's size limit.
fn validate_code(program: &[u64]) {
    for (pc, word) in program.iter().enumerate() {
        let ins = Insn::unpack(*word);
        let rest = program.len() - pc - 1;
        match ins.code {
            LD_W_ABS => assert!(ins.k % 4 == 0 && ins.k < 64, "{pc}: ld {}", ins.k),
            JMP_JA => assert!(
                usize::try_from(ins.k).expect("k") < rest,
                "{pc}: ja out of the program"
            ),
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K | JMP_JSET_K => assert!(
                usize::from(ins.jt) < rest && usize::from(ins.jf) < rest,
                "{pc}: jump out of the program"
            ),
            ALU_AND_K | RET_K => {}
            other => panic!("{pc}: unexpected opcode {other:#x}"),
        }
    }
    let last = Insn::unpack(*program.last().expect("not empty"));
    assert_eq!(last.code, RET_K, "the program must end with ret");
}

/// A listing of `program`, one instruction a line, jump targets as absolute indexes.
fn disassemble(program: &[u64]) -> String {
    let mut out = String::new();
    for (pc, word) in program.iter().enumerate() {
        let ins = Insn::unpack(*word);
        let to = |off: u8| pc + 1 + usize::from(off);
        let line = match ins.code {
            LD_W_ABS => format!("ld [{}]", ins.k),
            ALU_AND_K => format!("and #{:#x}", ins.k),
            JMP_JA => format!("ja {}", pc + 1 + usize::try_from(ins.k).expect("k")),
            RET_K => format!("ret #{:#x}", ins.k),
            code => {
                let op = match code {
                    JMP_JEQ_K => "jeq",
                    JMP_JGT_K => "jgt",
                    JMP_JGE_K => "jge",
                    JMP_JSET_K => "jset",
                    _ => "?",
                };
                format!("{op} #{:#x}, {}, {}", ins.k, to(ins.jt), to(ins.jf))
            }
        };
        out.push_str(&format!("{pc:4}: {line}\n"));
    }
    out
}

/// Runs `program` on `data`: (returned value, instructions executed).
fn run(program: &[u64], data: &Data) -> (u32, usize) {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    let mut steps = 0;
    loop {
        let ins = Insn::unpack(program[pc]);
        steps += 1;
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { ins.jt } else { ins.jf });
        match ins.code {
            LD_W_ABS => acc = data.word(ins.k),
            ALU_AND_K => acc &= ins.k,
            JMP_JA => pc += usize::try_from(ins.k).expect("k"),
            JMP_JEQ_K => pc += jump(acc == ins.k),
            JMP_JGT_K => pc += jump(acc > ins.k),
            JMP_JGE_K => pc += jump(acc >= ins.k),
            JMP_JSET_K => pc += jump(acc & ins.k != 0),
            RET_K => return (ins.k, steps),
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

/// The profile's meaning, evaluated from its JSON (not from the compiler's structures).
struct Oracle {
    default: u32,
    /// In profile order: (syscall numbers, action, conditions).
    entries: Vec<(Vec<u32>, u32, Vec<OracleArg>)>,
}

/// A condition: (index, op, value, valueTwo).
type OracleArg = (usize, String, u64, u64);

fn action_of(name: &str, errno: Option<u64>) -> u32 {
    let data = |default: u64| u32::try_from(errno.unwrap_or(default)).expect("errno");
    match name {
        "SCMP_ACT_ALLOW" => libc::SECCOMP_RET_ALLOW,
        "SCMP_ACT_ERRNO" => libc::SECCOMP_RET_ERRNO | data(1),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => libc::SECCOMP_RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => libc::SECCOMP_RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => libc::SECCOMP_RET_TRAP,
        "SCMP_ACT_TRACE" => libc::SECCOMP_RET_TRACE | data(0),
        "SCMP_ACT_LOG" => libc::SECCOMP_RET_LOG,
        other => panic!("oracle: action {other}"),
    }
}

fn has_cap(caps_mask: u64, name: &str) -> bool {
    caps::Capability::from_str(&caps::to_canonical(name))
        .is_ok_and(|c| caps_mask & c.bitmask() != 0)
}

impl Oracle {
    /// For `caps_mask` on x86_64; `minKernel` entries never apply (as for the
    /// build-time program).
    fn new(json: &str, caps_mask: u64) -> Oracle {
        let profile: Value = serde_json::from_str(json).expect("json");
        let default = action_of(
            profile["defaultAction"].as_str().expect("defaultAction"),
            profile["defaultErrnoRet"].as_u64(),
        );
        let is_x86_64 = |v: &Value| {
            v.as_array().into_iter().flatten().any(|a| {
                matches!(
                    a.as_str().map(str::to_ascii_lowercase).as_deref(),
                    Some("amd64" | "x86_64" | "scmp_arch_x86_64")
                )
            })
        };
        let mut entries = Vec::new();
        for entry in profile["syscalls"].as_array().into_iter().flatten() {
            let inc = &entry["includes"];
            let exc = &entry["excludes"];
            let caps_list = |c: &Value| {
                c["caps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().expect("cap").to_owned())
                    .collect::<Vec<_>>()
            };
            let applies = caps_list(inc).iter().all(|c| has_cap(caps_mask, c))
                && !caps_list(exc).iter().any(|c| has_cap(caps_mask, c))
                && (inc["arches"].as_array().is_none_or(Vec::is_empty)
                    || is_x86_64(&inc["arches"]))
                && !is_x86_64(&exc["arches"])
                && inc["minKernel"].is_null();
            if !applies {
                continue;
            }
            let nrs = entry["names"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&entry["name"]))
                .filter_map(Value::as_str)
                .filter_map(compile::syscall_number)
                .map(|nr| u32::try_from(nr).expect("nr"))
                .collect();
            let action = action_of(
                entry["action"].as_str().expect("action"),
                entry["errnoRet"].as_u64(),
            );
            let args = entry["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    (
                        usize::try_from(a["index"].as_u64().expect("index")).expect("index"),
                        a["op"].as_str().expect("op").to_owned(),
                        a["value"].as_u64().expect("value"),
                        a["valueTwo"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            entries.push((nrs, action, args));
        }
        Oracle { default, entries }
    }

    fn eval(&self, data: &Data) -> u32 {
        if data.arch != AUDIT_ARCH_X86_64 {
            return libc::SECCOMP_RET_KILL_PROCESS;
        }
        let holds = |&(index, ref op, value, two): &OracleArg| {
            let arg: u64 = data.args[index];
            match op.as_str() {
                "SCMP_CMP_EQ" => arg == value,
                "SCMP_CMP_NE" => arg != value,
                "SCMP_CMP_LT" => arg < value,
                "SCMP_CMP_LE" => arg <= value,
                "SCMP_CMP_GT" => arg > value,
                "SCMP_CMP_GE" => arg >= value,
                // Cella's (and seccompiler's) reading: valueTwo is masked too.
                "SCMP_CMP_MASKED_EQ" => arg & value == two & value,
                other => panic!("oracle: op {other}"),
            }
        };
        // Rules with conditions first, in profile order.
        for (nrs, action, args) in &self.entries {
            if !args.is_empty() && nrs.contains(&data.nr) && args.iter().all(holds) {
                return *action;
            }
        }
        for (nrs, action, args) in &self.entries {
            if args.is_empty() && nrs.contains(&data.nr) {
                return *action;
            }
        }
        self.default
    }

    /// Syscall numbers with argument conditions.
    fn conditioned(&self) -> BTreeSet<u32> {
        self.entries
            .iter()
            .filter(|(_, _, args)| !args.is_empty())
            .flat_map(|(nrs, _, _)| nrs.iter().copied())
            .collect()
    }

    /// Argument values around every value and mask of the profile's conditions.
    fn boundary_values(&self) -> Vec<u64> {
        let mut values: BTreeSet<u64> = [
            0,
            1,
            2,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            1 << 32,
            (1 << 32) + 1,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ]
        .into();
        for (_, _, args) in &self.entries {
            for &(_, _, value, two) in args {
                for v in [value, two, value & two, two | !value, !value] {
                    for w in [
                        v,
                        v.wrapping_add(1),
                        v.wrapping_sub(1),
                        v ^ (1 << 32),
                        v ^ 0xffff_ffff_0000_0000,
                        v & 0xffff_ffff,
                        v.wrapping_add(1 << 32),
                        v.wrapping_sub(1 << 32),
                    ] {
                        values.insert(w);
                    }
                }
                for bit in 0..64 {
                    if value & (1 << bit) != 0 {
                        values.insert((two & value) ^ (1 << bit));
                        values.insert(1 << bit);
                    }
                }
            }
        }
        values.into_iter().collect()
    }
}

/// Syscall numbers worth testing: 0 to 600, x32 numbers, large and "negative" ones.
fn interesting_numbers() -> Vec<u32> {
    let mut nrs: Vec<u32> = (0..=600).collect();
    nrs.extend((0..=600).map(|n| 0x4000_0000 | n));
    nrs.extend([
        0x3fff_ffff,
        0x4000_0000,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fffe,
        0xffff_ffff,
        1000,
        4096,
        65535,
        1 << 20,
    ]);
    // A deterministic sample of large numbers (xorshift).
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        nrs.push(x);
    }
    nrs
}

/// What a profile compiles to, and its references.
struct Programs {
    /// The compact program.
    program: Vec<u64>,
    /// The linear program seccompiler generated.
    reference: Vec<u64>,
    /// The compiler's per-syscall view (the generator's input).
    policy: Policy,
    oracle: Oracle,
}

impl Programs {
    fn new(json: &str, caps_mask: u64) -> Programs {
        let program = compile::compile(json, caps_mask, None)
            .expect("compiles")
            .program;
        let parsed = compile::parse(json, caps_mask, None).expect("parses");
        let reference = compile::seccompiler_reference::program(&parsed).expect("seccompiler");
        validate(&program);
        // The seccompiler program may exceed the kernel's limit (it was refused then).
        validate_code(&reference);
        Programs {
            program,
            reference,
            policy: parsed.policy(),
            oracle: Oracle::new(json, caps_mask),
        }
    }

    /// The oracle's answer for `data`, after checking that the programs and the policy
    /// give the same.
    fn agree(&self, data: &Data) -> Result<u32, String> {
        let want = self.oracle.eval(data);
        let got = run(&self.program, data).0;
        let old = run(&self.reference, data).0;
        let policy = if data.arch == AUDIT_ARCH_X86_64 {
            self.policy.action(data.nr, &data.args)
        } else {
            libc::SECCOMP_RET_KILL_PROCESS
        };
        if (got, old, policy) == (want, want, want) {
            Ok(want)
        } else {
            Err(format!(
                "on {data:x?}: oracle {want:#x}, new program {got:#x}, seccompiler program \
                 {old:#x}, policy {policy:#x}"
            ))
        }
    }

    fn check(&self, data: &Data) {
        if let Err(e) = self.agree(data) {
            panic!("{e}");
        }
    }
}

/// Compares the programs and the oracle for every interesting number (arguments 0 and
/// all ones), other architectures, and the boundary values of every argument of every
/// syscall with conditions.
fn check_profile(json: &str, caps_mask: u64) -> Programs {
    let p = Programs::new(json, caps_mask);
    for nr in interesting_numbers() {
        for args in [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]] {
            p.check(&Data::x86_64(nr, args));
        }
        for arch in [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0] {
            let data = Data {
                arch,
                ..Data::x86_64(nr, [0; 6])
            };
            assert_eq!(run(&p.program, &data).0, libc::SECCOMP_RET_KILL_PROCESS);
            p.check(&data);
        }
    }
    let values = p.oracle.boundary_values();
    for nr in p.oracle.conditioned() {
        for index in 0..6 {
            for value in &values {
                for filler in [0, u64::MAX] {
                    let mut args = [filler; 6];
                    args[index] = *value;
                    p.check(&Data::x86_64(nr, args));
                }
            }
        }
    }
    p
}

/// Pairs of boundary values in the first two arguments of the syscalls with conditions.
fn check_argument_pairs(p: &Programs) {
    let values = p.oracle.boundary_values();
    for nr in p.oracle.conditioned() {
        for a in &values {
            for b in &values {
                p.check(&Data::x86_64(nr, [*a, *b, 0, 0, 0, 0]));
            }
        }
    }
}

#[test]
fn default_program_is_small_and_equivalent() {
    let caps_mask = compile::docker_default_caps_mask();
    let checked = check_profile(DEFAULT_PROFILE_JSON, caps_mask);
    check_argument_pairs(&checked);
    let Programs {
        program, reference, ..
    } = checked;
    assert_eq!(
        program,
        default_program(),
        "build.rs compiles the same program"
    );
    // Instructions executed per x86_64 syscall (0..=467).
    let steps = |p: &[u64]| {
        let counts: Vec<usize> = (0..=467)
            .map(|nr| run(p, &Data::x86_64(nr, [0; 6])).1)
            .collect();
        (
            counts.iter().sum::<usize>() / counts.len(),
            counts.iter().max().copied().unwrap_or(0),
        )
    };
    let (new_mean, new_max) = steps(&program);
    let (old_mean, old_max) = steps(&reference);
    println!(
        "default profile: {} instructions (seccompiler: {}); instructions executed per \
         syscall: mean {new_mean}, max {new_max} (seccompiler: mean {old_mean}, max {old_max})",
        program.len(),
        reference.len(),
    );
    println!("{}", disassemble(&program));
    assert!(program.len() <= 128, "{} instructions", program.len());
    assert!(new_max <= 24, "{new_max} instructions on the longest path");
}

#[test]
fn default_profile_with_each_capability_is_equivalent() {
    // The capabilities the profile names (the others leave the program unchanged).
    let base = compile::docker_default_caps_mask();
    let profile: Value = serde_json::from_str(DEFAULT_PROFILE_JSON).expect("json");
    let named: BTreeSet<String> = profile["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| [&e["includes"]["caps"], &e["excludes"]["caps"]])
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    for cap in named {
        let bit = caps::Capability::from_str(&cap).expect("known").bitmask();
        check_profile(DEFAULT_PROFILE_JSON, base | bit);
        check_profile(DEFAULT_PROFILE_JSON, base & !bit);
    }
    check_profile(DEFAULT_PROFILE_JSON, 0);
    check_profile(DEFAULT_PROFILE_JSON, u64::MAX);
}

#[test]
fn default_profile_decisions() {
    // A few decisions spelled out, independent of any evaluator.
    let p = default_program();
    let ret =
        |nr: i64, args: [u64; 6]| run(&p, &Data::x86_64(u32::try_from(nr).expect("nr"), args)).0;
    let eperm = libc::SECCOMP_RET_ERRNO | 1;
    let allow = libc::SECCOMP_RET_ALLOW;
    assert_eq!(ret(libc::SYS_read, [0; 6]), allow);
    assert_eq!(ret(libc::SYS_mount, [0; 6]), eperm);
    assert_eq!(ret(libc::SYS_clone3, [0; 6]), libc::SECCOMP_RET_ERRNO | 38);
    let sigchld = 17;
    assert_eq!(ret(libc::SYS_clone, [sigchld, 0, 0, 0, 0, 0]), allow);
    let newuser = 0x1000_0000;
    assert_eq!(
        ret(libc::SYS_clone, [newuser | sigchld, 0, 0, 0, 0, 0]),
        eperm
    );
    // The namespace mask is on the low word only: high bits do not matter.
    assert_eq!(ret(libc::SYS_clone, [1 << 40, 0, 0, 0, 0, 0]), allow);
    assert_eq!(
        ret(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
        allow
    );
    assert_eq!(ret(libc::SYS_personality, [u64::MAX, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(
        ret(libc::SYS_personality, [(1 << 32) | 8, 0, 0, 0, 0, 0]),
        eperm
    );
    assert_eq!(ret(libc::SYS_socket, [40, 1, 0, 0, 0, 0]), eperm);
    assert_eq!(
        ret(libc::SYS_socket, [40 | (1 << 32), 1, 0, 0, 0, 0]),
        allow
    );
    assert_eq!(ret(libc::SYS_socket, [2, 1, 0, 0, 0, 0]), allow);
    // x32 numbers get the default action, even for allowed syscalls.
    assert_eq!(ret(0x4000_0000, [0; 6]), eperm);
    assert_eq!(
        ret(0x4000_0000 | libc::SYS_clone, [sigchld, 0, 0, 0, 0, 0]),
        eperm
    );
}

#[test]
fn every_comparison_on_64_bit_boundaries() {
    let mut rules = Vec::new();
    let names = [
        "getpriority",
        "umask",
        "dup",
        "kill",
        "lseek",
        "fcntl",
        "ioctl",
    ];
    let ops = [
        "SCMP_CMP_EQ",
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_GT",
        "SCMP_CMP_GE",
        "SCMP_CMP_MASKED_EQ",
    ];
    for (i, (name, op)) in names.iter().zip(ops).enumerate() {
        for (j, (value, two)) in [
            (0u64, 0u64),
            (5, 4),
            (0xffff_ffff, 0x8000_0001),
            (1 << 32, 1 << 32),
            (0x1_0000_0005, 0x1_0000_0004),
            (u64::MAX, 0xdead_beef),
            (0x8000_0000_0000_0000, 0),
        ]
        .into_iter()
        .enumerate()
        {
            rules.push(json!({
                "names": [name],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 100 + 10 * i + j,
                "args": [{"index": j % 6, "value": value, "valueTwo": two, "op": op}],
            }));
        }
        rules.push(json!({"names": [name], "action": "SCMP_ACT_ALLOW"}));
    }
    let profile = json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules});
    check_profile(&profile.to_string(), 0);
}

#[test]
fn large_profiles_need_trampolines_and_stay_equivalent() {
    // Alternating actions over every number: ~470 ranges, a tree deeper than 255.
    let allowed: Vec<&str> = compile::SYSCALLS_X86_64
        .iter()
        .filter(|(_, nr)| nr % 2 == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut rules = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    // Many conditioned syscalls with many rules: blocks longer than 255 instructions.
    for (name, _) in compile::SYSCALLS_X86_64.iter().skip(3).step_by(7).take(20) {
        for k in 0..6u64 {
            rules.push(json!({
                "names": [name],
                "action": if k % 2 == 0 { "SCMP_ACT_LOG" } else { "SCMP_ACT_TRAP" },
                "args": [
                    {"index": k, "value": 0x1_0000_0000u64 * k + 7, "op": "SCMP_CMP_GE"},
                    {"index": 5 - k, "value": 0xff, "valueTwo": k, "op": "SCMP_CMP_MASKED_EQ"}
                ],
            }));
        }
    }
    let profile = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules});
    let program = check_profile(&profile.to_string(), 0).program;
    let far = program
        .iter()
        .filter(|w| Insn::unpack(**w).code == JMP_JA)
        .count();
    assert!(program.len() > 600 && far > 0, "{} / {far}", program.len());
}

#[test]
fn tiny_profiles() {
    for json in [
        r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[]}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["open_tree_attr"],"action":"SCMP_ACT_ALLOW"}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":0,"value":0,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":3,"op":"SCMP_CMP_EQ"}]}]}"#,
    ] {
        check_profile(json, 0);
    }
}

const ACTIONS: [(&str, Option<u64>); 8] = [
    ("SCMP_ACT_ALLOW", None),
    ("SCMP_ACT_ERRNO", None),
    ("SCMP_ACT_ERRNO", Some(13)),
    ("SCMP_ACT_ERRNO", Some(38)),
    ("SCMP_ACT_KILL_PROCESS", None),
    ("SCMP_ACT_KILL", None),
    ("SCMP_ACT_TRAP", None),
    ("SCMP_ACT_LOG", None),
];

const OPS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];

fn arb_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..8,
        Just(0xffff_ffff),
        Just(1 << 32),
        Just(u64::MAX),
        any::<u32>().prop_map(u64::from),
        any::<u64>(),
        (0u64..4, 0u64..4).prop_map(|(h, l)| (h << 32) | l),
    ]
}

fn action_json(entry: &mut serde_json::Map<String, Value>, a: usize) {
    let (name, errno) = ACTIONS[a];
    entry.insert("action".into(), json!(name));
    if let Some(e) = errno {
        entry.insert("errnoRet".into(), json!(e));
    }
}

/// A random profile over a few syscalls (numbers 0..16 and 56..60): unconditional
/// rules and up to 12 conditional rules of up to 3 conditions.
fn arb_profile() -> impl Strategy<Value = String> {
    let nrs = prop_oneof![0usize..16, 56usize..60];
    let cond = (0u64..6, 0usize..OPS.len(), arb_value(), arb_value());
    let conditional = (
        nrs.clone(),
        0..ACTIONS.len(),
        prop::collection::vec(cond, 1..4),
    );
    (
        0..ACTIONS.len(),
        prop::collection::btree_map(nrs, 0..ACTIONS.len(), 0..12),
        prop::collection::vec(conditional, 0..12),
    )
        .prop_map(|(default, unconditional, conditional)| {
            let name = |nr: usize| compile::SYSCALLS_X86_64[nr].0;
            let mut rules = Vec::new();
            for (nr, a) in unconditional {
                let mut entry = serde_json::Map::new();
                entry.insert("names".into(), json!([name(nr)]));
                action_json(&mut entry, a);
                rules.push(Value::Object(entry));
            }
            for (nr, a, conds) in conditional {
                let mut entry = serde_json::Map::new();
                entry.insert("names".into(), json!([name(nr)]));
                action_json(&mut entry, a);
                let args: Vec<Value> = conds
                    .into_iter()
                    .map(|(index, op, value, two)| {
                        json!({"index": index, "op": OPS[op], "value": value, "valueTwo": two})
                    })
                    .collect();
                entry.insert("args".into(), json!(args));
                rules.push(Value::Object(entry));
            }
            let mut profile = serde_json::Map::new();
            action_json(&mut profile, default);
            let action = profile.remove("action").expect("action");
            profile.insert("defaultAction".into(), action);
            if let Some(e) = profile.remove("errnoRet") {
                profile.insert("defaultErrnoRet".into(), e);
            }
            profile.insert("syscalls".into(), json!(rules));
            Value::Object(profile).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Failing cases are printed, not written under proptest-regressions/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn default_profile_on_random_arguments(
        nr in prop::sample::select(vec![41u32, 56, 135, 435, 0, 1, 57, 165]),
        args in prop::array::uniform6(prop_oneof![any::<u64>(), any::<u32>().prop_map(u64::from)]),
        bits in prop::collection::vec(0u32..64, 0..4),
    ) {
        let p = default_programs();
        // Random words, and small values with a few bits set (namespace flags).
        let mut small = [0u64; 6];
        for bit in bits {
            small[0] |= 1 << bit;
        }
        for args in [args, small] {
            let data = Data::x86_64(nr, args);
            if let Err(e) = p.agree(&data) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        // Failing cases are printed, not written under proptest-regressions/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_profiles_are_equivalent(
        json in arb_profile(),
        samples in prop::collection::vec(
            (prop_oneof![0u32..20, 54u32..62], prop::array::uniform6(arb_value())),
            64,
        ),
    ) {
        let p = Programs::new(&json, 0);
        let values = p.oracle.boundary_values();
        let mut cases: Vec<Data> =
            samples.iter().map(|(nr, args)| Data::x86_64(*nr, *args)).collect();
        for nr in p.oracle.conditioned() {
            for index in 0..6 {
                for value in &values {
                    let mut args = [0; 6];
                    args[index] = *value;
                    cases.push(Data::x86_64(nr, args));
                }
            }
        }
        for nr in (0..70).chain([0x4000_0000, 0x4000_0001, u32::MAX]) {
            cases.push(Data::x86_64(nr, [0; 6]));
        }
        for data in cases {
            if let Err(e) = p.agree(&data) {
                prop_assert!(false, "{}\n{}", e, json);
            }
        }
    }
}

/// The default profile's programs, built once.
fn default_programs() -> &'static Programs {
    static PROGRAMS: std::sync::OnceLock<Programs> = std::sync::OnceLock::new();
    PROGRAMS
        .get_or_init(|| Programs::new(DEFAULT_PROFILE_JSON, compile::docker_default_caps_mask()))
}
