//! Declarative connectors: a vendor described by one TOML spec file (plus its stream
//! schemas) becomes a full Tributary connector, with the same tables, cursors,
//! exactly-once commits, rate limits and fast conversion as the hand-written ones, and a
//! simulator served from the same spec.
//!
//! - [`spec`]: the format and its validation (`tributary connector check-spec FILE`).
//! - [`source`]: the runtime connector assembled from a spec.
//! - [`extract`]: records and pagination values found without a JSON tree per record.
//! - [`template`]: `{{ config.<option> }}`, `{{ since }}`, `{{ page_size }}`.
//! - With the `sandbox` feature, [`sandbox`] serves any spec as a simulator (fixtures
//!   generated from the schemas) and [`simulator`] exports it to `sandbox`/`demo`.
//!
//! Built-in vendors live in `specs/<vendor>.toml` with their schemas in
//! `schemas/<vendor>/` at the workspace root, embedded at build time; a source selects one
//! with `type = "<vendor>"`. A user's own spec is `type = "declarative"` with
//! `spec = "path/to/vendor.toml"` (schemas in `schemas/` next to it unless the spec's
//! `schemas` key says otherwise).

use std::path::Path;
use std::sync::Arc;

use tributary_sdk::{Error, SourceFactory, StreamSchema};

pub mod extract;
pub mod source;
pub mod spec;
pub mod template;
pub mod track;

#[cfg(feature = "sandbox")]
pub mod sandbox;
#[cfg(feature = "sandbox")]
pub mod simulator;

#[cfg(test)]
mod tests;

pub use source::{DeclarativeSource, Vendor};
pub use spec::{Spec, SpecError};

/// A built-in vendor's embedded files.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Its name (`type = "<name>"`).
    pub name: &'static str,
    /// The text of `specs/<name>.toml`.
    pub spec: &'static str,
    /// `(stream, text of schemas/<name>/<stream>.json)`.
    pub schemas: &'static [(&'static str, &'static str)],
}

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
}

/// The `type` of a source whose spec is a file of the user's.
pub const KIND: &str = "declarative";

/// The names of the built-in vendors.
pub fn builtin_names() -> Vec<&'static str> {
    builtin::BUILTIN.iter().map(|b| b.name).collect()
}

/// Built-in vendor `name`: its spec and schemas, validated.
pub fn builtin(name: &str) -> std::result::Result<Vendor, SpecError> {
    let Builtin {
        name,
        spec: text,
        schemas: files,
    } = *builtin::BUILTIN
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| SpecError {
            file: format!("specs/{name}.toml"),
            stream: None,
            key: "vendor".into(),
            message: format!(
                "no built-in vendor `{name}`; built in: {}",
                builtin_names().join(", ")
            ),
        })?;
    let file = format!("connectors/declarative/specs/{name}.toml");
    let checked = Spec::parse(&file, name, text)?;
    let schemas = assemble(&checked, |stream| {
        files
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, t)| ((*t).to_owned(), format!("schemas/{name}/{stream}.json")))
    })?;
    Ok(Vendor {
        spec: Arc::new(checked),
        schemas,
    })
}

/// The spec file at `path` and its schemas, validated.
pub fn load_file(path: &Path) -> std::result::Result<Vendor, SpecError> {
    let file = path.display().to_string();
    let err = |key: &str, message: String| SpecError {
        file: file.clone(),
        stream: None,
        key: key.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("", format!("cannot read the spec file: {e}")))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "declarative".into());
    let checked = Spec::parse(&file, &name, &text)?;
    let dir = path
        .parent()
        .unwrap_or(Path::new("."))
        .join(checked.spec.schemas.as_deref().unwrap_or("schemas"));
    let schemas = assemble(&checked, |stream| {
        let p = dir.join(format!("{stream}.json"));
        std::fs::read_to_string(&p)
            .ok()
            .map(|t| (t, p.display().to_string()))
    })?;
    Ok(Vendor {
        spec: Arc::new(checked),
        schemas,
    })
}

/// Each stream's schema (from `read(stream)`: its text and file name), with the spec's
/// primary key, cursor field and deletion rule laid over it.
fn assemble(
    checked: &spec::Checked,
    read: impl Fn(&str) -> Option<(String, String)>,
) -> std::result::Result<Vec<StreamSchema>, SpecError> {
    let mut out = Vec::new();
    for s in &checked.spec.streams {
        let err = |key: &str, message: String| SpecError {
            file: checked.file.clone(),
            stream: Some(s.name.clone()),
            key: key.to_owned(),
            message,
        };
        let (text, file) = read(&s.name).ok_or_else(|| {
            err(
                "name",
                format!("no schema file `{}.json` in the schemas directory", s.name),
            )
        })?;
        let mut schema =
            StreamSchema::from_json(&text).map_err(|e| err("name", format!("{file}: {e}")))?;
        if schema.name != s.name {
            return Err(err(
                "name",
                format!("{file} declares stream `{}`", schema.name),
            ));
        }
        if let Some(pk) = &s.primary_key {
            schema.primary_key = tributary_sdk::schema::to_column_name(pk);
        }
        if let Some(inc) = &s.incremental {
            schema.cursor_field = Some(inc.cursor_field.clone());
        }
        if let Some(d) = &s.deleted {
            schema.deletion = Some(tributary_sdk::schema::DeletionRule {
                field: d.field.clone(),
                equals: serde_json::to_value(&d.equals).unwrap_or_default(),
            });
        }
        schema
            .validate()
            .map_err(|e| err("primary_key", format!("{file}: {e}")))?;
        // Only an event stream's records go on as Tracking-API calls.
        if s.track.is_some() && schema.kind != tributary_sdk::schema::StreamKind::Events {
            return Err(err(
                "track",
                format!(
                    "a stream whose records go on as `track` calls is an event stream: set `\"kind\": \"events\"` in {file}"
                ),
            ));
        }
        out.push(schema);
    }
    Ok(out)
}

fn spec_error(e: SpecError) -> Error {
    Error::Config {
        key: "spec".into(),
        message: e.to_string(),
    }
}

/// The names of `vendor`'s streams: a spec declares them all, so `plan --per stream`
/// needs no network call.
fn stream_names(vendor: &Vendor) -> Option<Vec<String>> {
    Some(
        vendor
            .spec
            .spec
            .streams
            .iter()
            .map(|s| s.name.clone())
            .collect(),
    )
}

/// The spec file a `type = "declarative"` source names.
fn user_spec(options: &serde_json::Value) -> tributary_sdk::Result<Vendor> {
    let path = options
        .get("spec")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config("spec", "is required: the path of the spec file"))?;
    load_file(Path::new(path)).map_err(spec_error)
}

/// The factory of built-in vendor `name` (`type = "<name>"`).
pub fn factory(name: &'static str) -> SourceFactory {
    SourceFactory::from_fn(
        name,
        move |options, _ctx| {
            let vendor = builtin(name).map_err(spec_error)?;
            let source = DeclarativeSource::new(name, vendor, &options)?;
            Ok(Arc::new(source::Shared(Arc::new(source))) as Arc<dyn tributary_sdk::Source>)
        },
        move |_options| Ok(stream_names(&builtin(name).map_err(spec_error)?)),
    )
}

/// The factory of `type = "declarative"` sources: `spec = "path/to/vendor.toml"`.
pub fn user_factory() -> SourceFactory {
    SourceFactory::from_fn(
        KIND,
        |options, _ctx| {
            let vendor = user_spec(&options)?;
            let source = DeclarativeSource::new(KIND, vendor, &options)?;
            Ok(Arc::new(source::Shared(Arc::new(source))) as Arc<dyn tributary_sdk::Source>)
        },
        |options| Ok(stream_names(&user_spec(&options)?)),
    )
}

/// Every built-in vendor's source factory.
pub fn factories() -> Vec<SourceFactory> {
    builtin::BUILTIN.iter().map(|b| factory(b.name)).collect()
}
