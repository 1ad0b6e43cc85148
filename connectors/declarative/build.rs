//! Embeds every built-in spec (`specs/<vendor>.toml`) and its schemas
//! (`schemas/<vendor>/*.json` at the workspace root) into the binary, so a built-in vendor
//! needs its spec file and nothing else.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let specs = root.join("specs");
    let schemas = root.join("../../schemas");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", specs.display());
    let mut vendors: Vec<String> = std::fs::read_dir(&specs)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".toml").map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    vendors.sort();
    let mut out = String::from("/// Every built-in vendor.\n");
    out.push_str("pub const BUILTIN: &[super::Builtin] = &[\n");
    for vendor in &vendors {
        let spec = specs.join(format!("{vendor}.toml"));
        let dir = schemas.join(vendor);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_suffix(".json").map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let _ = writeln!(
            out,
            "    super::Builtin {{ name: {vendor:?}, spec: include_str!({:?}), schemas: &[",
            spec.display().to_string()
        );
        for stream in files {
            let _ = writeln!(
                out,
                "        ({stream:?}, include_str!({:?})),",
                dir.join(format!("{stream}.json")).display().to_string()
            );
        }
        out.push_str("    ]},\n");
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    let dest = Path::new(&out_dir).join("builtin.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        panic!("writing {}: {e}", dest.display());
    }
    // One simulator factory per vendor: a factory holds plain function pointers, so each
    // vendor gets its own non-capturing closures.
    let mut sims = String::from("/// Every built-in vendor's simulator factory.\n");
    sims.push_str("pub fn factories() -> Vec<SimulatorFactory> {\n    vec![\n");
    for vendor in &vendors {
        let _ = writeln!(
            sims,
            "        SimulatorFactory {{ vendor: {vendor:?}, default_port: default_port({vendor:?}), \
             demo_records: |records| records.min(DEMO_RECORDS), endpoint_limits: false, concurrency_limits: false, start: |options| start({vendor:?}, options) }},"
        );
    }
    sims.push_str("    ]\n}\n");
    let dest = Path::new(&out_dir).join("simulators.rs");
    if let Err(e) = std::fs::write(&dest, sims) {
        panic!("writing {}: {e}", dest.display());
    }
}
