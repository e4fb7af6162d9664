//! Cella's default profile against Docker's, as a task on x86_64 sees them: for each
//! syscall, what each profile does with it (allow, which errno, under which argument
//! conditions), compared by evaluating both on the arguments their conditions name.
//!
//! `docs/security.md` holds the resulting table between two markers, with the reason
//! for each difference. Two tests keep it true:
//! - `docs_table_matches_cella_profile` (always): each row's Cella column is what the
//!   default profile does;
//! - `docker_comparison_matches_docs` (on request, as Docker's profile is not part of
//!   Cella): the rows are exactly the differences from Docker's profile. Run it with
//!   `CELLA_DOCKER_SECCOMP_PROFILE=<moby>/profiles/seccomp/default.json cargo test -p
//!   cella-containerizer docker_comparison -- --ignored`; on a mismatch it prints the
//!   table to paste.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use super::DEFAULT_PROFILE_JSON;
use super::codegen::{CmpOp, Cond, Policy};
use super::compile::{docker_default_caps_mask, parse};
use super::syscalls::SYSCALLS_X86_64;

const DOCS: &str = include_str!("../../../docs/security.md");
const BEGIN: &str = "<!-- seccomp-docker-diff:begin -->";
const END: &str = "<!-- seccomp-docker-diff:end -->";
/// The kernel both profiles are evaluated for: Docker's `minKernel` entries (4.8)
/// apply on every kernel Cella supports.
const KERNEL: (u32, u32) = (6, 1);

/// One row: (capabilities added to Docker's default set, syscall, Cella, Docker).
type Row = (String, String, String, String);

fn policy(json: &str, caps_mask: u64) -> Policy {
    parse(json, caps_mask, Some(KERNEL))
        .expect("the profile parses")
        .policy()
}

fn action_name(action: u32) -> String {
    const ERRNO: u32 = 0x0005_0000;
    match action {
        0x7fff_0000 => "allow".into(),
        0x7ffc_0000 => "log".into(),
        0x8000_0000 => "kill process".into(),
        0 => "kill thread".into(),
        0x0003_0000 => "SIGSYS".into(),
        a if a & 0xffff_0000 == ERRNO => match a & 0xffff {
            1 => "EPERM".into(),
            38 => "ENOSYS".into(),
            n => format!("errno {n}"),
        },
        a => format!("action {a:#x}"),
    }
}

fn cond_text(c: &Cond) -> String {
    let i = c.index;
    let v = c.value;
    match c.op {
        CmpOp::Eq => format!("arg{i} == {v}"),
        CmpOp::Ne => format!("arg{i} != {v}"),
        CmpOp::Lt => format!("arg{i} < {v}"),
        CmpOp::Le => format!("arg{i} <= {v}"),
        CmpOp::Gt => format!("arg{i} > {v}"),
        CmpOp::Ge => format!("arg{i} >= {v}"),
        CmpOp::MaskedEq(mask) => format!("arg{i} & {mask:#x} == {v:#x}"),
    }
}

/// What `policy` does with syscall `nr`, in words: its conditional rules in order,
/// then what applies otherwise.
fn describe(policy: &Policy, nr: u32) -> String {
    let fallback = action_name(
        policy
            .unconditional
            .get(&nr)
            .copied()
            .unwrap_or(policy.default_action),
    );
    let Some(rules) = policy.conditional.get(&nr) else {
        return fallback;
    };
    let mut parts: Vec<String> = rules
        .iter()
        .map(|r| {
            let conds: Vec<String> = r.conds.iter().map(cond_text).collect();
            format!("{} if {}", action_name(r.action), conds.join(" and "))
        })
        .collect();
    parts.push(format!("else {fallback}"));
    parts.join("; ")
}

/// Argument vectors that tell two policies' conditions on `nr` apart: all zeros, and
/// each conditioned argument at, beside and (for masks) one bit off each value.
fn probes(policies: [&Policy; 2], nr: u32) -> Vec<[u64; 6]> {
    let mut out = vec![[0u64; 6]];
    let conds = policies
        .iter()
        .filter_map(|p| p.conditional.get(&nr))
        .flatten()
        .flat_map(|r| r.conds.iter());
    for c in conds {
        let mut values = vec![c.value, c.value.wrapping_add(1), c.value.wrapping_sub(1)];
        values.push(u64::MAX);
        if let CmpOp::MaskedEq(mask) = c.op {
            values.extend((0..64).map(|b| 1u64 << b).filter(|bit| mask & bit != 0));
        }
        for v in values {
            let mut args = [0u64; 6];
            args[usize::from(c.index)] = v;
            out.push(args);
        }
    }
    out
}

fn same(cella: &Policy, docker: &Policy, nr: u32) -> bool {
    probes([cella, docker], nr)
        .iter()
        .all(|args| cella.action(nr, args) == docker.action(nr, args))
}

/// Capabilities either profile names in `includes`/`excludes`, sorted.
fn named_caps(jsons: &[&str]) -> BTreeSet<String> {
    let mut caps = BTreeSet::new();
    for json in jsons {
        let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
        for entry in value["syscalls"].as_array().into_iter().flatten() {
            for side in ["includes", "excludes"] {
                for cap in entry[side]["caps"].as_array().into_iter().flatten() {
                    caps.extend(cap.as_str().map(str::to_string));
                }
            }
        }
    }
    caps
}

/// The differences for Docker's default capabilities ("-"), then those that only
/// appear when one more capability is added.
fn differences(cella_json: &str, docker_json: &str) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    let mut base: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let default = docker_default_caps_mask();
    let mut contexts = vec![("-".to_string(), default)];
    for name in named_caps(&[cella_json, docker_json]) {
        let Ok(cap) = caps::Capability::from_str(&name) else {
            continue;
        };
        if default & cap.bitmask() == 0 {
            contexts.push((format!("+{name}"), default | cap.bitmask()));
        }
    }
    for (context, mask) in contexts {
        let cella = policy(cella_json, mask);
        let docker = policy(docker_json, mask);
        for (name, nr) in SYSCALLS_X86_64 {
            let Ok(nr) = u32::try_from(*nr) else { continue };
            let texts = (describe(&cella, nr), describe(&docker, nr));
            let differs = !same(&cella, &docker, nr);
            if context == "-" {
                if differs {
                    base.insert(nr, texts.clone());
                }
            } else if !differs || base.get(&nr) == Some(&texts) {
                continue;
            }
            if differs {
                rows.insert((context.clone(), name.to_string(), texts.0, texts.1));
            }
        }
    }
    rows
}

/// The table in docs/security.md: (row, reason).
fn documented() -> Vec<(Row, String)> {
    let start = DOCS
        .find(BEGIN)
        .expect("docs/security.md has the table's begin marker");
    let end = DOCS
        .find(END)
        .expect("docs/security.md has the table's end marker");
    DOCS[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| capabilities") && !l.contains("---"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            assert_eq!(cells.len(), 5, "a row of five cells: {l}");
            let row = (
                cells[0].clone(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            );
            (row, cells[4].clone())
        })
        .collect()
}

fn table(rows: &BTreeSet<Row>, reasons: &BTreeMap<Row, String>) -> String {
    let mut out = String::from(
        "| capabilities added | syscall | Cella | Docker | why |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let why = reasons.get(row).map_or("?", String::as_str);
        out.push_str(&format!(
            "| {} | `{}` | `{}` | `{}` | {why} |\n",
            row.0, row.1, row.2, row.3
        ));
    }
    out
}

#[test]
fn docs_table_matches_cella_profile() {
    let rows = documented();
    assert!(!rows.is_empty(), "the table in docs/security.md is empty");
    let default = docker_default_caps_mask();
    for ((context, name, cella_text, _), why) in &rows {
        assert!(!why.is_empty() && why != "?", "no reason given for {name}");
        let mask = match context.strip_prefix('+') {
            Some(cap) => {
                default
                    | caps::Capability::from_str(cap)
                        .expect("a capability name")
                        .bitmask()
            }
            None => default,
        };
        let nr = super::syscalls::syscall_number(name).expect("an x86_64 syscall");
        let nr = u32::try_from(nr).expect("a syscall number");
        assert_eq!(
            &describe(&policy(DEFAULT_PROFILE_JSON, mask), nr),
            cella_text,
            "docs/security.md says Cella's default profile does this with {name} ({context})"
        );
    }
}

#[test]
#[ignore = "needs Docker's profile: CELLA_DOCKER_SECCOMP_PROFILE=<moby>/profiles/seccomp/default.json"]
fn docker_comparison_matches_docs() {
    let path = std::env::var("CELLA_DOCKER_SECCOMP_PROFILE")
        .expect("set CELLA_DOCKER_SECCOMP_PROFILE to moby's profiles/seccomp/default.json");
    let docker = std::fs::read_to_string(&path).expect("read Docker's profile");
    let generated = differences(DEFAULT_PROFILE_JSON, &docker);
    let reasons: BTreeMap<Row, String> = documented().into_iter().collect();
    let documented: BTreeSet<Row> = reasons.keys().cloned().collect();
    assert!(
        generated == documented,
        "docs/security.md's table is out of date; the differences now:\n{}",
        table(&generated, &reasons)
    );
}
