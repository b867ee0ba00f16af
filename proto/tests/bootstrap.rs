//! The committed generated code (`src/gen/`) is what `sync.proto` compiles to: regenerated into a
//! temporary directory with protox (no protoc) and tonic-prost-build, and compared.
//! `cargo xtask proto` runs this test with `BULKHEAD_PROTO_UPDATE=1` to rewrite `src/gen/`.

use std::path::{Path, PathBuf};

const PROTO: &str = "bulkhead/sync/v1/sync.proto";
const GENERATED: &str = "bulkhead.sync.v1.rs";

fn generate(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile([PROTO], [root]).expect("sync.proto compiles");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(out)
        .compile_fds(fds)
        .expect("code generation");
}

#[test]
fn generated_code_is_fresh() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    let tmp: PathBuf = std::env::temp_dir().join(format!("bulkhead-proto-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    generate(&tmp);
    let fresh = std::fs::read_to_string(tmp.join(GENERATED)).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
    let path = committed.join(GENERATED);
    if std::env::var_os("BULKHEAD_PROTO_UPDATE").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        old == fresh,
        "{} is stale: run `cargo xtask proto` and commit the result",
        path.display()
    );
}
