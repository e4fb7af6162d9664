//! The program Cella generated before [`super::codegen`]: one seccompiler filter per run
//! of rules sharing an action, chained (a linear search, 1628 instructions for the
//! default profile). Kept as a reference for the equivalence tests.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::codegen::{CmpOp, Cond};
use super::compile::{Parsed, ProfileError};

const BPF_RET_K: u16 = 0x06;
const BPF_JMP_JA: u16 = 0x05;

/// Packs one instruction as `code<<48 | jt<<40 | jf<<32 | k`.
pub fn pack(ins: &sock_filter) -> u64 {
    (u64::from(ins.code) << 48)
        | (u64::from(ins.jt) << 40)
        | (u64::from(ins.jf) << 32)
        | u64::from(ins.k)
}

fn condition(cond: &Cond) -> SeccompCondition {
    let op = match cond.op {
        CmpOp::Eq => SeccompCmpOp::Eq,
        CmpOp::Ne => SeccompCmpOp::Ne,
        CmpOp::Lt => SeccompCmpOp::Lt,
        CmpOp::Le => SeccompCmpOp::Le,
        CmpOp::Gt => SeccompCmpOp::Gt,
        CmpOp::Ge => SeccompCmpOp::Ge,
        CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
    };
    SeccompCondition::new(cond.index, SeccompCmpArgLen::Qword, op, cond.value)
        .expect("index checked by parse_arg")
}

/// One run of rules sharing a match action.
struct Segment {
    action: SeccompAction,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
}

/// Compiles `segment` and appends it to `out`, turning its mismatch returns into
/// jumps past its end.
fn emit_segment(segment: Segment, out: &mut Vec<u64>) -> Result<(), ProfileError> {
    let sentinel = if segment.action == SeccompAction::Trace(0xffff) {
        SeccompAction::Trace(0xfffe)
    } else {
        SeccompAction::Trace(0xffff)
    };
    let sentinel_k = u32::from(sentinel.clone());
    let filter = SeccompFilter::new(segment.rules, sentinel, segment.action, TargetArch::x86_64)
        .map_err(|e| ProfileError::Backend(format!("seccompiler: {e}")))?;
    let bpf: BpfProgram = filter
        .try_into()
        .map_err(|e| ProfileError::Backend(format!("seccompiler: {e}")))?;
    let len = bpf.len();
    for (i, mut ins) in bpf.into_iter().enumerate() {
        if ins.code == BPF_RET_K && ins.k == sentinel_k {
            ins = sock_filter {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: u32::try_from(len - i - 1).expect("small segment"),
            };
        }
        out.push(pack(&ins));
    }
    Ok(())
}

/// The seccompiler program for `parsed`.
pub fn program(parsed: &Parsed) -> Result<Vec<u64>, ProfileError> {
    let mut segments: Vec<Segment> = Vec::new();
    for (action, nr, conds) in &parsed.conditional {
        let rule = SeccompRule::new(conds.iter().map(condition).collect())
            .map_err(|e| ProfileError::Backend(e.to_string()))?;
        match segments.last_mut() {
            Some(last) if last.action == *action => {
                last.rules.entry(i64::from(*nr)).or_default().push(rule);
            }
            _ => segments.push(Segment {
                action: action.clone(),
                rules: BTreeMap::from([(i64::from(*nr), vec![rule])]),
            }),
        }
    }
    let mut by_action: Vec<Segment> = Vec::new();
    for (nr, action) in &parsed.unconditional {
        if *action == parsed.default_action {
            continue;
        }
        match by_action.iter_mut().find(|s| s.action == *action) {
            Some(segment) => {
                segment.rules.insert(i64::from(*nr), Vec::new());
            }
            None => by_action.push(Segment {
                action: action.clone(),
                rules: BTreeMap::from([(i64::from(*nr), Vec::new())]),
            }),
        }
    }
    segments.extend(by_action);
    let mut program = Vec::new();
    if segments.is_empty() {
        emit_segment(
            Segment {
                action: if parsed.default_action == SeccompAction::Allow {
                    SeccompAction::Log
                } else {
                    SeccompAction::Allow
                },
                rules: BTreeMap::new(),
            },
            &mut program,
        )?;
    }
    for segment in segments {
        emit_segment(segment, &mut program)?;
    }
    program.push(pack(&sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: u32::from(parsed.default_action.clone()),
    }));
    Ok(program)
}
