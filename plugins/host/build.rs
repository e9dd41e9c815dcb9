//! Builds the built-in route components (the plugins/routes workspace) for wasm32-wasip2 and
//! leaves them in OUT_DIR for src/builtin.rs to embed.
//!
//! A nested `cargo build --release --locked --target wasm32-wasip2` with its own target
//! directory (`$CARGO_TARGET_DIR/wasm-routes`, or under OUT_DIR): sharing the outer one
//! would deadlock on its lock. The outer build's environment (flags, wrappers such as
//! clippy-driver, target) is not passed on. Nothing is downloaded but crates, and no
//! `.wasm` is committed.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: [&str; 3] = ["rest", "s3", "database"];

fn main() {
    if let Err(e) = run() {
        println!("cargo::error=building the built-in route components: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let routes = manifest.join("../routes");
    let wit = manifest.join("../../wit");
    for path in [
        wit.clone(),
        routes.join("Cargo.toml"),
        routes.join("Cargo.lock"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    for guest in GUESTS {
        println!("cargo::rerun-if-changed={}", routes.join(guest).display());
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("wasm-routes"),
        None => out.join("wasm-routes"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-wasip2",
    ])
    .arg("--manifest-path")
    .arg(routes.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    // the outer build's settings are not the guests'
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(key, "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_NET_OFFLINE");
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "RUSTDOCFLAGS"
            );
        if drop {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --locked --target wasm32-wasip2` in plugins/routes failed ({status}); \
             is the target installed (`rustup target add wasm32-wasip2`)?"
        )
        .into());
    }
    for guest in GUESTS {
        let built = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("iothub_route_{guest}.wasm"));
        std::fs::copy(&built, out.join(format!("{guest}.wasm")))
            .map_err(|e| format!("{}: {e}", built.display()))?;
    }
    Ok(())
}
