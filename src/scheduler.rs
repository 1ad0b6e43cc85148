//! The `run` daemon: every source on its cron schedule, never two overlapping runs of
//! one source, and a clean stop on SIGTERM/SIGINT (running streams commit what they have
//! and the daemon exits once they have).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use chrono::Utc;
use tokio::task::JoinHandle;

use crate::config::Loaded;
use crate::engine::{Cancel, Status};
use crate::orchestrator::sync_sources;

/// Runs until `cancel` fires.
pub async fn run(config: Arc<Loaded>, cancel: Cancel) -> Result<()> {
    let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut next: HashMap<String, chrono::DateTime<Utc>> = HashMap::new();
    // Cloud-app and reverse-ETL sources alike.
    let schedules: Vec<(&str, &crate::config::Schedule)> = config
        .sources
        .iter()
        .map(|s| (s.name.as_str(), &s.schedule))
        .chain(config.retl.iter().map(|s| (s.name.as_str(), &s.schedule)))
        .collect();
    for (name, schedule) in &schedules {
        if let Some(t) = schedule.cron.upcoming(Utc).next() {
            tracing::info!(source = %name, schedule = %schedule.text, next = %t, "Scheduled source.");
            next.insert((*name).to_owned(), t);
        }
    }
    loop {
        let Some((name, at)) = next
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, t)| (n.clone(), *t))
        else {
            tracing::warn!("No source has an upcoming run; stopping.");
            break;
        };
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        running.retain(|_, h| !h.is_finished());
        if running.contains_key(&name) {
            tracing::warn!(source = %name, "The previous run of this source is still going; skipping this slot.");
        } else {
            let config = Arc::clone(&config);
            let cancel = cancel.clone();
            let source = name.clone();
            running.insert(
                name.clone(),
                tokio::spawn(async move {
                    match sync_sources(&config, Some(&source), None, false, cancel).await {
                        Ok(run) => {
                            for f in &run.failed_sources {
                                // Stopped by SIGTERM/SIGINT before its streams started: the
                                // daemon is shutting down, nothing failed.
                                if matches!(f.status, Status::Cancelled) {
                                    tracing::info!(source = %f.source, "Scheduled run stopped before syncing the source: shutting down.");
                                } else {
                                    tracing::error!(source = %f.source, status = %f.describe(), "Scheduled run could not sync the source.");
                                }
                            }
                            let outcomes = run.streams;
                            let failed = outcomes
                                .iter()
                                .filter(|o| matches!(o.status, Status::Failed(_)))
                                .count();
                            let records: u64 = outcomes.iter().map(|o| o.records).sum();
                            tracing::info!(source = %source, streams = outcomes.len(), records, failed, "Scheduled run finished.");
                        }
                        Err(e) => tracing::error!(source = %source, error = %format!("{e:#}"), "Scheduled run failed."),
                    }
                }),
            );
        }
        let schedule = schedules
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.cron.clone());
        match schedule.and_then(|c| c.after(&Utc::now()).next()) {
            Some(t) => {
                next.insert(name, t);
            }
            None => {
                next.remove(&name);
            }
        }
    }
    tracing::info!(
        running = running.len(),
        "Stopping; waiting for running syncs to commit."
    );
    for (_, h) in running {
        let _ = h.await;
    }
    Ok(())
}
