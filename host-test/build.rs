//! Builds every connector component (wasm32-wasip2, release profile) so that `cargo test`
//! and `cargo run` work on a fresh clone with no separate build step, and tells the host
//! crate where the `.wasm` files are (`env!("COMPONENT_DIR")`).
//!
//! The nested cargo uses its own target directory: the outer build holds a lock on
//! the main one for as long as this script runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates (package names) built into components: the connectors, and a test-only
/// component that misbehaves on purpose (`host-test/misbehave`).
const CONNECTORS: &[&str] = &[
    "defender-alerts",
    "defender-incidents",
    "entra",
    "misbehaving-connector",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in [
        "src",
        "connectors",
        "host-test/misbehave",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CONNECTOR_HOST_SKIP_COMPONENTS");

    let target_dir = components_target_dir();
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=COMPONENT_DIR={}", out.display());
    if std::env::var_os("CONNECTOR_HOST_SKIP_COMPONENTS").is_some() {
        return;
    }

    ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for c in CONNECTORS {
        cmd.args(["-p", c]);
    }
    // The outer build's settings are for the host, not for the guests: clippy's wrapper,
    // host rustflags and the outer profile must not leak into the nested build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the connector components");
    if !status.success() {
        panic!(
            "building the connector components failed (is the target installed? \
             `rustup target add wasm32-wasip2`)"
        );
    }
    for c in CONNECTORS {
        let wasm = out.join(format!("{}.wasm", c.replace('-', "_")));
        assert!(wasm.exists(), "component not found at {}", wasm.display());
    }
}

include!("build-support/wasm_target.rs");

/// Adds the components' target to the toolchain when it lacks it, so that the README's
/// first command works on a fresh machine: rustup installs the targets of
/// `rust-toolchain.toml` by itself only where auto-install is on, and it is off on CI and
/// on machines with `RUSTUP_AUTO_INSTALL=0`.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    match ensure_wasm_target(Path::new(&rustc), Path::new("rustup"), toolchain.as_deref()) {
        Ok(None) => {}
        Ok(Some(done)) => println!("cargo:warning={done}"),
        Err(why) => panic!("{why}"),
    }
}

/// `<target>/components`, next to the outer build's profile directories.
fn components_target_dir() -> PathBuf {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out (or <target>/<triple>/<profile>/...).
    let target = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("OUT_DIR inside a cargo target directory");
    target.join("components")
}
