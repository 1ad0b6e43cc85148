//! Shared helpers: a sandbox + warehouse + config in a temp dir, running the binary, and
//! reading a table back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object_store::ObjectStoreExt as _;
use std::process::Output;

use arrow::array::{Array, AsArray, RecordBatch};
use tributary_stripe::sandbox::{SandboxConfig, StripeSandbox};

/// A vendor as the end-to-end tests drive it: its simulator, and the lines of a
/// `[sources.<name>]` section that sync it.
pub trait Vendor {
    /// The running simulator.
    type Sandbox;
    /// The source's name and type in the config (and its tables' folder).
    const NAME: &'static str;
    /// The source section's lines that point at `sandbox` with its credentials.
    fn source_lines(sandbox: &Self::Sandbox) -> String;
}

/// Stripe, with `requests_per_second` far above what a test measures.
pub struct Stripe;

impl Vendor for Stripe {
    type Sandbox = StripeSandbox;
    const NAME: &'static str = "stripe";
    fn source_lines(sandbox: &StripeSandbox) -> String {
        format!(
            "api_key = \"{}\"\napi_base = \"{}\"\nrequests_per_second = 500\nrequests_per_second_per_endpoint = 500\n",
            StripeSandbox::api_key(),
            sandbox.url()
        )
    }
}

/// A vendor's simulator, a temp warehouse and a config file pointing at both. `Env` alone
/// is Stripe's.
pub struct Env<V: Vendor = Stripe> {
    pub sandbox: V::Sandbox,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl<V: Vendor> Env<V> {
    /// An environment for a started `sandbox`, its config written with `[sync]` lines
    /// `sync` and the source's own lines followed by `source`.
    pub fn with_sandbox(sandbox: V::Sandbox, sync: &str, source: &str) -> Env<V> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("tributary.toml");
        let env = Env {
            sandbox,
            dir,
            config,
        };
        env.write_sections(sync, source);
        env
    }

    /// Writes the config: the warehouse, `[sync]` (`batch_size = 500` and `sync`), and
    /// `[sources.<vendor>]` (its type, [`Vendor::source_lines`] and `source`).
    pub fn write_sections(&self, sync: &str, source: &str) {
        let text = format!(
            "[warehouse]\nurl = {:?}\n\n[sync]\nbatch_size = 500\n{sync}\n\n[sources.{name}]\ntype = \"{name}\"\n{}{source}\n",
            self.warehouse().display().to_string(),
            V::source_lines(&self.sandbox),
            name = V::NAME,
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
        self.warehouse().join(V::NAME).join(stream)
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

impl Env<Stripe> {
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
        Env::with_sandbox(sandbox, "", extra)
    }
}

/// Runs `tributary sync` again and again, each time SIGKILLed after a pseudo-random delay
/// (`base_ms` plus up to `spread_ms`, from `seed`), until a run completes on its own (at
/// most `rounds` runs); after every kill `after_kill(round)` checks the tables. Returns how
/// many runs were killed mid-way. Fails, with the run's log, if a run fails on its own.
///
/// A killed run leaves its streams' leases behind, live for `sync.lease_seconds`: after
/// each kill this waits that long (so give such configs `lease_seconds = 1`), and a run
/// that still meets a lease (a `leased` stream) fails the test.
pub async fn sigkill_until_done(
    config: &Path,
    rounds: u32,
    mut seed: u64,
    (base_ms, spread_ms): (u64, u64),
    mut after_kill: impl AsyncFnMut(u32),
) -> u32 {
    let lease = std::time::Duration::from_secs(
        tributary::config::load(config)
            .expect("the config loads")
            .sync
            .lease_seconds,
    );
    let mut killed = 0;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_millis(base_ms + seed % spread_ms);
        let log = config.with_file_name(format!("sync-round-{round}.log"));
        let out = config.with_file_name(format!("sync-round-{round}.out"));
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["sync", "--config"])
            .arg(config)
            .stdout(std::fs::File::create(&out).expect("output file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        tokio::select! {
            status = child.wait() => {
                assert!(
                    status.expect("wait").success(),
                    "round {round}: the sync failed on its own:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                let summary = std::fs::read_to_string(&out).unwrap_or_default();
                assert!(
                    !summary.contains(" leased"),
                    "round {round}: a killed run's lease outlived its wait:\n{summary}"
                );
                return killed;
            }
            _ = tokio::time::sleep(delay) => {
                child.start_kill().expect("SIGKILL");
                let _ = child.wait().await;
                killed += 1;
                // Its leases expire before the next run.
                tokio::time::sleep(lease + std::time::Duration::from_millis(200)).await;
            }
        }
        after_kill(round).await;
    }
    killed
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
    live_batches(&table).await
}

/// Every live row of `table` (any store): its snapshot's data files read through the
/// table's object store, less the rows their deletion vectors mark.
pub async fn live_batches(table: &deltalake::DeltaTable) -> Vec<RecordBatch> {
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
        let bytes = store
            .get(&object_store::path::Path::from(file.as_str()))
            .await
            .expect("data file exists")
            .bytes()
            .await
            .expect("data file reads");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 8192)
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

/// Sends `kill -<name>` to `pid` (TERM; STOP and CONT freeze and thaw a process).
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Sends SIGTERM to `child` and waits (at most 20 s) for it to exit.
pub async fn terminate(child: tokio::process::Child) -> Output {
    signal(child.id().expect("still running"), "TERM");
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
