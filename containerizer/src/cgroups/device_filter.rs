//! cgroup v2 has no `devices` interface files: the kernel asks a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the cgroup whether an access
//! (open for read/write, mknod) to a device is allowed. This module writes that small
//! program from an allowlist, loads it and attaches it to a task's cgroup, as runc's
//! and crun's device filters do. The attachment lives as long as the cgroup.
//!
//! The program (context `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
//! u32 minor; }`, `access_type` = access << 16 | type):
//!
//! ```text
//! r2 = ctx->access_type; r3 = r2 & 0xffff (type); r2 >>= 16 (access)
//! r4 = ctx->major; r5 = ctx->minor
//! for each allowed device:
//!     if r3 != type || r4 != major || (minor given && r5 != minor) skip
//!     if access asks for anything but read and write skip
//!     return 1
//! return 0
//! ```

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{CgroupError, fsx};
use crate::devices::{AllowedDevice, DeviceKind};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Ancestors' programs still run: a device must pass every filter up the tree.
const BPF_F_ALLOW_MULTI: u32 = 2;

const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_READ: i32 = 2;
const BPF_DEVCG_ACC_WRITE: i32 = 4;

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn kind_code(kind: DeviceKind) -> i32 {
    match kind {
        DeviceKind::Char => BPF_DEVCG_DEV_CHAR,
        DeviceKind::Block => BPF_DEVCG_DEV_BLOCK,
    }
}

/// Device numbers fit an immediate: majors are 12 bits, minors 20.
fn imm(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(-1)
}

/// The program that allows read and write of exactly `allowed`.
pub fn program(allowed: &[AllowedDevice]) -> Vec<Insn> {
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 3, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 2, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    let not_read_write = !(BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE) & 0xffff;
    for device in allowed {
        let mut block = vec![
            insn(JMP_JNE_K, 3, 0, 0, kind_code(device.kind)),
            insn(JMP_JNE_K, 4, 0, 0, imm(device.major)),
        ];
        if let Some(minor) = device.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, imm(minor)));
        }
        block.extend([
            insn(ALU64_MOV_X, 6, 2, 0, 0),
            insn(ALU64_AND_K, 6, 0, 0, not_read_write),
            insn(JMP_JNE_K, 6, 0, 0, 0),
            insn(ALU64_MOV_K, 0, 0, 0, 1),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ]);
        // Every jump of the block skips to the next block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K {
                ins.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
            }
        }
        prog.extend(block);
    }
    prog.extend([insn(ALU64_MOV_K, 0, 0, 0, 0), insn(JMP_EXIT, 0, 0, 0, 0)]);
    prog
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to
/// `expected_attach_type`; the kernel treats the rest as zero).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>();
    // SAFETY: `attr` is a valid, initialised #[repr(C)] prefix of `union bpf_attr`
    // of `size` bytes that outlives the call; every pointer in it points to memory
    // that also outlives the call. The kernel only reads it (and writes the log
    // buffer it points to, which is sized by log_size).
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn load(prog: &[Insn], log: Option<&mut Vec<u8>>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(b"cella_devices") {
        *dst = *src;
    }
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (
            1,
            u32::try_from(buf.len()).unwrap_or(u32::MAX),
            buf.as_mut_ptr() as u64,
        ),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    let fd = bpf(BPF_PROG_LOAD, &attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads the filter for `allowed` and attaches it to the cgroup `dir`.
pub fn attach(dir: &Path, allowed: &[AllowedDevice]) -> Result<(), CgroupError> {
    let prog = program(allowed);
    let prog_fd = load(&prog, None).map_err(|e| {
        // Loaded again with the verifier's log, so the error says why.
        let mut log = vec![0u8; 16 * 1024];
        let _ = load(&prog, Some(&mut log));
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let why = String::from_utf8_lossy(&log[..end]).trim().to_string();
        fsx::io(
            dir,
            io::Error::new(
                e.kind(),
                format!(
                    "loading the device filter (BPF_PROG_TYPE_CGROUP_DEVICE; the kernel needs \
                     CONFIG_CGROUP_BPF and the agent CAP_SYS_ADMIN): {e} {why}"
                ),
            ),
        )
    })?;
    let cgroup = std::fs::File::open(dir).map_err(|e| fsx::io(dir, e))?;
    let attr = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(prog_fd.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr).map_err(|e| {
        fsx::io(
            dir,
            io::Error::new(e.kind(), format!("attaching the device filter: {e}")),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_the_next_rule() {
        let allowed = [
            AllowedDevice {
                kind: DeviceKind::Char,
                major: 1,
                minor: Some(3),
            },
            AllowedDevice {
                kind: DeviceKind::Char,
                major: 136,
                minor: None,
            },
        ];
        let prog = program(&allowed);
        // 6 header, 8 + 7 for the rules, 2 for the final "deny".
        assert_eq!(prog.len(), 6 + 8 + 7 + 2);
        let first_rule = &prog[6..14];
        for (i, ins) in first_rule.iter().enumerate() {
            if ins.code == JMP_JNE_K {
                assert_eq!(usize::try_from(ins.off).ok(), Some(8 - i - 1));
            }
        }
        assert_eq!(prog[6 + 8].imm, BPF_DEVCG_DEV_CHAR);
        assert_eq!(prog[6 + 8 + 1].imm, 136);
        assert_eq!(prog.last().map(|i| i.code), Some(JMP_EXIT));
    }
}
