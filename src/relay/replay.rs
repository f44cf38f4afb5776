//! Replays: re-queueing a webhook's finished deliveries by hand. A replay of many events
//! runs as a job, one bounded chunk per write, so the store's single writer keeps
//! serving everything else between chunks; its progress is readable while it runs.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::event::{Millis, now_millis};
use crate::outbox::Outbox;
use crate::store::RequeueChunk;

/// Deliveries one chunk looks at.
const CHUNK_ROWS: i64 = 5_000;
/// Finished jobs kept for `GET …/replays/{id}`.
const KEPT: usize = 100;

/// What a replay asked for.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub webhook: String,
    pub after_seq: Option<i64>,
    pub since: Option<Millis>,
}

/// A replay's progress, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayProgress {
    /// `rpl_…`
    pub id: String,
    pub webhook: String,
    /// `running`, `done` or `failed`.
    pub status: &'static str,
    /// Deliveries queued again so far.
    pub requeued: u64,
    /// How much of the delivery table has been looked at, from 0 to 1.
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The replays of this process, newest last.
#[derive(Default)]
pub struct Replays {
    jobs: Mutex<Vec<Arc<Mutex<ReplayProgress>>>>,
}

impl Replays {
    /// Starts a replay: its first chunk runs before this returns (a small replay is done
    /// by then), the rest in the background.
    pub async fn start(
        &self,
        outbox: Arc<Outbox>,
        request: ReplayRequest,
    ) -> crate::store::Result<ReplayProgress> {
        let job = Arc::new(Mutex::new(ReplayProgress {
            id: format!("rpl_{}", ulid::Ulid::new()),
            webhook: request.webhook.clone(),
            status: "running",
            requeued: 0,
            progress: 0.0,
            error: None,
        }));
        let next = chunk(&outbox, &request, &job, 0).await?;
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.len() >= KEPT
                && let Some(i) = jobs
                    .iter()
                    .position(|j| j.lock().unwrap_or_else(|e| e.into_inner()).status != "running")
            {
                jobs.remove(i);
            }
            jobs.push(job.clone());
        }
        if let Some(cursor) = next {
            let job = job.clone();
            tokio::spawn(async move {
                let mut cursor = Some(cursor);
                while let Some(at) = cursor {
                    match chunk(&outbox, &request, &job, at).await {
                        Ok(next) => cursor = next,
                        Err(e) => {
                            tracing::error!(webhook = %request.webhook, error = %e, "replay stopped: the store refused a chunk");
                            let mut p = job.lock().unwrap_or_else(|e| e.into_inner());
                            p.status = "failed";
                            p.error = Some(e.to_string());
                            return;
                        }
                    }
                }
            });
        }
        Ok(snapshot(&job))
    }

    /// A replay of `webhook` by id.
    pub fn get(&self, webhook: &str, id: &str) -> Option<ReplayProgress> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .map(|j| snapshot(j))
            .find(|p| p.id == id && p.webhook == webhook)
    }
}

fn snapshot(job: &Mutex<ReplayProgress>) -> ReplayProgress {
    job.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One chunk; returns where the next starts, `None` when the replay is done.
async fn chunk(
    outbox: &Outbox,
    request: &ReplayRequest,
    job: &Mutex<ReplayProgress>,
    cursor: i64,
) -> crate::store::Result<Option<i64>> {
    let done = outbox
        .requeue(RequeueChunk {
            webhook: request.webhook.clone(),
            after_seq: request.after_seq,
            since: request.since,
            now: now_millis(),
            cursor,
            rows: CHUNK_ROWS,
        })
        .await?;
    let mut p = job.lock().unwrap_or_else(|e| e.into_inner());
    p.requeued += done.requeued;
    match done.cursor {
        Some(at) => {
            p.progress = (at as f64 / done.end.max(1) as f64).min(1.0);
            if (at / CHUNK_ROWS) % 20 == 0 {
                tracing::info!(webhook = %request.webhook, replay = %p.id, requeued = p.requeued, progress = format!("{:.0}%", p.progress * 100.0), "replay in progress");
            }
        }
        None => {
            p.progress = 1.0;
            p.status = "done";
            tracing::info!(webhook = %request.webhook, replay = %p.id, requeued = p.requeued, "deliveries replayed by hand");
        }
    }
    Ok(done.cursor)
}
