//! Builds the kernel programs (`enforcer-ebpf`, bin `bulkhead`) for the bpf target with the
//! nightly toolchain; `datapath::object` embeds the result. `AYA_BUILD_SKIP=1` skips the build
//! (then the embedded object is empty and loading fails with a clear error).

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&meta)
        .parent()
        .ok_or_else(|| anyhow!("enforcer has no parent directory"))?
        .join("enforcer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    // The kernel programs include `enforcer-common`'s layouts: rebuild them when it changes too
    // (aya-build watches only the eBPF package itself).
    let common = std::path::Path::new(&meta)
        .parent()
        .ok_or_else(|| anyhow!("enforcer has no parent directory"))?
        .join("enforcer-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        let object = std::path::Path::new(&out).join("bulkhead");
        if !object.exists() {
            std::fs::write(&object, []).context("writing the empty placeholder object")?;
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
