//! Compiles the routing mesh's fast path (`bpf/mesh.bpf.c`) into a BPF
//! object in OUT_DIR, which the agent embeds and loads (`fast_path`). Needs
//! clang and libbpf's headers (Debian: clang, libbpf-dev).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("mesh.bpf.o");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets the target arch");
    // Debian keeps <asm/types.h> under the multiarch folder.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let status = Command::new("clang")
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", &multiarch, "-c", "bpf/mesh.bpf.c", "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("clang could not compile bpf/mesh.bpf.c ({status})"),
        Err(err) => panic!("running clang for bpf/mesh.bpf.c: {err} (install clang and libbpf-dev)"),
    }
}
