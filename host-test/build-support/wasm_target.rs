// Shared by host-test/build.rs (which `include!`s it) and the test that runs it against a
// toolchain without the target (tests/ops.rs).

/// The target the connector components are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain of `rustc` has [`WASM_TARGET`]: when its sysroot lacks it,
/// runs `<rustup> target add wasm32-wasip2 [--toolchain <toolchain>]`. Returns what was
/// done (`None`: nothing needed) or why it could not be done.
pub fn ensure_wasm_target(
    rustc: &std::path::Path,
    rustup: &std::path::Path,
    toolchain: Option<&str>,
) -> Result<Option<String>, String> {
    let sysroot = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |root: &std::path::Path| root.join("lib/rustlib").join(WASM_TARGET).is_dir();
    if sysroot.as_deref().is_some_and(installed) {
        return Ok(None);
    }
    let mut add = std::process::Command::new(rustup);
    add.args(["target", "add", WASM_TARGET]);
    // The toolchain this build runs on (rustup's proxy says which), not rustup's default.
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    match add.status() {
        Ok(s) if s.success() => Ok(Some(format!(
            "the Rust toolchain lacked the {WASM_TARGET} target the connector components are \
             built for: installed it with `rustup target add {WASM_TARGET}`"
        ))),
        outcome => Err(format!(
            "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` did \
             not succeed ({}); install it by hand (with rustup: `rustup target add \
             {WASM_TARGET}`), or for a distribution's Rust its {WASM_TARGET} standard library \
             package",
            match outcome {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            }
        )),
    }
}
