//! The oracle: a profile's meaning evaluated from its JSON, not from the compiler's
//! structures.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde_json::Value;

use super::super::codegen::AUDIT_ARCH_X86_64;
use super::super::syscalls;
use super::bpf::Data;

/// The profile's meaning, evaluated from its JSON (not from the compiler's structures).
pub struct Oracle {
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
    pub fn new(json: &str, caps_mask: u64) -> Oracle {
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
                .filter_map(syscalls::syscall_number)
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

    pub fn eval(&self, data: &Data) -> u32 {
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
    pub fn conditioned(&self) -> BTreeSet<u32> {
        self.entries
            .iter()
            .filter(|(_, _, args)| !args.is_empty())
            .flat_map(|(nrs, _, _)| nrs.iter().copied())
            .collect()
    }

    /// Argument values around every value and mask of the profile's conditions.
    pub fn boundary_values(&self) -> Vec<u64> {
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
