//! `tributary connector new NAME`: a new vendor crate, copied from the template connector
//! (`connectors/template`, the fictional vendor Acme, built and tested with the workspace
//! so the copy compiles and passes its tests), and registered with the runtime; and
//! `tributary connector list`, the vendors this build knows, which README's vendor list is
//! checked against.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::registry;

/// The template's files: its path under `connectors/template/`, and its text.
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../connectors/template/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../connectors/template/src/lib.rs"),
    ),
    (
        "src/config.rs",
        include_str!("../connectors/template/src/config.rs"),
    ),
    (
        "src/client.rs",
        include_str!("../connectors/template/src/client.rs"),
    ),
    (
        "src/streams.rs",
        include_str!("../connectors/template/src/streams.rs"),
    ),
    (
        "src/sandbox.rs",
        include_str!("../connectors/template/src/sandbox.rs"),
    ),
    (
        "src/simulator.rs",
        include_str!("../connectors/template/src/simulator.rs"),
    ),
    (
        "src/tests.rs",
        include_str!("../connectors/template/src/tests.rs"),
    ),
    (
        "schemas/items.json",
        include_str!("../connectors/template/schemas/items.json"),
    ),
];

/// The template's simulator port, replaced by the new vendor's.
const TEMPLATE_PORT: &str = "12190";

/// Names a new vendor cannot take: the workspace's own crates.
const RESERVED: &[&str] = &["acme", "template", "sdk", "sandbox", "sandbox_kit", "all"];

/// A new vendor's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// As written in configs (`type = "widget_co"`) and paths: `widget_co`.
    pub snake: String,
    /// In type names: `WidgetCo`.
    pub camel: String,
    /// In constants: `WIDGET_CO`.
    pub upper: String,
    /// The crate: `tributary-widget-co`.
    pub package: String,
    /// The crate in Rust paths: `tributary_widget_co`.
    pub krate: String,
}

impl Names {
    /// Checks `name` (lowercase letters, digits and `_`, starting with a letter, 2 to 32
    /// characters, not a vendor this build knows nor a reserved word).
    pub fn new(name: &str) -> Result<Names> {
        let valid = (2..=32).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('_')
            && !name.contains("__")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            bail!(
                "a connector name is 2 to 32 lowercase letters, digits and single underscores, \
                 starting with a letter (e.g. `widget_co`)"
            );
        }
        if RESERVED.contains(&name) {
            bail!("`{name}` is reserved; pick the vendor's own name");
        }
        if registry::vendors().iter().any(|v| v.source.kind == name) {
            bail!("`{name}` is already a connector of this build");
        }
        let camel = name
            .split('_')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        Ok(Names {
            snake: name.to_owned(),
            camel,
            upper: name.to_ascii_uppercase(),
            package: format!("tributary-{}", name.replace('_', "-")),
            krate: format!("tributary_{name}"),
        })
    }
}

/// The files of the new vendor, as paths relative to the workspace root and their text:
/// the template with Acme renamed, its schema under `schemas/<vendor>/`.
pub fn render(names: &Names, port: u16) -> Vec<(PathBuf, String)> {
    TEMPLATE
        .iter()
        .map(|(path, text)| {
            let text = text
                .replace(
                    "include_str!(\"../schemas/",
                    &format!("include_str!(\"../../../schemas/{}/", names.snake),
                )
                .replace("tributary-acme", &names.package)
                .replace("tributary_acme", &names.krate)
                .replace("ACME", &names.upper)
                .replace("Acme", &names.camel)
                .replace("acme", &names.snake)
                .replace(TEMPLATE_PORT, &port.to_string())
                .replace("publish = false\n", "");
            let target = match path.strip_prefix("schemas/") {
                Some(file) => Path::new("schemas").join(&names.snake).join(file),
                None => Path::new("connectors").join(&names.snake).join(path),
            };
            (target, text)
        })
        .collect()
}

/// The root `Cargo.toml` with the vendor's crate added: a workspace member, a workspace
/// dependency and a dependency of the binary with its `sandbox` feature. `None` when the
/// file does not have the shape this repository's has (then say what to add by hand).
pub fn register_in_cargo_toml(text: &str, names: &Names) -> Option<String> {
    let member = format!("\"connectors/{}\"", names.snake);
    let members_at = text.find("members = [")?;
    let close = members_at + text[members_at..].find(']')?;
    let mut out = String::with_capacity(text.len() + 200);
    out.push_str(&text[..close]);
    out.push_str(&format!(", {member}"));
    out.push_str(&text[close..]);

    let lines: Vec<&str> = out.lines().collect();
    let last = |pred: &dyn Fn(&str) -> bool| lines.iter().rposition(|l| pred(l));
    let path_dep = last(&|l| l.starts_with("tributary-") && l.contains("{ path = \"connectors/"))?;
    let bin_dep = last(&|l| l.starts_with("tributary-") && l.contains("features = [\"sandbox\"]"))?;
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    // The later line first, so the earlier index still holds.
    let (first, second) = (path_dep.min(bin_dep), path_dep.max(bin_dep));
    let line_for = |i: usize| {
        if i == path_dep {
            format!(
                "{} = {{ path = \"connectors/{}\" }}",
                names.package, names.snake
            )
        } else {
            format!(
                "{} = {{ workspace = true, features = [\"sandbox\"] }}",
                names.package
            )
        }
    };
    edited.insert(second + 1, line_for(second));
    edited.insert(first + 1, line_for(first));
    let mut result = edited.join("\n");
    result.push('\n');
    // It must still be a manifest, with the crate where cargo looks.
    let parsed: toml::Table = result.parse().ok()?;
    let listed = parsed
        .get("workspace")?
        .get("members")?
        .as_array()?
        .iter()
        .any(|m| m.as_str() == Some(&format!("connectors/{}", names.snake)));
    let depended = parsed.get("dependencies")?.get(&names.package).is_some();
    (listed && depended).then_some(result)
}

/// `src/registry.rs` with `vendor!(<crate>),` added after the last vendor line; `None`
/// when there is no such line.
pub fn register_in_registry(text: &str, names: &Names) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("vendor!(tributary_"))?;
    let indent: String = lines[last]
        .chars()
        .take_while(|c| c.is_whitespace())
        .collect();
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited.insert(last + 1, format!("{indent}vendor!({}),", names.krate));
    let mut result = edited.join("\n");
    result.push('\n');
    Some(result)
}

/// `connector new`: writes the vendor's crate and schema folder under `root` (a
/// workspace), and registers it there unless `register` is false or `root` is not this
/// repository. Prints what it did and what to run next.
pub fn new_connector(root: &Path, name: &str, port: Option<u16>, register: bool) -> Result<()> {
    let names = Names::new(name)?;
    let port = port.unwrap_or_else(|| {
        registry::vendors()
            .iter()
            .map(|v| v.simulator.default_port)
            .max()
            .map_or(12120, |p| p.saturating_add(1))
    });
    let files = render(&names, port);
    for dir in [
        root.join("connectors").join(&names.snake),
        root.join("schemas").join(&names.snake),
    ] {
        if dir.exists() {
            bail!("{} already exists; nothing was written", dir.display());
        }
    }
    for (path, text) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("created  {}", path.display());
    }

    let manifest = root.join("Cargo.toml");
    let registry_rs = root.join("src").join("registry.rs");
    let mut by_hand = Vec::new();
    if register && registry_rs.exists() {
        let cargo = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let reg = std::fs::read_to_string(&registry_rs)
            .with_context(|| format!("reading {}", registry_rs.display()))?;
        match (
            register_in_cargo_toml(&cargo, &names),
            register_in_registry(&reg, &names),
        ) {
            (Some(cargo), Some(reg)) => {
                std::fs::write(&manifest, cargo)?;
                std::fs::write(&registry_rs, reg)?;
                println!(
                    "edited   {} (workspace member, dependency)",
                    manifest.display()
                );
                println!(
                    "edited   {} (vendor!({}))",
                    registry_rs.display(),
                    names.krate
                );
            }
            _ => by_hand.push("register it by hand (see below)"),
        }
    } else {
        by_hand.push("it is not registered with a runtime here");
    }
    println!();
    if !by_hand.is_empty() {
        println!(
            "Not registered: {}. To register it in Tributary:",
            by_hand.join("; ")
        );
        println!(
            "  Cargo.toml:       add \"connectors/{}\" to [workspace] members,",
            names.snake
        );
        println!(
            "                    {} = {{ path = \"connectors/{}\" }} to [workspace.dependencies],",
            names.package, names.snake
        );
        println!(
            "                    {} = {{ workspace = true, features = [\"sandbox\"] }} to [dependencies]",
            names.package
        );
        println!("  src/registry.rs:  vendor!({}), in vendors()", names.krate);
        println!();
    }
    println!("Next:");
    println!(
        "  cargo test -p {}          # its conformance and fault tests against its simulator",
        names.package
    );
    println!(
        "  cargo run -- sandbox {}   # serves the simulator on 127.0.0.1:{port}",
        names.snake
    );
    println!(
        "  cargo run -- demo             # syncs every vendor's simulator, {} included",
        names.snake
    );
    println!(
        "Then make it the vendor's: connectors/{0}/src/sandbox.rs (the API as the vendor documents \
         it), streams.rs (its cursors), schemas/{0}/ (its objects); add the vendor to README's \
         vendor list (`tributary connector list --markdown`).",
        names.snake
    );
    Ok(())
}

/// The vendors this build knows, one per line (`--markdown`: the table README holds
/// between its `vendors` markers).
pub fn list(markdown: bool) -> String {
    let vendors = registry::vendors();
    if !markdown {
        return vendors
            .iter()
            .map(|v| {
                format!(
                    "{:<16} sandbox port {}\n",
                    v.source.kind, v.simulator.default_port
                )
            })
            .collect();
    }
    let mut out = String::from("| vendor (`type`) | simulator |\n|---|---|\n");
    for v in &vendors {
        out.push_str(&format!(
            "| `{0}` | `tributary sandbox {0}` (port {1}) |\n",
            v.source.kind, v.simulator.default_port
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived() {
        let names = Names::new("widget_co").unwrap();
        assert_eq!(
            (
                names.camel.as_str(),
                names.upper.as_str(),
                names.package.as_str()
            ),
            ("WidgetCo", "WIDGET_CO", "tributary-widget-co")
        );
        for bad in [
            "", "W", "1abc", "stripe", "acme", "a__b", "ab_", "has-dash", "ünï",
        ] {
            assert!(Names::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_the_template_without_a_trace_of_acme() {
        let files = render(&Names::new("widget_co").unwrap(), 12150);
        for (path, text) in &files {
            assert!(!text.to_lowercase().contains("acme"), "{}", path.display());
            assert!(!text.contains(TEMPLATE_PORT), "{}", path.display());
        }
        let streams = &files
            .iter()
            .find(|(p, _)| p.ends_with("src/streams.rs"))
            .unwrap()
            .1;
        assert!(streams.contains("include_str!(\"../../../schemas/widget_co/items.json\")"));
        assert!(
            files
                .iter()
                .any(|(p, _)| p == Path::new("schemas/widget_co/items.json"))
        );
    }

    #[test]
    fn registers_in_this_repository_s_manifest_and_registry() {
        let names = Names::new("widget_co").unwrap();
        let cargo = register_in_cargo_toml(include_str!("../Cargo.toml"), &names).unwrap();
        assert!(cargo.contains("\"connectors/widget_co\"]"), "{cargo}");
        assert!(cargo.contains("tributary-widget-co = { path = \"connectors/widget_co\" }"));
        assert!(
            cargo.contains("tributary-widget-co = { workspace = true, features = [\"sandbox\"] }")
        );
        let registry = register_in_registry(include_str!("registry.rs"), &names).unwrap();
        let at = registry.find("vendor!(tributary_widget_co),").unwrap();
        assert!(registry[..at].contains("vendor!(tributary_salesforce),"));
        assert_eq!(
            register_in_cargo_toml("[package]\nname = \"x\"\n", &names),
            None
        );
    }
}
