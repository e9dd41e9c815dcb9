//! Builds the built-in route components of plugins/routes and embeds them (see
//! src/builtin.rs).
//!
//! The guests are C (this machine's Rust toolchain has no wasm32 standard library and none
//! can be downloaded): C bindings of wit/route.wit from wit-bindgen-c, compiled by clang for
//! wasm32-wasi against Debian's wasi-libc (packages clang-14 lld-14 wasi-libc
//! libclang-rt-14-dev-wasm32, installed by scripts/test), then given the world's metadata and
//! made a component by wit-component. Nothing is downloaded and no binary is committed.
//!
//! `IOTHUB_WASM_CC` overrides the compiler (default `clang-14`, then `clang`);
//! `IOTHUB_WASI_SYSROOT` the sysroot (default `/usr`, Debian's layout).

use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: [&str; 3] = ["rest", "s3", "database"];

type Error = Box<dyn std::error::Error>;

fn main() {
    if let Err(e) = run() {
        println!("cargo::error=building the built-in route components: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let wit = manifest.join("../../wit");
    let routes = manifest.join("../routes");
    println!("cargo::rerun-if-changed={}", wit.display());
    println!("cargo::rerun-if-changed={}", routes.display());
    println!("cargo::rerun-if-env-changed=IOTHUB_WASM_CC");
    println!("cargo::rerun-if-env-changed=IOTHUB_WASI_SYSROOT");

    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_path(&wit)?;
    let world = resolve.select_world(&[pkg], Some("route"))?;

    // C bindings
    let bindings = out.join("c-bindings");
    std::fs::create_dir_all(&bindings)?;
    let mut files = wit_bindgen_core::Files::default();
    let opts = wit_bindgen_c::Opts {
        no_object_file: true,
        ..Default::default()
    };
    opts.build().generate(&mut resolve, world, &mut files)?;
    for (name, bytes) in files.iter() {
        std::fs::write(bindings.join(name), bytes)?;
    }

    let cc = compiler()?;
    let sysroot = std::env::var("IOTHUB_WASI_SYSROOT").unwrap_or_else(|_| "/usr".into());
    let common = routes.join("common");
    let common_sources = c_sources(&common)?;
    for guest in GUESTS {
        let core = out.join(format!("{guest}.core.wasm"));
        let mut cmd = Command::new(&cc);
        cmd.args([
            "--target=wasm32-wasi",
            "-O2",
            "-mexec-model=reactor",
            "-std=c11",
        ])
        .args(["-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"])
        .arg(format!("--sysroot={sysroot}"))
        .arg("-I")
        .arg(&bindings)
        .arg("-I")
        .arg(&common)
        .args(c_sources(&routes.join(guest))?)
        .args(&common_sources)
        .arg(bindings.join("route.c"))
        .arg("-o")
        .arg(&core);
        let status = cmd.status().map_err(|e| {
            format!(
                "running {cc}: {e} (install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)"
            )
        })?;
        if !status.success() {
            return Err(format!("{cc} failed on plugins/routes/{guest} ({status})").into());
        }
        let mut module = std::fs::read(&core)?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
        )?;
        let component = wit_component::ComponentEncoder::default()
            .validate(true)
            .module(&module)?
            .encode()?;
        std::fs::write(out.join(format!("{guest}.wasm")), component)?;
    }
    Ok(())
}

fn compiler() -> Result<String, Error> {
    if let Ok(cc) = std::env::var("IOTHUB_WASM_CC") {
        return Ok(cc);
    }
    for cc in ["clang-14", "clang"] {
        if Command::new(cc).arg("--version").output().is_ok() {
            return Ok(cc.to_owned());
        }
    }
    Err("no clang found (install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32, or set IOTHUB_WASM_CC)".into())
}

fn c_sources(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    v.sort();
    Ok(v)
}
