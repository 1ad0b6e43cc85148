//! Shared helpers: a sandbox + warehouse + config in a temp dir, running the binary, and
//! reading a table back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use arrow::array::{Array, AsArray, RecordBatch};
use tributary_stripe::sandbox::{SandboxConfig, StripeSandbox};

/// A simulator, a temp warehouse and a config file pointing at both.
pub struct Env {
    pub sandbox: StripeSandbox,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    /// Starts a Stripe sandbox with `records` objects and writes a config whose source
    /// section is `[sources.stripe]` plus `extra` lines.
    pub async fn stripe(records: usize, extra: &str) -> Env {
        Self::stripe_with(
            SandboxConfig {
                records,
                ..Default::default()
            },
            extra,
        )
        .await
    }

    pub async fn stripe_with(config: SandboxConfig, extra: &str) -> Env {
        let sandbox = StripeSandbox::start(config, 0)
            .await
            .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("tributary.toml");
        let env = Env {
            sandbox,
            dir,
            config,
        };
        env.write_config(extra);
        env
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[warehouse]\nurl = {:?}\n\n[sync]\nbatch_size = 500\n\n[sources.stripe]\ntype = \"stripe\"\napi_key = \"{}\"\napi_base = \"{}\"\nrequests_per_second = 500\n{extra}\n",
            self.warehouse().display().to_string(),
            StripeSandbox::api_key(),
            self.sandbox.url()
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Adds `line` to the config's `[warehouse]` section.
    pub fn add_warehouse_option(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let text = text.replacen("\n\n[sync]", &format!("\n{line}\n\n[sync]"), 1);
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Adds `line` to the config's `[sync]` section.
    pub fn add_sync_option(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let text = text.replacen("[sync]\n", &format!("[sync]\n{line}\n"), 1);
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("warehouse")
    }

    pub fn table(&self, stream: &str) -> PathBuf {
        self.warehouse().join("stripe").join(stream)
    }

    /// Runs `tributary <args> --config <config>` to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        run_binary(&self.config, args).await
    }

    /// Runs a sync that must succeed; returns its stdout.
    pub async fn sync_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["sync"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert_success(&out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub async fn run_binary(config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .output()
        .await
        .expect("the binary runs")
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every live row of a Delta table: the snapshot's data files, less the rows their deletion
/// vectors mark. (The independent readers' view is checked in `readback`.)
pub async fn read_table(path: &Path) -> Vec<RecordBatch> {
    let url = url::Url::from_directory_path(path).expect("absolute path");
    let table = deltalake::open_table(url).await.expect("table opens");
    let store = table.object_store();
    let mut batches = Vec::new();
    let files: Vec<_> = table
        .snapshot()
        .expect("snapshot")
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.deletion_vector_descriptor()))
        .collect();
    for (file, dv) in files {
        let deleted = match dv {
            Some(dv) => tributary::warehouse::dv::read(store.as_ref(), &dv)
                .await
                .expect("deletion vector reads"),
            None => Default::default(),
        };
        let f = std::fs::File::open(path.join(&file)).expect("data file exists");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(f, 8192)
            .expect("parquet reads");
        let mut offset = 0u64;
        for b in reader {
            let b = b.expect("batch");
            let keep: arrow::array::BooleanArray = (offset..offset + b.num_rows() as u64)
                .map(|i| Some(!deleted.contains(i)))
                .collect();
            offset += b.num_rows() as u64;
            batches.push(arrow::compute::filter_record_batch(&b, &keep).expect("filter"));
        }
    }
    batches
}

/// The values of a string column across batches (null → "").
pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        match b.column_by_name(column) {
            Some(c) => {
                let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).expect("cast");
                let s = c.as_string::<i32>();
                for i in 0..s.len() {
                    out.push(if s.is_null(i) {
                        String::new()
                    } else {
                        s.value(i).to_owned()
                    });
                }
            }
            None => out.extend(std::iter::repeat_n(String::new(), b.num_rows())),
        }
    }
    out
}

/// Row count per id.
pub fn id_counts(batches: &[RecordBatch]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in strings(batches, "id") {
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// The latest row of each id (the row with the greatest `received_at`, then file order).
pub fn latest_by_id(batches: &[RecordBatch], column: &str) -> HashMap<String, String> {
    let ids = strings(batches, "id");
    let values = strings(batches, column);
    let received = strings(batches, "received_at");
    let mut best: HashMap<String, (String, String)> = HashMap::new();
    for ((id, v), r) in ids.into_iter().zip(values).zip(received) {
        match best.get(&id) {
            Some((br, _)) if *br > r => {}
            _ => {
                best.insert(id, (r, v));
            }
        }
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Starts `tributary <command> --config <config>` in the background, output captured.
pub fn spawn(env: &Env, command: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([command, "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// Sends SIGTERM to `child` and waits (at most 20 s) for it to exit.
pub async fn terminate(child: tokio::process::Child) -> Output {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid}");
    tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("it stops within 20 s of SIGTERM")
        .expect("output")
}

/// The Python with the independent readers and moto, installed by scripts/test.sh.
pub fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        panic!("TRIBUTARY_PYTHON is not set: run the suite with scripts/test.sh, which installs DuckDB, deltalake and moto")
    })
}

/// Runs a Python script with `args`; its standard output. Fails the test if it fails.
pub async fn py(script: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
