//! A classic-BPF interpreter for the opcodes the compilers emit, the kernel's checks
//! of a program, and a disassembler for reading one.

use super::super::codegen::{
    ALU_AND_K, AUDIT_ARCH_X86_64, Insn, JMP_JA, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, JMP_JSET_K,
    LD_W_ABS, RET_K,
};
use super::super::compile;

pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// `struct seccomp_data`.
#[derive(Debug, Clone, Copy)]
pub struct Data {
    pub nr: u32,
    pub arch: u32,
    pub ip: u64,
    pub args: [u64; 6],
}

impl Data {
    pub fn x86_64(nr: u32, args: [u64; 6]) -> Data {
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
pub fn validate(program: &[u64]) {
    assert!(!program.is_empty() && program.len() <= compile::MAX_INSTRUCTIONS);
    validate_code(program);
}

/// [`validate`] without the kernel's size limit.
pub fn validate_code(program: &[u64]) {
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
pub fn disassemble(program: &[u64]) -> String {
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
pub fn run(program: &[u64], data: &Data) -> (u32, usize) {
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
