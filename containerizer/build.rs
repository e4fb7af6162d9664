//! Compiles Cella's default seccomp profile (`profiles/default.json`) to BPF once, at
//! build time, with the same code the library uses at run time.

use std::path::PathBuf;

#[allow(dead_code)]
#[path = "src/seccomp/codegen.rs"]
mod codegen;
#[allow(dead_code)]
#[path = "src/seccomp/compile.rs"]
mod compile;
#[allow(dead_code)]
#[path = "src/seccomp/syscalls.rs"]
mod syscalls;

fn main() {
    println!("cargo::rerun-if-changed=profiles/default.json");
    println!("cargo::rerun-if-changed=src/seccomp/compile.rs");
    println!("cargo::rerun-if-changed=src/seccomp/codegen.rs");
    println!("cargo::rerun-if-changed=src/seccomp/syscalls.rs");
    println!("cargo::rerun-if-changed=build.rs");

    let profile = "profiles/default.json";
    let json = match std::fs::read_to_string(profile) {
        Ok(json) => json,
        Err(e) => fail(&format!("cannot read {profile}: {e}")),
    };
    // The default program is for Docker's default capabilities; `minKernel` entries
    // are not used by the default profile (None: they would not apply).
    let compiled = match compile::compile(&json, compile::docker_default_caps_mask(), None) {
        Ok(c) => c,
        Err(e) => fail(&format!("{profile}: {e}")),
    };
    let bytes: Vec<u8> = compiled
        .program
        .iter()
        .flat_map(|ins| ins.to_le_bytes())
        .collect();
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        fail("OUT_DIR is not set (build.rs must run under cargo)");
    };
    let out = PathBuf::from(out_dir).join("default_seccomp.bpf");
    if let Err(e) = std::fs::write(&out, bytes) {
        fail(&format!("cannot write {}: {e}", out.display()));
    }
}

fn fail(why: &str) -> ! {
    eprintln!("error: compiling the default seccomp profile: {why}");
    std::process::exit(1);
}
