//! Equivalence tests of the generated BPF: a classic-BPF interpreter ([`bpf`]) runs the
//! programs on `seccomp_data` values and compares them with an oracle evaluating the
//! profile's JSON rules directly ([`oracle`]), and with the program Cella generated
//! before with seccompiler ([`super::reference`]); [`random`] adds property tests.

mod bpf;
mod oracle;
mod random;

use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::{Value, json};

use super::codegen::{AUDIT_ARCH_X86_64, Insn, JMP_JA, Policy};
use super::{DEFAULT_PROFILE_JSON, compile, default_program, reference, syscalls};
use bpf::{AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386, Data, disassemble, run, validate, validate_code};
use oracle::Oracle;

/// Every comparison a profile's argument condition may use.
const OPS: [&str; 7] = [
    "SCMP_CMP_EQ",
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_GT",
    "SCMP_CMP_GE",
    "SCMP_CMP_MASKED_EQ",
];

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
        let reference = reference::program(&parsed).expect("seccompiler");
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

/// The default profile's programs, built once.
fn default_programs() -> &'static Programs {
    static PROGRAMS: std::sync::OnceLock<Programs> = std::sync::OnceLock::new();
    PROGRAMS
        .get_or_init(|| Programs::new(DEFAULT_PROFILE_JSON, compile::docker_default_caps_mask()))
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
    let af_alg = 38;
    assert_eq!(ret(libc::SYS_socket, [af_alg, 5, 0, 0, 0, 0]), eperm);
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
    for (i, (name, op)) in names.iter().zip(OPS).enumerate() {
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
    let allowed: Vec<&str> = syscalls::SYSCALLS_X86_64
        .iter()
        .filter(|(_, nr)| nr % 2 == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut rules = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    // Many conditioned syscalls with many rules: blocks longer than 255 instructions.
    for (name, _) in syscalls::SYSCALLS_X86_64.iter().skip(3).step_by(7).take(20) {
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
