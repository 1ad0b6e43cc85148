//! Reading a model from PostgreSQL.
//!
//! Guarantees: nothing is written to the customer's database. A model is read in one
//! `READ ONLY` transaction (`REPEATABLE READ`, so every batch comes from one snapshot),
//! through a server-side cursor fetched a batch at a time, so memory does not grow with the
//! model. Each row arrives as its id rendered as text and the whole row as JSON text, both
//! rendered by the server (`row_to_json`), so every PostgreSQL type has its usual JSON form.
//! The server cancels a query that runs past `statement_timeout_seconds`; a connection that
//! does not answer within `connect_timeout_seconds` is an error.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;

use super::Row;
use super::config::{PostgresConnection, TlsMode};

/// Rows fetched from the cursor at a time: one round trip each (at 300 ms, a million rows
/// take 200 of them, ~60 s), and this many rows in memory at once.
/// PostgreSQL docs: DECLARE (https://www.postgresql.org/docs/current/sql-declare.html),
/// FETCH (https://www.postgresql.org/docs/current/sql-fetch.html); `statement_timeout`
/// (https://www.postgresql.org/docs/current/runtime-config-client.html) is set with
/// `SET LOCAL`, so it ends with the transaction.
const FETCH: usize = 5_000;

/// A PostgreSQL error as one line: the server's message with its SQLSTATE, detail and hint,
/// or the client's (connection refused, TLS, …). Credentials are masked.
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            if let Some(p) = db.position() {
                s.push_str(&format!("; at {p:?}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let more = inner.to_string();
                if !s.contains(&more) {
                    s.push_str(&format!(": {more}"));
                }
                source = inner.source();
            }
            s
        }
    };
    tributary_sdk::secret::scrub(&text).into_owned()
}

fn tls_config(conn: &PostgresConnection) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &conn.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading the CA certificates in {}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading the CA certificates in {}", path.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects; the connection's driver runs on its own task until the client is dropped.
pub async fn connect(conn: &PostgresConnection) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::from_str(conn.url.expose())
        .map_err(|e| anyhow!("the connection URL: {}", describe(&e)))?;
    config
        .application_name("tributary")
        .connect_timeout(Duration::from_secs(conn.connect_timeout_seconds))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60))
        .ssl_mode(match conn.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
        });
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(conn)?);
    // The client's own timeout covers the TCP connect; this one also covers a server that
    // accepts and then never answers the startup.
    let limit = Duration::from_secs(conn.connect_timeout_seconds * 2 + 5);
    let (client, connection) = tokio::time::timeout(limit, config.connect(tls))
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from the server within {}s (connect_timeout_seconds)",
                limit.as_secs()
            )
        })?
        .map_err(|e| {
            let text = describe(&e);
            if conn.tls == TlsMode::Require && text.contains("TLS") {
                anyhow!(
                    "{text} (the source has tls = \"require\": the server must offer TLS with a certificate the system's CAs or `ca_file` trust; set tls = \"disable\" only for a server on a private network)"
                )
            } else {
                anyhow!("{text}")
            }
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "The PostgreSQL connection closed.");
        }
    });
    Ok(client)
}

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A model's rows, read from a cursor.
pub struct PgReader {
    client: tokio_postgres::Client,
    columns: Vec<String>,
    done: bool,
}

impl PgReader {
    /// Starts reading `query` (the model's SELECT) with `id` as the id column: checks what
    /// the query returns without running it, then opens the cursor. Errors name the
    /// problem; `id` missing from the query's columns is one.
    pub async fn open(
        conn: &PostgresConnection,
        query: &str,
        id: &str,
        model: &str,
    ) -> Result<PgReader> {
        let client = connect(conn).await?;
        // Describing the statement reports syntax errors and missing tables or columns
        // without running the query.
        let statement = client
            .prepare(query)
            .await
            .map_err(|e| anyhow!("model `{model}`: the query failed: {}", describe(&e)))?;
        let columns: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        if let Some(dup) = columns
            .iter()
            .enumerate()
            .find(|(i, c)| columns[..*i].contains(c))
        {
            bail!(
                "model `{model}`: the query returns two columns named `{}`; give them distinct names (AS ...)",
                dup.1
            );
        }
        if !columns.iter().any(|c| c == id) {
            bail!(
                "model `{model}`: the id column `{id}` is not among the query's columns ({}); set `id` to the unique identifier column",
                columns.join(", ")
            );
        }
        drop(statement);
        client
            .batch_execute(&format!(
                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {}",
                conn.statement_timeout_seconds * 1000
            ))
            .await
            .map_err(|e| anyhow!("model `{model}`: starting a read-only transaction: {}", describe(&e)))?;
        let wrapped = format!(
            "DECLARE tributary_model NO SCROLL CURSOR FOR SELECT (m.{id})::text, row_to_json(m)::text FROM ({query}\n) AS m",
            id = ident(id)
        );
        client
            .batch_execute(&wrapped)
            .await
            .map_err(|e| anyhow!("model `{model}`: the query failed: {}", describe(&e)))?;
        Ok(PgReader {
            client,
            columns,
            done: false,
        })
    }

    /// The query's columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next batch of rows; `None` at the end.
    pub async fn next(&mut self, model: &str) -> Result<Option<Vec<Row>>> {
        if self.done {
            return Ok(None);
        }
        let rows = self
            .client
            .query(&format!("FETCH FORWARD {FETCH} FROM tributary_model"), &[])
            .await
            .map_err(|e| {
                anyhow!(
                    "model `{model}`: reading the query's rows: {}",
                    describe(&e)
                )
            })?;
        if rows.len() < FETCH {
            self.done = true;
            // Read only: ending it changes nothing.
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .map(|r| {
                Ok(Row {
                    id: r.try_get::<_, Option<String>>(0)?,
                    json: r.try_get::<_, String>(1)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map(Some)
            .map_err(|e| anyhow!("model `{model}`: reading a row: {}", describe(&e)))
    }
}
