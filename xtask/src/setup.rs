//! Installs what the build needs when it is missing: the nightly toolchain's `rust-src`,
//! `bpf-linker` 0.10.3 (0.11+ needs a system LLVM this machine does not have) and `cargo-fuzz`.
//! Also mounts bpffs, which is not mounted at boot on these machines.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const BPF_LINKER_VERSION: &str = "0.10.3";
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn all() -> Result<()> {
    ebpf_toolchain()?;
    mount_bpffs()
}

pub fn ebpf_toolchain() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("xtask setup: adding rust-src to the nightly toolchain");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        println!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about 80 s)");
        run(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ],
        )?;
    }
    Ok(())
}

pub fn fuzz_toolchain() -> Result<()> {
    ebpf_toolchain()?;
    let fuzz = output("cargo", &["fuzz", "--version"]).unwrap_or_default();
    if !fuzz.contains(CARGO_FUZZ_VERSION) {
        println!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run(
            "cargo",
            &[
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ],
        )?;
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted and we are root (pins live there).
fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.lines().any(|l| l.contains(" - bpf ")) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        return Ok(());
    }
    if output("id", &["-u"]).unwrap_or_default().trim() != "0" {
        println!("xtask setup: not root, bpffs not mounted (kernel tests and the demo need root)");
        return Ok(());
    }
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
