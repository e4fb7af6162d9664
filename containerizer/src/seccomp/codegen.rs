//! Classic BPF code generation for a seccomp [`Policy`] on x86_64.
//!
//! Shared like [`super::compile`]: the library includes it as
//! `crate::seccomp::codegen`, `build.rs` with `#[path]`; it only uses `std`.
//!
//! # Program layout
//!
//! ```text
//!   ld  [4]                      arch
//!   jeq #AUDIT_ARCH_X86_64, +1   otherwise → ret KILL_PROCESS
//!   ld  [0]                      nr
//!   jeq #nr_c, block_c           one per syscall with argument conditions (profile order
//!   ...                          of first appearance is irrelevant: numbers are distinct)
//!   jge #lo, …                   balanced binary search over the ranges of numbers that
//!   ...                          share an action; leaves are the shared `ret`s below
//!   block_c: …                   per-syscall rules, first match wins, then the fallback
//!   ret #action                  one `ret` per distinct action
//! ```
//!
//! * Every number a rule does not name, including every x32 number (`nr ≥ 0x40000000`,
//!   above the last range) and every "negative" number, falls in a gap of the search
//!   tree and gets `defaultAction`, as with the seccompiler program Cella used before.
//! * Numbers with argument conditions never reach the tree, so the tree treats them as
//!   "don't care", which merges the ranges on both sides of them.
//! * Argument values are 64 bits; `seccomp_data.args[i]` is read as its low word at
//!   `16 + 8i` and its high word at `20 + 8i` (little endian) and compared as an unsigned
//!   64-bit number (libseccomp's semantics): the high words decide unless equal.
//! * `SCMP_CMP_MASKED_EQ` is `(arg & mask) == (value & mask)` (as seccompiler, which
//!   Cella used before, compiles it; libseccomp does not mask `value`, so the two differ
//!   only for a `valueTwo` with bits outside the mask, which never matches there).
//! * Jump offsets of conditional jumps are 8 bits: the program is generated backwards
//!   (every target is known when a jump is emitted) and a jump whose target is more than
//!   255 instructions away goes through a `ja` (32-bit offset) placed right after it.
//!
//! The instructions used are: `ld [k]`, `jeq/jgt/jge/jset #k`, `ja`, `and #k`, `ret #k`
//! (all of them understood by the kernel's constant-action cache, `seccomp_cache_prepare`).

use std::collections::{BTreeMap, BTreeSet};

/// `BPF_LD | BPF_W | BPF_ABS`.
pub const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`.
pub const JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub const JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K`.
pub const JMP_JGT_K: u16 = 0x25;
/// `BPF_JMP | BPF_JGE | BPF_K`.
pub const JMP_JGE_K: u16 = 0x35;
/// `BPF_JMP | BPF_JSET | BPF_K`.
pub const JMP_JSET_K: u16 = 0x45;
/// `BPF_ALU | BPF_AND | BPF_K`.
pub const ALU_AND_K: u16 = 0x54;
/// `BPF_RET | BPF_K`.
pub const RET_K: u16 = 0x06;

/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `SECCOMP_RET_KILL_PROCESS`: the action for a syscall made through another ABI.
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// Offsets in `struct seccomp_data`.
pub const OFFSET_NR: u32 = 0;
pub const OFFSET_ARCH: u32 = 4;
pub const OFFSET_ARGS: u32 = 16;

/// Longest jump of a conditional instruction.
const MAX_SHORT_JUMP: usize = 255;

/// A comparison of a 64-bit syscall argument with a value (unsigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & mask) == (value & mask)`.
    MaskedEq(u64),
}

/// One argument condition: `args[index] <op> value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    /// 0 to 5.
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
}

#[cfg(test)]
impl Cond {
    /// Whether `arg` satisfies the condition (the reference semantics).
    pub fn holds(&self, arg: u64) -> bool {
        match self.op {
            CmpOp::Eq => arg == self.value,
            CmpOp::Ne => arg != self.value,
            CmpOp::Lt => arg < self.value,
            CmpOp::Le => arg <= self.value,
            CmpOp::Gt => arg > self.value,
            CmpOp::Ge => arg >= self.value,
            CmpOp::MaskedEq(mask) => arg & mask == self.value & mask,
        }
    }
}

/// A rule with argument conditions (all of them must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The `SECCOMP_RET_*` value returned when the rule matches.
    pub action: u32,
    pub conds: Vec<Cond>,
}

/// What a profile means for one task on x86_64, actions as `SECCOMP_RET_*` values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// For syscalls no rule matches.
    pub default_action: u32,
    /// Syscall number → its unconditional action.
    pub unconditional: BTreeMap<u32, u32>,
    /// Syscall number → its rules with argument conditions, in profile order; they are
    /// tried before the unconditional action, the first matching one wins.
    pub conditional: BTreeMap<u32, Vec<Rule>>,
}

impl Policy {
    /// The action for an x86_64 syscall (the reference semantics of the program).
    #[cfg(test)]
    pub fn action(&self, nr: u32, args: &[u64; 6]) -> u32 {
        let matched = self.conditional.get(&nr).and_then(|rules| {
            rules
                .iter()
                .find(|r| r.conds.iter().all(|c| c.holds(args[usize::from(c.index)])))
        });
        match matched {
            Some(rule) => rule.action,
            None => self.fallback(nr),
        }
    }

    /// The action of `nr` when none of its conditional rules match.
    fn fallback(&self, nr: u32) -> u32 {
        self.unconditional
            .get(&nr)
            .copied()
            .unwrap_or(self.default_action)
    }

    /// The search tree's ranges: `(first number, action)`, sorted, the first starting
    /// at 0, each running up to the next one's start (the last up to `u32::MAX`), two
    /// neighbours never sharing an action.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut push = |start: u32, action: u32| match ranges.last() {
            Some(&(_, last)) if last == action => {}
            None => ranges.push((0, action)),
            Some(_) => ranges.push((start, action)),
        };
        let numbers: BTreeSet<u32> = self
            .unconditional
            .keys()
            .chain(self.conditional.keys())
            .copied()
            .collect();
        let mut previous: Option<u32> = None;
        for nr in numbers {
            let gap_start = previous.map_or(0, |p| p + 1);
            if nr > gap_start {
                push(gap_start, self.default_action);
            }
            previous = Some(nr);
            if self.conditional.contains_key(&nr) {
                continue; // don't care: handled before the tree
            }
            push(nr, self.fallback(nr));
        }
        match previous {
            Some(u32::MAX) => {}
            Some(p) => push(p + 1, self.default_action),
            None => push(0, self.default_action),
        }
        ranges
    }
}

/// A position in the program under construction, counted from its end.
type Label = usize;

/// One instruction, `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    /// `code<<48 | jt<<40 | jf<<32 | k`.
    pub fn pack(self) -> u64 {
        (u64::from(self.code) << 48)
            | (u64::from(self.jt) << 40)
            | (u64::from(self.jf) << 32)
            | u64::from(self.k)
    }

    /// The inverse of [`Insn::pack`].
    pub fn unpack(word: u64) -> Insn {
        let b = word.to_be_bytes();
        Insn {
            code: u16::from_be_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Builds a program backwards: every instruction is emitted before (i.e. placed after)
/// the instructions that jump to it, so every jump target is known when the jump is
/// emitted. Instruction `l` of `rev` is at program index `len - 1 - l`.
#[derive(Default)]
struct Asm {
    rev: Vec<Insn>,
}

impl Asm {
    /// The label the next emitted instruction gets.
    fn next_label(&self) -> Label {
        self.rev.len()
    }

    fn push(&mut self, code: u16, jt: u8, jf: u8, k: u32) -> Label {
        self.rev.push(Insn { code, jt, jf, k });
        self.rev.len() - 1
    }

    /// Offset of a jump emitted now to `target`.
    fn distance(&self, target: Label) -> usize {
        self.next_label() - target - 1
    }

    fn ja(&mut self, target: Label) -> Label {
        // A program holds at most u32::MAX instructions: `compile` checks 4096 anyway.
        let k = u32::try_from(self.distance(target)).unwrap_or(u32::MAX);
        self.push(JMP_JA, 0, 0, k)
    }

    fn ret(&mut self, action: u32) -> Label {
        self.push(RET_K, 0, 0, action)
    }

    /// A non-jump instruction continuing at `next` (through a `ja` if `next` is not the
    /// instruction that follows).
    fn then(&mut self, code: u16, k: u32, next: Label) -> Label {
        if next + 1 != self.next_label() {
            self.ja(next);
        }
        self.push(code, 0, 0, k)
    }

    /// `ld [offset]`, continuing at `next`.
    fn load(&mut self, offset: u32, next: Label) -> Label {
        self.then(LD_W_ABS, offset, next)
    }

    /// A conditional jump to `t` or `f`; none if both are the same.
    fn jump(&mut self, code: u16, k: u32, mut t: Label, mut f: Label) -> Label {
        if t == f {
            return t;
        }
        loop {
            if self.distance(t) > MAX_SHORT_JUMP {
                t = self.ja(t);
            } else if self.distance(f) > MAX_SHORT_JUMP {
                f = self.ja(f);
            } else {
                break;
            }
        }
        let jt = u8::try_from(self.distance(t)).unwrap_or(u8::MAX);
        let jf = u8::try_from(self.distance(f)).unwrap_or(u8::MAX);
        self.push(code, jt, jf, k)
    }

    /// Program order, packed.
    fn finish(self) -> Vec<u64> {
        self.rev.into_iter().rev().map(Insn::pack).collect()
    }
}

/// Low and high 32 bits.
fn halves(value: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = value.to_le_bytes();
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

/// Offsets of the low and high words of `args[index]`.
fn arg_offsets(index: u8) -> (u32, u32) {
    let lo = OFFSET_ARGS + 8 * u32::from(index);
    (lo, lo + 4)
}

struct Gen {
    asm: Asm,
    /// The shared `ret` of each action.
    rets: BTreeMap<u32, Label>,
}

impl Gen {
    fn ret(&self, action: u32) -> Label {
        self.rets[&action]
    }

    /// `(word & mask) == value` for one 32-bit word at `offset` (`value ⊆ mask`).
    fn masked_word(&mut self, offset: u32, mask: u32, value: u32, t: Label, f: Label) -> Label {
        if mask == 0 {
            return t; // always true
        }
        let test = if value == 0 {
            self.asm.jump(JMP_JSET_K, mask, f, t)
        } else if value == mask && mask.is_power_of_two() {
            self.asm.jump(JMP_JSET_K, mask, t, f)
        } else {
            let eq = self.asm.jump(JMP_JEQ_K, value, t, f);
            self.asm.then(ALU_AND_K, mask, eq)
        };
        self.asm.load(offset, test)
    }

    /// An unsigned 64-bit order comparison: `hi_gt` is where `arg > value` in the high
    /// words leads, `lo` tests the low words when the high words are equal, and `hi_lt`
    /// is where `arg < value` in the high words leads.
    fn order(&mut self, offset: u32, vh: u32, hi_gt: Label, lo: Label, hi_lt: Label) -> Label {
        let below = if vh == 0 {
            lo // the high word is not above 0: it is 0
        } else {
            self.asm.jump(JMP_JEQ_K, vh, lo, hi_lt)
        };
        let test = if vh == u32::MAX {
            below // nothing is above u32::MAX
        } else {
            self.asm.jump(JMP_JGT_K, vh, hi_gt, below)
        };
        self.asm.load(offset, test)
    }

    /// Code testing `cond`, continuing at `t` if it holds and at `f` otherwise.
    fn cond(&mut self, cond: &Cond, t: Label, f: Label) -> Label {
        if t == f {
            return t; // the outcome does not depend on the condition
        }
        let (lo_off, hi_off) = arg_offsets(cond.index);
        let (vl, vh) = halves(cond.value);
        match cond.op {
            CmpOp::Eq => self.eq_any(cond.index, vh, &[vl], t, f),
            CmpOp::Ne => self.eq_any(cond.index, vh, &[vl], f, t),
            CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le => {
                let (lo_code, lo_t, lo_f, hi_gt, hi_lt) = match cond.op {
                    CmpOp::Gt => (JMP_JGT_K, t, f, t, f),
                    CmpOp::Ge => (JMP_JGE_K, t, f, t, f),
                    // arg < v ⇔ !(arg >= v); arg <= v ⇔ !(arg > v)
                    CmpOp::Lt => (JMP_JGE_K, f, t, f, t),
                    _ => (JMP_JGT_K, f, t, f, t),
                };
                let lo_test = self.asm.jump(lo_code, vl, lo_t, lo_f);
                let lo = self.asm.load(lo_off, lo_test);
                self.order(hi_off, vh, hi_gt, lo, hi_lt)
            }
            CmpOp::MaskedEq(mask) => {
                let (ml, mh) = halves(mask);
                let value = cond.value & mask;
                let (vl, vh) = halves(value);
                let lo = self.masked_word(lo_off, ml, vl, t, f);
                self.masked_word(hi_off, mh, vh, lo, f)
            }
        }
    }

    /// `args[index]` is one of `(vh << 32) | vl` for `vl` in `lows`: `t`, else `f`.
    fn eq_any(&mut self, index: u8, vh: u32, lows: &[u32], t: Label, f: Label) -> Label {
        if t == f {
            return t;
        }
        let (lo_off, hi_off) = arg_offsets(index);
        let mut next = f;
        for vl in lows.iter().rev() {
            next = self.asm.jump(JMP_JEQ_K, *vl, t, next);
        }
        let lo = self.asm.load(lo_off, next);
        let hi = self.asm.jump(JMP_JEQ_K, vh, lo, f);
        self.asm.load(hi_off, hi)
    }

    /// One syscall's rules, then `fallback`.
    fn block(&mut self, rules: &[Rule], fallback: Label) -> Label {
        let mut next = fallback;
        let mut end = rules.len();
        while end > 0 {
            // A run of rules with the same action, each a single `args[i] == v` with the
            // same `i` and high word of `v`, is one test of the high word and a `jeq`
            // per low word (first match wins, so a run of same-action rules is an "or").
            let last = &rules[end - 1];
            let single_eq = |r: &Rule| match r.conds.as_slice() {
                [c] if c.op == CmpOp::Eq => Some((r.action, c.index, halves(c.value).1)),
                _ => None,
            };
            if let Some(key) = single_eq(last) {
                let mut start = end - 1;
                while start > 0 && single_eq(&rules[start - 1]) == Some(key) {
                    start -= 1;
                }
                let lows: Vec<u32> = rules[start..end]
                    .iter()
                    .map(|r| halves(r.conds[0].value).0)
                    .collect();
                let (action, index, vh) = key;
                let t = self.ret(action);
                next = self.eq_any(index, vh, &lows, t, next);
                end = start;
                continue;
            }
            let mut entry = self.ret(last.action);
            for cond in last.conds.iter().rev() {
                entry = self.cond(cond, entry, next);
            }
            next = entry;
            end -= 1;
        }
        next
    }

    /// Binary search over `ranges` (the accumulator holds `nr`).
    fn tree(&mut self, ranges: &[(u32, Label)]) -> Label {
        if let [(_, leaf)] = ranges {
            return *leaf;
        }
        let mid = ranges.len() / 2;
        let right = self.tree(&ranges[mid..]);
        let left = self.tree(&ranges[..mid]);
        self.asm.jump(JMP_JGE_K, ranges[mid].0, right, left)
    }
}

/// Compiles `policy` for x86_64 (see the module documentation), packed.
pub fn generate(policy: &Policy) -> Vec<u64> {
    let mut actions: Vec<u32> = vec![policy.default_action];
    let others = policy
        .unconditional
        .values()
        .copied()
        .chain(
            policy
                .conditional
                .values()
                .flatten()
                .map(|rule| rule.action),
        )
        .chain([RET_KILL_PROCESS]);
    for action in others {
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    let mut cg = Gen {
        asm: Asm::default(),
        rets: BTreeMap::new(),
    };
    // The default action's `ret` ends the program.
    for action in actions {
        let label = cg.asm.ret(action);
        cg.rets.insert(action, label);
    }

    let mut blocks = Vec::new();
    for (nr, rules) in policy.conditional.iter().rev() {
        let fallback = cg.ret(policy.fallback(*nr));
        blocks.push((*nr, cg.block(rules, fallback)));
    }

    let ranges: Vec<(u32, Label)> = policy
        .ranges()
        .into_iter()
        .map(|(start, action)| (start, cg.ret(action)))
        .collect();
    let mut next = cg.tree(&ranges);
    // `blocks` is in decreasing number order: the chain tests increasing numbers.
    for (nr, block) in blocks {
        next = cg.asm.jump(JMP_JEQ_K, nr, block, next);
    }
    // An empty policy does not need the number.
    let nr = if policy.conditional.is_empty() && ranges.len() == 1 {
        next
    } else {
        cg.asm.load(OFFSET_NR, next)
    };
    let kill = cg.ret(RET_KILL_PROCESS);
    let arch = cg.asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, nr, kill);
    cg.asm.load(OFFSET_ARCH, arch);
    cg.asm.finish()
}
