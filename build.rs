//! Builds the in-container shim as a static binary that the daemon embeds, so `cargo build`
//! is the whole build: no extra step, no second toolchain. `--target` is passed explicitly
//! so `+crt-static` never reaches host proc-macros.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-changed=src/shim_proto.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bin = out.join("warmpool-shim");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let status = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=3",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "--target",
            &target,
            "shim/main.rs",
            "-o",
        ])
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc} to build the shim: {e}"));
    if !status.success() {
        panic!(
            "building the static shim failed ({status}); it needs the static C library \
             (Debian: libc6-dev) for target {target}"
        );
    }
}
