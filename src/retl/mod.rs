//! Reverse-ETL sources: models read from PostgreSQL or Delta tables, their changed rows sent
//! on as Tracking-API calls (identify, track, group).
//!
//! A run of a model:
//! 1. reads what was recorded of its rows last time ([`state`], in our bucket);
//! 2. streams the model's rows ([`postgres`], [`delta`]) and sorts each into added,
//!    updated (its checksum changed) or unchanged, refusing a row without an id or an id
//!    seen twice; ids recorded but not seen are deleted;
//! 3. stages, `commit_every` changes at a time, the new state rows as a data file of the
//!    state table and the calls as an outbox file (see [`crate::tracking::outbox`]) with the
//!    commit sequence number they will land at; nothing counts yet;
//! 4. only once the whole model was read without error, commits the staged parts in order:
//!    each commit lands one part's state rows and makes its outbox file count, together;
//! 5. delivers the outbox.
//!
//! So a model that fails (query error, missing or duplicate id, a mapping column missing, a
//! row without the ids Segment needs) sends nothing and records nothing; a run killed at any
//! point neither loses a change (what was not committed is found again by the next run)
//! nor sends one twice under different ids (the `messageId` is derived from the model, the
//! row's id and its change number, and a committed change is not found again).

pub mod config;
pub mod delta;
pub mod filter;
pub mod mapping;
pub mod postgres;
pub mod state;

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::engine::{Cancel, Status, StreamOutcome, TrackingOutcome};
use crate::lease::{Acquired, LeaseCheck, Leases};
use crate::tracking::client::TrackingClient;
use crate::tracking::outbox::Outbox;
use crate::warehouse::{NewFile, SnapshotStep, StreamTable, Warehouse};
use config::{Change, Connection, Model, Query, RetlSource};
use mapping::Ids;

/// One row of a model as read: its id as text (`None` when null) and the whole row as a
/// JSON object's text.
#[derive(Debug, Clone)]
pub struct Row {
    /// The id column's value as text.
    pub id: Option<String>,
    /// The row as JSON.
    pub json: String,
}

/// A model being read.
pub enum Reader {
    /// From PostgreSQL.
    Postgres(postgres::PgReader),
    /// From a Delta table.
    Delta(delta::DeltaReader),
}

impl Reader {
    /// Opens the model's rows and checks that the columns its id and mapping name exist.
    pub async fn open(source: &RetlSource, model: &Model) -> Result<Reader> {
        let reader = match (&source.connection, &model.query) {
            (Connection::Postgres(conn), Query::Sql(sql)) => {
                Reader::Postgres(postgres::PgReader::open(conn, sql, &model.id, &model.name).await?)
            }
            (
                Connection::Delta(conn),
                Query::Table {
                    table,
                    columns,
                    filter,
                },
            ) => Reader::Delta(
                delta::DeltaReader::open(
                    conn,
                    table,
                    columns.as_deref(),
                    filter.as_ref(),
                    &model.id,
                    &model.name,
                )
                .await?,
            ),
            _ => bail!("model `{}` does not fit its source's type", model.name),
        };
        let columns = reader.columns();
        for (key, column) in model.mapping.columns() {
            if !columns.iter().any(|c| c == column) {
                bail!(
                    "model `{}`: mapping.{key} names the column `{column}`, which the model does not have (its columns: {})",
                    model.name,
                    columns.join(", ")
                );
            }
        }
        Ok(reader)
    }

    /// The model's columns.
    pub fn columns(&self) -> &[String] {
        match self {
            Reader::Postgres(r) => r.columns(),
            Reader::Delta(r) => r.columns(),
        }
    }

    /// The next batch of rows, `None` at the end.
    pub async fn next(&mut self, model: &str) -> Result<Option<Vec<Row>>> {
        match self {
            Reader::Postgres(r) => r.next(model).await,
            Reader::Delta(r) => r.next(model).await,
        }
    }
}

/// What a run found in a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Rows read.
    pub rows: u64,
    /// Rows new since the last run.
    pub added: u64,
    /// Rows whose content changed.
    pub updated: u64,
    /// Rows gone from the model.
    pub deleted: u64,
    /// Calls made of them (the mapping's `send` picks which changes are sent).
    pub messages: u64,
}

impl Changes {
    /// `1000 rows: 10 added, 5 updated, 2 deleted; 12 calls`.
    pub fn line(&self) -> String {
        format!(
            "{} rows: {} added, {} updated, {} deleted; {} calls",
            self.rows, self.added, self.updated, self.deleted, self.messages
        )
    }
}

/// Where a run's changes go.
enum Sink<'a> {
    /// `retl preview`: counted, the first `limit` calls kept.
    Preview { limit: usize, sample: Vec<Value> },
    /// A run: staged as parts, committed at the end.
    Stage(Stager<'a>),
}

/// The parts of a run, written but not yet committed.
struct Stager<'a> {
    /// The model's lease: a part is written only while it is held (another worker's
    /// staged outbox file of the same seq must not be replaced).
    lease: Option<&'a LeaseCheck>,
    table: &'a StreamTable,
    outbox: &'a Outbox,
    commit_every: usize,
    rows: state::Rows,
    messages: Vec<Value>,
    parts: Vec<(NewFile, u64)>,
}

impl Stager<'_> {
    /// Writes the gathered rows and calls as the next part: its outbox file (at the seq its
    /// commit will have) and its state data file.
    async fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        if let Some(lease) = self.lease {
            lease
                .check()
                .map_err(|reason| anyhow!("{reason}; stopped before writing"))?;
        }
        let seq = self.table.seq() + self.parts.len() as i64 + 1;
        self.outbox.write(seq, &self.messages).await?;
        self.messages.clear();
        let records = self.rows.len() as u64;
        let mut file = self.table.new_file(state::schema())?;
        file.write(&self.rows.take()?).await?;
        self.parts.push((file.finish().await?, records));
        Ok(())
    }
}

impl Sink<'_> {
    async fn push(
        &mut self,
        id: &str,
        checksum: u64,
        version: i64,
        ids: &Ids,
        deleted: bool,
        message: Option<Value>,
    ) -> Result<()> {
        match self {
            Sink::Preview { limit, sample } => {
                if let Some(m) = message
                    && sample.len() < *limit
                {
                    sample.push(m);
                }
            }
            Sink::Stage(stager) => {
                stager.rows.push(id, checksum, version, ids, deleted);
                stager.messages.extend(message);
                if stager.rows.len() >= stager.commit_every {
                    stager.flush().await?;
                }
            }
        }
        Ok(())
    }
}

/// The state table's location: `_tributary/retl/<source>/<model>`.
fn state_parts<'a>(source: &'a str, model: &'a str) -> [&'a str; 4] {
    ["_tributary", "retl", source, model]
}

fn app_id(source: &str, model: &str) -> String {
    format!("tributary/retl/{source}/{model}")
}

/// The outbox of a model's calls.
pub fn outbox(warehouse: &Warehouse, source: &str, model: &str) -> Result<Outbox> {
    let (store, root) = warehouse.store()?;
    Ok(Outbox::new(store, &root, source, model))
}

/// Reads the model and sorts its rows, handing every change to `sink`.
async fn detect(
    source: &RetlSource,
    model: &Model,
    table: Option<&deltalake::DeltaTable>,
    sink: &mut Sink<'_>,
    cancel: &Cancel,
) -> Result<Option<Changes>> {
    let mut prior = match table {
        Some(t) => state::load(t).await?,
        None => Default::default(),
    };
    let mut reader = Reader::open(source, model).await?;
    let run = mapping::RunContext {
        source: &source.name,
        now: Utc::now(),
    };
    let mut changes = Changes::default();
    let send = |change: Change| model.mapping.sends(change);
    while let Some(rows) = reader.next(&model.name).await? {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        for row in rows {
            changes.rows += 1;
            let Some(id) = row.id else {
                bail!(
                    "model `{}`: a row has no value in the id column `{}`; every row needs a unique, non-null id",
                    model.name,
                    model.id
                );
            };
            let checksum = state::checksum(&row.json);
            let (change, version) = match prior.entry(state::id_hash(&id)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(state::Prior {
                        checksum,
                        version: 1,
                        deleted: false,
                        seen: true,
                    });
                    (Change::Added, 1)
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let p = o.get_mut();
                    if p.seen {
                        bail!(
                            "model `{}`: the id {id:?} appears twice in the id column `{}`; the id must be unique (nothing was sent or recorded)",
                            model.name,
                            model.id
                        );
                    }
                    p.seen = true;
                    if !p.deleted && p.checksum == checksum {
                        continue;
                    }
                    let change = if p.deleted {
                        Change::Added
                    } else {
                        Change::Updated
                    };
                    (change, i64::from(p.version) + 1)
                }
            };
            match change {
                Change::Added => changes.added += 1,
                _ => changes.updated += 1,
            }
            let parsed: Map<String, Value> = serde_json::from_str(&row.json).map_err(|e| {
                anyhow!(
                    "model `{}`: the row with id {id:?} is not a JSON object: {e}",
                    model.name
                )
            })?;
            let ids = mapping::ids(model, &parsed, &id)?;
            let message = if send(change) {
                changes.messages += 1;
                Some(mapping::message(
                    &run,
                    model,
                    change,
                    &ids,
                    Some(&parsed),
                    &id,
                    version,
                )?)
            } else {
                None
            };
            sink.push(&id, checksum, version, &ids, false, message)
                .await?;
        }
    }
    let missing: HashSet<u128> = prior
        .iter()
        .filter(|(_, p)| !p.seen && !p.deleted)
        .map(|(h, _)| *h)
        .collect();
    drop(prior);
    if let (Some(t), false) = (table, missing.is_empty()) {
        for gone in state::gone(t, &missing).await? {
            changes.deleted += 1;
            let version = gone.version + 1;
            let message = if send(Change::Deleted) {
                changes.messages += 1;
                Some(mapping::message(
                    &run,
                    model,
                    Change::Deleted,
                    &gone.ids,
                    None,
                    &gone.id,
                    version,
                )?)
            } else {
                None
            };
            sink.push(&gone.id, gone.checksum, version, &gone.ids, true, message)
                .await?;
        }
    }
    Ok(Some(changes))
}

/// What `retl preview` shows: the changes the next run would find, and its first calls.
pub struct Preview {
    /// The counts.
    pub changes: Changes,
    /// Up to `limit` calls, in the order they would be sent.
    pub sample: Vec<Value>,
}

/// Reads the model and compares it with what is recorded, sending and recording nothing.
pub async fn preview(
    warehouse: &Warehouse,
    source: &RetlSource,
    model: &Model,
    limit: usize,
    cancel: &Cancel,
) -> Result<Preview> {
    let table = warehouse
        .open(&state_parts(&source.name, &model.name))
        .await?;
    let mut sink = Sink::Preview {
        limit,
        sample: Vec::new(),
    };
    let changes = detect(source, model, table.as_ref(), &mut sink, cancel)
        .await?
        .ok_or_else(|| anyhow!("cancelled"))?;
    let Sink::Preview { sample, .. } = sink else {
        unreachable!("a preview sink")
    };
    Ok(Preview { changes, sample })
}

/// Runs one model under its lease (`_tributary/leases/<source>/<model>`, as a stream's):
/// detects its changes, commits them with their calls, delivers the model's outbox. A model
/// another worker holds is `leased`, not run. Never fails as a whole: the outcome's status
/// says what went wrong.
pub async fn run_model(
    warehouse: &Warehouse,
    leases: Option<&Leases>,
    source: &RetlSource,
    model: &Model,
    client: Option<&TrackingClient>,
    run_id: &str,
    cancel: &Cancel,
) -> StreamOutcome {
    let mut outcome = StreamOutcome::new(&source.name, &model.name, Status::Succeeded);
    let acquired = match leases {
        Some(leases) => leases.acquire(&source.name, &model.name).await.map(Some),
        None => Ok(None),
    };
    let lease = match acquired {
        Ok(None) => None,
        Ok(Some(Acquired::Taken(lease))) => Some(lease),
        Ok(Some(Acquired::Held(holder))) => {
            tracing::info!(source = %source.name, model = %model.name, owner = %holder.owner, expires_at = %holder.expires_at, "Another worker holds the model's lease; skipping it.");
            outcome.status = Status::Leased(holder.describe());
            return outcome;
        }
        Err(e) => {
            let e = e.context(format!(
                "taking the lease on {}.{}",
                source.name, model.name
            ));
            outcome.status = Status::Failed(crate::logging::scrubbed(&e));
            return outcome;
        }
    };
    let check = lease.as_ref().map(|lease| {
        crate::metrics::lease_held(&source.name, &model.name, 1);
        lease.check()
    });
    outcome.worker = lease.as_ref().map(|lease| lease.record().owner);
    match run_inner(
        warehouse,
        check.as_ref(),
        source,
        model,
        client,
        run_id,
        cancel,
        &mut outcome,
    )
    .await
    {
        Ok(status) => outcome.status = status,
        Err(e) => {
            let e = crate::logging::scrubbed(&e);
            tracing::error!(source = %source.name, model = %model.name, error = %e, "Reverse-ETL model failed; nothing of this run was sent or recorded.");
            outcome.status = Status::Failed(e);
        }
    }
    if let Some(lease) = lease {
        lease.release().await;
        crate::metrics::lease_held(&source.name, &model.name, -1);
    }
    outcome.ended_at = Utc::now();
    crate::metrics::stream_finished(&outcome);
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    warehouse: &Warehouse,
    lease: Option<&LeaseCheck>,
    source: &RetlSource,
    model: &Model,
    client: Option<&TrackingClient>,
    run_id: &str,
    cancel: &Cancel,
    outcome: &mut StreamOutcome,
) -> Result<Status> {
    let parts = state_parts(&source.name, &model.name);
    let schema = state::schema();
    let mut table = StreamTable::open(
        warehouse,
        &parts,
        app_id(&source.name, &model.name),
        &schema,
        65_536,
        Some("id"),
    )
    .await?;
    let outbox = outbox(warehouse, &source.name, &model.name)?;
    let delta = table.delta().clone();
    let mut stager = Stager {
        lease,
        table: &table,
        outbox: &outbox,
        commit_every: source.commit_every as usize,
        rows: state::Rows::default(),
        messages: Vec::new(),
        parts: Vec::new(),
    };
    let mut sink = Sink::Stage(stager);
    let detected = detect(source, model, Some(&delta), &mut sink, cancel).await?;
    let Sink::Stage(s) = sink else {
        unreachable!("a staging sink")
    };
    stager = s;
    let Some(changes) = detected else {
        return Ok(Status::Cancelled);
    };
    stager.flush().await?;
    let staged = std::mem::take(&mut stager.parts);
    drop(stager);
    outcome.records = changes.rows;
    outcome.messages_queued = changes.messages;
    let total = staged.len();
    let base = table.seq();
    for (i, (file, records)) in staged.into_iter().enumerate() {
        if let Some(lease) = lease {
            lease
                .check()
                .map_err(|reason| anyhow!("{reason}; stopped before committing part {}", i + 1))?;
        }
        outcome.files += 1;
        outcome.bytes += file.add.size.max(0) as u64;
        let cursor = json!({
            "rows": changes.rows,
            "added": changes.added,
            "updated": changes.updated,
            "deleted": changes.deleted,
            "part": i + 1,
            "parts": total,
        });
        table
            .commit(
                vec![file],
                &schema,
                SnapshotStep::default(),
                cursor,
                records,
                run_id,
            )
            .await?;
        if table.seq() != base + i as i64 + 1 {
            bail!(
                "the state table of model `{}` moved to commit {} while this run committed {}; another run of the model is writing",
                model.name,
                table.seq(),
                base + i as i64 + 1
            );
        }
        outcome.commits += 1;
    }
    tracing::info!(source = %source.name, model = %model.name, rows = changes.rows, added = changes.added, updated = changes.updated, deleted = changes.deleted, calls = changes.messages, commits = total, "Reverse-ETL model read.");
    outcome.changes = Some(changes);
    // Delivery: this run's calls and any backlog of earlier runs (`tracking.enabled =
    // false` keeps them in the outbox).
    let Some(client) = client else {
        return Ok(Status::Succeeded);
    };
    let hold = || lease.map_or(Ok(()), |l| l.check());
    let delivered = outbox.deliver(client, table.seq(), &hold).await;
    if let Err(e) = &delivered {
        tracing::warn!(source = %source.name, model = %model.name, error = %format!("{e:#}"), "Could not read the model's outbox; it stays for the next run.");
    }
    outcome.tracking = Some(TrackingOutcome::of(
        &delivered,
        client.accepts_any_write_key(),
    ));
    Ok(Status::Succeeded)
}

/// Runs the selected models of a reverse-ETL source, one after another.
pub async fn run_source(
    warehouse: &Warehouse,
    leases: Option<&Leases>,
    source: &RetlSource,
    only_model: Option<&str>,
    run_id: &str,
    cancel: &Cancel,
) -> Result<Vec<StreamOutcome>> {
    let models: Vec<&Model> = match only_model {
        Some(m) => vec![source.model(m)?],
        None => source.models.iter().collect(),
    };
    let client = match source.tracking.enabled {
        true => Some(
            crate::tracking::client_for(&source.tracking)
                .map_err(|e| anyhow!("source `{}`: tracking: {e:#}", source.name))?,
        ),
        false => None,
    };
    let mut out = Vec::new();
    for model in models {
        if cancel.is_cancelled() {
            break;
        }
        out.push(
            run_model(
                warehouse,
                leases,
                source,
                model,
                client.as_ref(),
                run_id,
                cancel,
            )
            .await,
        );
    }
    Ok(out)
}

/// What `check` prints for a reverse-ETL source, and whether it failed: every model is
/// opened (the query described, or the table's schema read) and its id and mapping columns
/// checked; no row is read.
pub async fn check(source: &RetlSource) -> (String, bool) {
    let mut failures = Vec::new();
    for model in &source.models {
        if let Err(e) = Reader::open(source, model).await {
            failures.push(crate::logging::scrubbed(&e));
        }
    }
    match failures.is_empty() {
        true => (format!("ok ({} models)", source.models.len()), false),
        false => (format!("FAILED: {}", failures.join("; ")), true),
    }
}

/// `state`'s lines for a reverse-ETL source: each model's last commit and the calls
/// waiting in its outbox.
pub async fn state_lines(warehouse: &Warehouse, source: &RetlSource) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for model in &source.models {
        let name = format!("{}.{}", source.name, model.name);
        let Some(table) = warehouse
            .open(&state_parts(&source.name, &model.name))
            .await?
        else {
            out.push(format!(
                "{name:<32} {:>8} {:>5} {:<26} -",
                "-", "-", "never run"
            ));
            continue;
        };
        let (seq, meta) =
            crate::warehouse::read_position(&table, &app_id(&source.name, &model.name)).await?;
        let version = table.version().map(|v| v.to_string()).unwrap_or_default();
        match meta {
            Some(m) => out.push(format!(
                "{name:<32} {version:>8} {seq:>5} {:<26} {}",
                m.committed_at, m.cursor
            )),
            None => out.push(format!(
                "{name:<32} {version:>8} {:>5} {:<26} -",
                "-", "no commit yet"
            )),
        }
        let pending = outbox(warehouse, &source.name, &model.name)?
            .backlog(seq)
            .await?;
        out.push(format!("    tracking outbox: {pending} messages pending"));
    }
    Ok(out)
}
