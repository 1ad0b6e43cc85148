//! `tributary connector new`: the scaffold, written into a temporary workspace by the real
//! binary, builds and passes its own tests (conformance, faults, hostile answers) there;
//! and `tributary connector list` is what README's vendor table says.

use std::path::Path;
use std::process::Command;

use crate::common::assert_success;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A workspace holding only the new crate, with the repository's workspace settings and
/// its SDK and sandbox kit by absolute path, and the repository's lock file (so the build
/// needs no network and gets the versions the repository is tested with).
fn temp_workspace(dir: &Path) {
    let root: toml::Table = std::fs::read_to_string(Path::new(REPO).join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let workspace = root["workspace"].as_table().unwrap();
    let mut deps = workspace["dependencies"].as_table().unwrap().clone();
    deps.retain(|name, _| {
        !name.starts_with("tributary-")
            || name == "tributary-sdk"
            || name == "tributary-sandbox-kit"
    });
    for (name, dir) in [
        ("tributary-sdk", "sdk"),
        ("tributary-sandbox-kit", "sandbox-kit"),
    ] {
        let mut dep = toml::Table::new();
        let path = Path::new(REPO).join("connectors").join(dir);
        dep.insert("path".into(), path.display().to_string().into());
        deps.insert(name.into(), dep.into());
    }
    let mut ws = toml::Table::new();
    ws.insert(
        "members".into(),
        toml::Value::Array(vec!["connectors/*".into()]),
    );
    ws.insert("resolver".into(), "3".into());
    ws.insert("package".into(), workspace["package"].clone());
    ws.insert("dependencies".into(), deps.into());
    let mut manifest = toml::Table::new();
    manifest.insert("workspace".into(), ws.into());
    std::fs::write(dir.join("Cargo.toml"), toml::to_string(&manifest).unwrap()).unwrap();
    std::fs::copy(Path::new(REPO).join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

#[test]
fn a_scaffolded_connector_builds_and_passes_its_tests_in_a_fresh_workspace() {
    let dir = tempfile::tempdir().unwrap();
    temp_workspace(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["connector", "new", "widget_co", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // No runtime here to register with: it says so, and what to add by hand.
    assert!(stdout.contains("Not registered"), "{stdout}");
    assert!(stdout.contains("vendor!(tributary_widget_co)"), "{stdout}");
    for file in [
        "connectors/widget_co/Cargo.toml",
        "connectors/widget_co/src/sandbox.rs",
        "connectors/widget_co/src/tests.rs",
        "schemas/widget_co/items.json",
    ] {
        assert!(dir.path().join(file).exists(), "{file}");
    }
    // It never overwrites.
    let again = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["connector", "new", "widget_co", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Its own target dir, kept between runs (the dependencies build once), never the
    // repository's: two workspaces sharing one target dir confuse cargo's fingerprints.
    let target = Path::new(REPO).join("target").join("scaffold-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(cargo)
        .args(["test", "--offline", "--quiet"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(test.status.success(), "{output}");
    // The crate's five tests: conformance, faults, hostile answers, auth, config.
    assert!(output.contains("test result: ok. 5 passed"), "{output}");
}

#[test]
fn readme_lists_every_vendor_this_build_knows() {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["connector", "list", "--markdown"])
        .output()
        .unwrap();
    assert_success(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let start = readme
        .find("<!-- vendors -->\n")
        .expect("README has a <!-- vendors --> block")
        + "<!-- vendors -->\n".len();
    let end = readme[start..].find("<!-- /vendors -->").unwrap() + start;
    assert_eq!(
        &readme[start..end],
        table,
        "README's vendor table is not `tributary connector list --markdown`; paste its output"
    );
    for vendor in ["stripe", "zendesk", "salesforce"] {
        assert!(table.contains(&format!("`{vendor}`")), "{table}");
    }
}
