//! SQLite implementation of [`Store`] for one waas process.
//!
//! All writes go through one writer task that owns the only write connection and
//! commits whatever has queued up in a single transaction (group commit): under load a
//! single fsync covers hundreds of events, and with nothing queued a write commits
//! alone at once. Each operation runs in its own savepoint so one failing operation does
//! not undo its neighbours. Callers get their answer only after the commit.
//!
//! Reads use a small pool of their own (WAL lets them run beside the writer). A claimed
//! delivery is marked in its row (claims go through the writer, so two never overlap)
//! and every mark is cleared at start-up: one process owns the file, so after a crash
//! nothing is claimed. Sends, a far smaller stream, are claimed in memory.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::config::Synchronous;

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 512;

pub struct SqliteStore {
    writer: mpsc::Sender<Write>,
    pool: SqlitePool,
    /// Sends claimed by this process and not yet finished.
    in_flight: Mutex<HashSet<String>>,
    /// Held while a claim reads and filters, and while a finish releases its claim, so
    /// that a claim never sees a row as pending after its claim was already released.
    claim_gate: tokio::sync::Mutex<()>,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// A claimed delivery before its event is read: (id, attempts, event seq).
type ClaimedRow = (String, u32, i64);

struct RequeueRequest {
    webhook: String,
    after_seq: Option<i64>,
    since: Option<Millis>,
    now: Millis,
}

struct ClaimRequest {
    webhook: String,
    ordering: Ordering,
    limit: usize,
    now: Millis,
}

enum Write {
    Append(NewEvent, Vec<NewDelivery>, Reply<Appended>),
    Claim(ClaimRequest, Reply<Claim<ClaimedRow>>),
    Release(String, Reply<()>),
    Finish(
        Box<(DueDelivery, AttemptRecord, Outcome, Vec<NewSend>)>,
        Reply<()>,
    ),
    Enqueue(NewSend, Reply<Enqueued>),
    FinishSend(String, SendOutcome, Millis, Reply<()>),
    Defer(String, Millis, Reply<()>),
    Retry(String, Millis, Reply<Option<String>>),
    Requeue(RequeueRequest, Reply<u64>),
    Disable(String, Option<String>, Millis, Reply<()>),
    Failing(String, Option<Millis>, Reply<()>),
    Prune(Millis, Reply<u64>),
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url`, runs the embedded migrations
    /// and starts the writer task.
    pub async fn open(url: &str, synchronous: Synchronous) -> Result<SqliteStore> {
        let path = sqlite_path(url).unwrap_or(url);
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", dir.display()),
                )))
            })?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .log_statements(tracing::log::LevelFilter::Trace);

        let mut conn = options.connect().await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        // Claims belong to the process that made them; one process owns this file, so
        // whatever an earlier (crashed) process had claimed is free again.
        let released = sqlx::query("UPDATE deliveries SET claimed = 0 WHERE claimed != 0")
            .execute(&mut conn)
            .await?
            .rows_affected();
        if released > 0 {
            tracing::info!(
                deliveries = released,
                "released deliveries claimed before the last stop"
            );
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;

        let (tx, rx) = mpsc::channel(4096);
        // The writer gets an OS thread of its own: it is the one serial stage, and on a
        // shared runtime it would wait behind HTTP work between its statements.
        std::thread::Builder::new()
            .name("waas-store-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(run_writer(conn, rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the store writer"),
                }
            })
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(SqliteStore {
            writer: tx,
            pool,
            in_flight: Mutex::new(HashSet::new()),
            claim_gate: tokio::sync::Mutex::new(()),
        })
    }

    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> Write) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(op(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A poisoned lock only means another thread panicked mid-insert; the set is
        // still a valid set.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn unclaim(&self, id: &str) {
        let _gate = self.claim_gate.lock().await;
        self.in_flight().remove(id);
    }
}

async fn run_writer(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let ops = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let (size, started) = (ops.len(), std::time::Instant::now());
        let careful = match fast_batch(&mut conn, ops).await {
            Some(ops) => {
                slow_batch(&mut conn, ops).await;
                true
            }
            None => false,
        };
        tracing::trace!(
            ops = size,
            careful,
            us = started.elapsed().as_micros() as u64,
            "write batch committed"
        );
    }
    let _ = conn.close().await;
}

/// Appends and plain attempt results: the hot path, which the fast path can write in
/// a few multi-row statements.
fn is_bulk(op: &Write) -> bool {
    match op {
        Write::Append(..) | Write::Claim(..) => true,
        Write::Finish(f, _) => f.3.is_empty() && !matches!(f.2, Outcome::Disabled { .. }),
        _ => false,
    }
}

/// The fast path: a batch of appends and attempt results written with multi-row
/// statements in one transaction. Returns the operations untouched when it cannot
/// (another kind of operation in the batch, or any error), for the careful path.
async fn fast_batch(conn: &mut SqliteConnection, ops: Vec<Write>) -> Option<Vec<Write>> {
    if ops.len() < 2 || !ops.iter().all(is_bulk) {
        return Some(ops);
    }
    let mut events = Vec::new();
    let mut finishes = Vec::new();
    let mut claims = Vec::new();
    for op in &ops {
        match op {
            Write::Append(e, deliveries, _) => events.push((e, deliveries.as_slice())),
            Write::Finish(f, _) => finishes.push((&f.0, &f.1, f.2)),
            Write::Claim(c, _) => claims.push(c),
            _ => {}
        }
    }
    if sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        return Some(ops);
    }
    let written = async {
        let appended = append_many(conn, &events).await?;
        finish_many(conn, &finishes).await?;
        // Claims last, so they see what this batch appended and finished.
        let mut claimed = Vec::with_capacity(claims.len());
        for c in &claims {
            claimed.push(claim(conn, c).await?);
        }
        sqlx::query("COMMIT").execute(&mut *conn).await?;
        Ok::<_, StoreError>((appended, claimed))
    }
    .await;
    let (appended, claimed) = match written {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "batched write failed; writing each operation alone");
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Some(ops);
        }
    };
    let mut appended = appended.into_iter();
    let mut claimed = claimed.into_iter();
    for op in ops {
        match op {
            Write::Claim(_, reply) => {
                if let Some(c) = claimed.next() {
                    let _ = reply.send(Ok(c));
                }
            }
            Write::Append(_, _, reply) => {
                if let Some(a) = appended.next() {
                    let _ = reply.send(Ok(a));
                }
            }
            Write::Finish(_, reply) => {
                let _ = reply.send(Ok(()));
            }
            other => fail(other, "not a bulk operation"),
        }
    }
    None
}

/// `INSERT … VALUES (…), (…), …` with `rows` groups of `width` placeholders.
fn multi_row(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let group = format!("({})", vec!["?"; width].join(", "));
    format!("{head} {} {tail}", vec![group; rows].join(", "))
}

/// Splits `items` into chunks whose lengths are powers of two (at most
/// [`ROWS_PER_STATEMENT`]), so multi-row statements come in a handful of shapes that
/// stay in the prepared-statement cache instead of being parsed anew every batch.
fn shaped_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = ROWS_PER_STATEMENT.min(1 << items.len().ilog2());
        let (chunk, rest) = items.split_at(n);
        items = rest;
        Some(chunk)
    })
}

/// Rows per multi-row statement (a power of two), well under SQLite's limit on bound
/// parameters.
const ROWS_PER_STATEMENT: usize = 256;

async fn append_many(
    conn: &mut SqliteConnection,
    events: &[(&NewEvent, &[NewDelivery])],
) -> Result<Vec<Appended>> {
    let mut seqs: HashMap<String, i64> = HashMap::with_capacity(events.len());
    for chunk in shaped_chunks(events) {
        let sql = multi_row(
            "INSERT INTO events (id, type, dedup_key, conversation, created_at, bot, data) VALUES",
            7,
            chunk.len(),
            "ON CONFLICT (dedup_key) DO NOTHING RETURNING id, seq",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (e, _) in chunk {
            q = q
                .bind(&e.id)
                .bind(e.event_type)
                .bind(&e.dedup_key)
                .bind(&e.conversation)
                .bind(e.created_at)
                .bind(&e.bot_json)
                .bind(&e.data_json);
        }
        for row in q.fetch_all(&mut *conn).await? {
            seqs.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    let mut out = Vec::with_capacity(events.len());
    let mut deliveries = Vec::new();
    for (e, new) in events {
        match seqs.get(&e.id) {
            Some(&seq) => {
                out.push(Appended {
                    id: e.id.clone(),
                    seq,
                    duplicate: false,
                });
                deliveries.extend(new.iter().map(|d| (seq, d, *e)));
            }
            None => {
                // Stored before (or earlier in this batch) under the same dedup key.
                let row = sqlx::query("SELECT id, seq FROM events WHERE dedup_key = ?")
                    .bind(&e.dedup_key)
                    .fetch_one(&mut *conn)
                    .await?;
                out.push(Appended {
                    id: row.try_get(0)?,
                    seq: row.try_get(1)?,
                    duplicate: true,
                });
            }
        }
    }
    for chunk in shaped_chunks(&deliveries) {
        let sql = multi_row(
            "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at, conversation, claimed, updated_at) VALUES",
            7,
            chunk.len(),
            "",
        )
        .replace("(?, ?, ?, ?, ?, ?, ?)", "(?, ?, ?, 'pending', 0, ?, ?, ?, ?)");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (seq, d, e) in chunk {
            q = q
                .bind(&d.id)
                .bind(*seq)
                .bind(&d.webhook)
                .bind(e.created_at)
                .bind(&d.conversation)
                .bind(i64::from(d.claimed))
                .bind(e.created_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(out)
}

async fn finish_many(
    conn: &mut SqliteConnection,
    finishes: &[(&DueDelivery, &AttemptRecord, Outcome)],
) -> Result<()> {
    for chunk in shaped_chunks(finishes) {
        let sql = multi_row(
            "INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms, response) VALUES",
            6,
            chunk.len(),
            "",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (d, a, _) in chunk {
            q = q
                .bind(&d.id)
                .bind(a.at)
                .bind(a.status_code.map(i64::from))
                .bind(&a.error)
                .bind(a.duration_ms)
                .bind(&a.response);
        }
        q.execute(&mut *conn).await?;

        let sql = multi_row(
            "UPDATE deliveries SET status = v.column2, attempts = attempts + 1, claimed = 0,
                    next_attempt_at = v.column3, updated_at = v.column4
             FROM (VALUES",
            4,
            chunk.len(),
            ") AS v WHERE deliveries.id = v.column1",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (d, a, outcome) in chunk {
            let (status, next) = match outcome {
                Outcome::Delivered => ("delivered", None),
                Outcome::Retry { at } => ("pending", Some(*at)),
                Outcome::Dead => ("dead", None),
                Outcome::Disabled { .. } => ("pending", Some(a.at + a.duration_ms)),
            };
            q = q
                .bind(&d.id)
                .bind(status)
                .bind(next)
                .bind(a.at + a.duration_ms);
        }
        q.execute(&mut *conn).await?;
    }
    // One health update per webhook for the whole batch: the newest success, the newest
    // error.
    #[derive(Default)]
    struct Health {
        success: Option<Millis>,
        error: Option<(Millis, String)>,
    }
    let mut health: HashMap<&str, Health> = HashMap::new();
    for (d, a, outcome) in finishes {
        let at = a.at + a.duration_ms;
        let entry = health.entry(d.webhook.as_str()).or_default();
        if *outcome == Outcome::Delivered {
            entry.success = entry.success.max(Some(at));
        } else if entry.error.as_ref().is_none_or(|(t, _)| *t <= at) {
            entry.error = Some((at, attempt_error(a)));
        }
    }
    for (webhook, Health { success, error }) in health {
        if let Some(at) = success {
            sqlx::query(
                "INSERT INTO webhook_state (name, last_success_at) VALUES (?, ?)
                 ON CONFLICT (name) DO UPDATE SET last_success_at = MAX(COALESCE(last_success_at, 0), excluded.last_success_at)",
            )
            .bind(webhook)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        if let Some((at, error)) = error {
            sqlx::query(
                "INSERT INTO webhook_state (name, last_error, last_error_at) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                                  last_error_at = excluded.last_error_at",
            )
            .bind(webhook)
            .bind(error)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// What `last_error` says about a failed attempt.
fn attempt_error(a: &AttemptRecord) -> String {
    a.error
        .clone()
        .or_else(|| a.status_code.map(|c| format!("HTTP {c}")))
        .unwrap_or_default()
}

/// Sends one operation's result once the commit is known (`Some(error)` if it failed).
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// The careful path: every operation in its own savepoint, so one that fails does not
/// undo the others; all committed together.
async fn slow_batch(conn: &mut SqliteConnection, mut batch: Vec<Write>) {
    {
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            let msg = e.to_string();
            tracing::error!(error = %msg, "cannot begin a write transaction");
            for op in batch.drain(..) {
                fail(op, &msg);
            }
            return;
        }

        macro_rules! step {
            ($reply:expr, $work:expr) => {{
                let _ = sqlx::query("SAVEPOINT op").execute(&mut *conn).await;
                let result = $work.await;
                let end = if result.is_ok() {
                    "RELEASE op"
                } else {
                    "ROLLBACK TO op"
                };
                let _ = sqlx::query(end).execute(&mut *conn).await;
                if result.is_err() {
                    let _ = sqlx::query("RELEASE op").execute(&mut *conn).await;
                }
                let reply = $reply;
                answers.push(Box::new(move |failed: Option<&str>| {
                    let _ = reply.send(match failed {
                        None => result,
                        Some(msg) => Err(StoreError::Commit(msg.to_string())),
                    });
                }));
            }};
        }

        for op in batch.drain(..) {
            match op {
                Write::Append(event, deliveries, reply) => {
                    step!(reply, append(&mut *conn, &event, &deliveries))
                }
                Write::Claim(request, reply) => step!(reply, claim(&mut *conn, &request)),
                Write::Release(id, reply) => step!(reply, release(&mut *conn, &id)),
                Write::Finish(op, reply) => {
                    let (delivery, attempt, outcome, replies) = *op;
                    step!(
                        reply,
                        finish(&mut *conn, &delivery, &attempt, outcome, &replies)
                    )
                }
                Write::Enqueue(send, reply) => step!(reply, enqueue(&mut *conn, &send)),
                Write::FinishSend(id, outcome, now, reply) => {
                    step!(reply, finish_send(&mut *conn, &id, &outcome, now))
                }
                Write::Defer(id, at, reply) => step!(reply, defer(&mut *conn, &id, at)),
                Write::Retry(id, now, reply) => step!(reply, retry(&mut *conn, &id, now)),
                Write::Requeue(request, reply) => step!(reply, requeue(&mut *conn, &request)),
                Write::Disable(name, reason, now, reply) => {
                    step!(reply, disable(&mut *conn, &name, reason.as_deref(), now))
                }
                Write::Prune(before, reply) => step!(reply, prune(&mut *conn, before)),
                Write::Failing(name, since, reply) => {
                    step!(reply, failing_since(&mut *conn, &name, since))
                }
            }
        }

        match sqlx::query("COMMIT").execute(&mut *conn).await {
            Ok(_) => answers.into_iter().for_each(|a| a(None)),
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "commit failed; the batch is rolled back");
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                answers.into_iter().for_each(|a| a(Some(&msg)));
            }
        }
    }
}

fn fail(op: Write, msg: &str) {
    fn err<T>(msg: &str) -> Result<T> {
        Err(StoreError::Commit(msg.to_string()))
    }
    let _ = match op {
        Write::Append(_, _, r) => r.send(err(msg)).is_ok(),
        Write::Claim(_, r) => r.send(err(msg)).is_ok(),
        Write::Release(_, r) => r.send(err(msg)).is_ok(),
        Write::Finish(_, r) => r.send(err(msg)).is_ok(),
        Write::Enqueue(_, r) => r.send(err(msg)).is_ok(),
        Write::FinishSend(.., r) => r.send(err(msg)).is_ok(),
        Write::Defer(.., r) => r.send(err(msg)).is_ok(),
        Write::Retry(_, _, r) => r.send(err(msg)).is_ok(),
        Write::Requeue(_, r) => r.send(err(msg)).is_ok(),
        Write::Disable(.., r) => r.send(err(msg)).is_ok(),
        Write::Failing(.., r) => r.send(err(msg)).is_ok(),
        Write::Prune(_, r) => r.send(err(msg)).is_ok(),
    };
}

async fn append(
    conn: &mut SqliteConnection,
    e: &NewEvent,
    deliveries: &[NewDelivery],
) -> Result<Appended> {
    let inserted = sqlx::query(
        "INSERT INTO events (id, type, dedup_key, conversation, created_at, bot, data)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (dedup_key) DO NOTHING
         RETURNING seq",
    )
    .bind(&e.id)
    .bind(e.event_type)
    .bind(&e.dedup_key)
    .bind(&e.conversation)
    .bind(e.created_at)
    .bind(&e.bot_json)
    .bind(&e.data_json)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = inserted else {
        let row = sqlx::query("SELECT id, seq FROM events WHERE dedup_key = ?")
            .bind(&e.dedup_key)
            .fetch_one(&mut *conn)
            .await?;
        return Ok(Appended {
            id: row.try_get(0)?,
            seq: row.try_get(1)?,
            duplicate: true,
        });
    };
    let seq: i64 = row.try_get(0)?;
    for d in deliveries {
        sqlx::query(
            "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at, conversation, claimed, updated_at)
             VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(seq)
        .bind(&d.webhook)
        .bind(e.created_at)
        .bind(&d.conversation)
        .bind(i64::from(d.claimed))
        .bind(e.created_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Appended {
        id: e.id.clone(),
        seq,
        duplicate: false,
    })
}

async fn finish(
    conn: &mut SqliteConnection,
    d: &DueDelivery,
    a: &AttemptRecord,
    outcome: Outcome,
    replies: &[NewSend],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms, response)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&d.id)
    .bind(a.at)
    .bind(a.status_code.map(i64::from))
    .bind(&a.error)
    .bind(a.duration_ms)
    .bind(&a.response)
    .execute(&mut *conn)
    .await?;

    let now = a.at + a.duration_ms;
    let (status, next): (&str, Option<Millis>) = match outcome {
        Outcome::Delivered => ("delivered", None),
        Outcome::Retry { at } => ("pending", Some(at)),
        Outcome::Dead => ("dead", None),
        Outcome::Disabled { .. } => ("pending", Some(now)),
    };
    sqlx::query(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, claimed = 0,
                next_attempt_at = ?, updated_at = ?
         WHERE id = ?",
    )
    .bind(status)
    .bind(next)
    .bind(now)
    .bind(&d.id)
    .execute(&mut *conn)
    .await?;

    if outcome == Outcome::Delivered {
        sqlx::query(
            "INSERT INTO webhook_state (name, last_success_at) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET last_success_at = excluded.last_success_at",
        )
        .bind(&d.webhook)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    } else {
        let error = attempt_error(a);
        sqlx::query(
            "INSERT INTO webhook_state (name, last_error, last_error_at) VALUES (?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                              last_error_at = excluded.last_error_at",
        )
        .bind(&d.webhook)
        .bind(&error)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if let Outcome::Disabled { reason } = outcome {
        disable(conn, &d.webhook, Some(reason), now).await?;
    }
    for send in replies {
        match enqueue(conn, send).await {
            Ok(_) | Err(StoreError::IdempotencyConflict) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Marks up to `limit` due deliveries claimed, oldest due first. The order is the
/// `deliveries_due` index's alone, so SQLite walks the index and stops at the limit
/// instead of sorting every due row (ties fall in insertion order). Their events are read afterwards, from
/// the read pool, to keep the writer's work short.
async fn claim(conn: &mut SqliteConnection, c: &ClaimRequest) -> Result<Claim<ClaimedRow>> {
    let rows = sqlx::query(match c.ordering {
        Ordering::None => {
            "UPDATE deliveries SET claimed = 1 WHERE id IN (
                 SELECT id FROM deliveries
                 WHERE webhook = ?1 AND status = 'pending' AND claimed = 0 AND next_attempt_at <= ?2
                 ORDER BY next_attempt_at LIMIT ?3)
             RETURNING id, attempts, event_seq"
        }
        // Only the oldest pending delivery of each conversation may go (a claimed one
        // still counts, so its followers wait); events without a conversation (login,
        // scan…) are not ordered.
        Ordering::Conversation => {
            "UPDATE deliveries SET claimed = 1 WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.webhook = ?1 AND d.status = 'pending' AND d.claimed = 0
                   AND d.next_attempt_at <= ?2
                   AND NOT EXISTS (SELECT 1 FROM deliveries p
                                   WHERE p.webhook = ?1 AND p.conversation = d.conversation
                                     AND p.conversation IS NOT NULL
                                     AND p.status = 'pending' AND p.event_seq < d.event_seq)
                 ORDER BY d.next_attempt_at LIMIT ?3)
             RETURNING id, attempts, event_seq"
        }
    })
    .bind(&c.webhook)
    .bind(c.now)
    .bind(c.limit as i64)
    .fetch_all(&mut *conn)
    .await?;

    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let attempts: i64 = row.try_get(1)?;
        items.push((row.try_get(0)?, attempts as u32, row.try_get(2)?));
    }
    items.sort_by_key(|(_, _, seq): &ClaimedRow| *seq);
    let next_due = if items.len() == c.limit {
        Some(c.now)
    } else {
        let row = sqlx::query(match c.ordering {
            Ordering::None => {
                "SELECT MIN(next_attempt_at) FROM deliveries
                 WHERE webhook = ?1 AND status = 'pending' AND claimed = 0"
            }
            Ordering::Conversation => {
                "SELECT MIN(d.next_attempt_at) FROM deliveries d
                 WHERE d.webhook = ?1 AND d.status = 'pending' AND d.claimed = 0
                   AND NOT EXISTS (SELECT 1 FROM deliveries p
                                   WHERE p.webhook = ?1 AND p.conversation = d.conversation
                                     AND p.conversation IS NOT NULL
                                     AND p.status = 'pending' AND p.event_seq < d.event_seq)"
            }
        })
        .bind(&c.webhook)
        .fetch_one(&mut *conn)
        .await?;
        row.try_get::<Option<i64>, _>(0)?
    };
    Ok(Claim { items, next_due })
}

async fn release(conn: &mut SqliteConnection, id: &str) -> Result<()> {
    sqlx::query("UPDATE deliveries SET claimed = 0 WHERE id = ?")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn enqueue(conn: &mut SqliteConnection, s: &NewSend) -> Result<Enqueued> {
    if let Some(key) = &s.idempotency_key {
        let existing = sqlx::query(
            "SELECT id, status, error, message_id, request_hash FROM sends WHERE idempotency_key = ?",
        )
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = existing {
            let hash: String = row.try_get(4)?;
            if hash != s.request_hash {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok(Enqueued {
                send: send_view(&row)?,
                replayed: true,
            });
        }
    }
    sqlx::query(
        "INSERT INTO sends (id, idempotency_key, request_hash, request, conversation, status, attempts, next_attempt_at, created_at)
         VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
    )
    .bind(&s.id)
    .bind(&s.idempotency_key)
    .bind(&s.request_hash)
    .bind(&s.request_json)
    .bind(&s.conversation)
    .bind(s.created_at)
    .bind(s.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(Enqueued {
        send: SendView {
            id: s.id.clone(),
            status: SendStatus::Queued,
            error: None,
            message_id: None,
        },
        replayed: false,
    })
}

fn send_view(row: &SqliteRow) -> Result<SendView> {
    let status: String = row.try_get(1)?;
    Ok(SendView {
        id: row.try_get(0)?,
        status: match status.as_str() {
            "sent" => SendStatus::Sent,
            "failed" => SendStatus::Failed,
            _ => SendStatus::Queued,
        },
        error: row.try_get(2)?,
        message_id: row.try_get(3)?,
    })
}

async fn finish_send(
    conn: &mut SqliteConnection,
    id: &str,
    outcome: &SendOutcome,
    now: Millis,
) -> Result<()> {
    let (status, next, error, message_id, finished) = match outcome {
        SendOutcome::Sent { message_id } => (
            "sent",
            now,
            None,
            Some(message_id).filter(|m| !m.is_empty()),
            Some(now),
        ),
        SendOutcome::Retry { at, error } => ("queued", *at, Some(error), None, None),
        SendOutcome::Failed { error } => ("failed", now, Some(error), None, Some(now)),
    };
    sqlx::query(
        "UPDATE sends SET status = ?, attempts = attempts + 1, next_attempt_at = ?, error = ?,
                message_id = ?, finished_at = ?
         WHERE id = ?",
    )
    .bind(status)
    .bind(next)
    .bind(error)
    .bind(message_id)
    .bind(finished)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn defer(conn: &mut SqliteConnection, id: &str, at: Millis) -> Result<()> {
    sqlx::query("UPDATE sends SET next_attempt_at = ? WHERE id = ?")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn requeue(conn: &mut SqliteConnection, r: &RequeueRequest) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE deliveries SET status = 'pending', claimed = 0, next_attempt_at = ?1, updated_at = ?1
         WHERE webhook = ?2 AND status != 'pending'
           AND event_seq > COALESCE(?3, 0)
           AND event_seq IN (SELECT seq FROM events WHERE created_at >= COALESCE(?4, 0))",
    )
    .bind(r.now)
    .bind(&r.webhook)
    .bind(r.after_seq)
    .bind(r.since)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

async fn retry(conn: &mut SqliteConnection, id: &str, now: Millis) -> Result<Option<String>> {
    let row = sqlx::query(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ?
         WHERE id = ? RETURNING webhook",
    )
    .bind(now)
    .bind(now)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

async fn disable(
    conn: &mut SqliteConnection,
    name: &str,
    reason: Option<&str>,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_state (name, disabled_at, disabled_reason) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET disabled_at = excluded.disabled_at,
                                          disabled_reason = excluded.disabled_reason",
    )
    .bind(name)
    .bind(reason.map(|_| now))
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn failing_since(
    conn: &mut SqliteConnection,
    name: &str,
    since: Option<Millis>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_state (name, failing_since) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET failing_since = excluded.failing_since",
    )
    .bind(name)
    .bind(since)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn prune(conn: &mut SqliteConnection, before: Millis) -> Result<u64> {
    // An event goes once every delivery of it succeeded; dead ones are kept for
    // inspection and manual retry. Each statement scans a table at most once.
    for sql in [
        "CREATE TEMP TABLE IF NOT EXISTS prune_seq (seq INTEGER PRIMARY KEY)",
        "DELETE FROM prune_seq",
        "CREATE TEMP TABLE IF NOT EXISTS open_seq (seq INTEGER PRIMARY KEY)",
        "DELETE FROM open_seq",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    // Events with an unfinished delivery stay; the open deliveries come from their
    // partial index.
    sqlx::query(
        "INSERT OR IGNORE INTO open_seq SELECT event_seq FROM deliveries WHERE status != 'delivered'",
    )
    .execute(&mut *conn)
    .await?;
    let events = sqlx::query(
        "INSERT INTO prune_seq SELECT seq FROM events
         WHERE created_at < ?1 AND seq NOT IN (SELECT seq FROM open_seq)",
    )
    .bind(before)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if events == 0 {
        sqlx::query("DELETE FROM sends WHERE status != 'queued' AND finished_at < ?")
            .bind(before)
            .execute(&mut *conn)
            .await?;
        return Ok(0);
    }
    sqlx::query(
        "DELETE FROM attempts WHERE delivery_id IN (
             SELECT d.id FROM deliveries d JOIN prune_seq p ON d.event_seq = p.seq)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM prune_seq)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM events WHERE seq IN (SELECT seq FROM prune_seq)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM sends WHERE status != 'queued' AND finished_at < ?")
        .bind(before)
        .execute(&mut *conn)
        .await?;
    Ok(events)
}

fn stored_event(row: &SqliteRow, at: usize) -> Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.try_get(at)?,
        event_type: row.try_get(at + 1)?,
        seq: row.try_get(at + 2)?,
        created_at: row.try_get(at + 3)?,
        bot_json: row.try_get(at + 4)?,
        data_json: row.try_get(at + 5)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn append_event(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Appended> {
        self.write(|r| Write::Append(event, deliveries, r)).await
    }

    async fn claim_due(
        &self,
        webhook: &str,
        ordering: Ordering,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<DueDelivery>> {
        let request = ClaimRequest {
            webhook: webhook.to_string(),
            ordering,
            limit,
            now,
        };
        let claim = self.write(|r| Write::Claim(request, r)).await?;
        let mut events: HashMap<i64, StoredEvent> = HashMap::with_capacity(claim.items.len());
        for chunk in shaped_chunks(&claim.items) {
            let sql = format!(
                "SELECT id, type, seq, created_at, bot, data FROM events WHERE seq IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (_, _, seq) in chunk {
                q = q.bind(*seq);
            }
            for row in q.fetch_all(&self.pool).await? {
                let event = stored_event(&row, 0)?;
                events.insert(event.seq, event);
            }
        }
        let items = claim
            .items
            .into_iter()
            .filter_map(|(id, attempts, seq)| {
                Some(DueDelivery {
                    id,
                    webhook: webhook.to_string(),
                    attempts,
                    event: events.remove(&seq)?,
                })
            })
            .collect();
        Ok(Claim {
            items,
            next_due: claim.next_due,
        })
    }

    async fn finish_attempt(
        &self,
        delivery: &DueDelivery,
        attempt: AttemptRecord,
        outcome: Outcome,
        replies: Vec<NewSend>,
    ) -> Result<()> {
        let finish = Box::new((delivery.clone(), attempt, outcome, replies));
        self.write(|r| Write::Finish(finish, r)).await
    }

    async fn release_delivery(&self, delivery_id: &str) -> Result<()> {
        let id = delivery_id.to_string();
        self.write(|r| Write::Release(id, r)).await
    }

    async fn release_send(&self, send_id: &str) {
        self.unclaim(send_id).await;
    }

    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<String>> {
        let id = id.to_string();
        self.write(|r| Write::Retry(id, now, r)).await
    }

    async fn requeue(
        &self,
        webhook: &str,
        after_seq: Option<i64>,
        since: Option<Millis>,
        now: Millis,
    ) -> Result<u64> {
        let request = RequeueRequest {
            webhook: webhook.to_string(),
            after_seq,
            since,
            now,
        };
        self.write(|r| Write::Requeue(request, r)).await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>> {
        let rows = sqlx::query(
            "SELECT d.id, d.webhook, e.id, e.type, d.status, d.next_attempt_at,
                    a.at, a.status_code, a.error, a.duration_ms
             FROM (SELECT * FROM deliveries
                   WHERE (?1 IS NULL OR webhook = ?1) AND (?2 IS NULL OR status = ?2)
                   ORDER BY rowid DESC LIMIT ?3) d
             JOIN events e ON e.seq = d.event_seq
             LEFT JOIN attempts a ON a.delivery_id = d.id
             ORDER BY d.event_seq DESC, d.id, a.id",
        )
        .bind(&filter.webhook)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<DeliveryView> = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            if out.last().is_none_or(|d| d.id != id) {
                let status: String = row.try_get(4)?;
                let status = DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending);
                out.push(DeliveryView {
                    id,
                    webhook: row.try_get(1)?,
                    event_id: row.try_get(2)?,
                    event_type: row.try_get(3)?,
                    status,
                    attempts: Vec::new(),
                    next_attempt_at: if status == DeliveryStatus::Pending {
                        row.try_get(5)?
                    } else {
                        None
                    },
                });
            }
            if let Some(at) = row.try_get::<Option<i64>, _>(6)?
                && let Some(view) = out.last_mut()
            {
                view.attempts.push(AttemptRecord {
                    at,
                    status_code: row.try_get::<Option<i64>, _>(7)?.map(|c| c as u16),
                    error: row.try_get(8)?,
                    duration_ms: row.try_get(9)?,
                    response: None,
                });
            }
        }
        Ok(out)
    }

    async fn webhook_stats(&self) -> Result<HashMap<String, WebhookStats>> {
        let mut stats: HashMap<String, WebhookStats> = HashMap::new();
        // One query per status, each answered from the `deliveries_open` partial index
        // (whose condition the queries repeat so that SQLite sees it applies).
        for (sql, dead) in [
            (
                "SELECT webhook, COUNT(*) FROM deliveries
                 WHERE status != 'delivered' AND status = 'pending' GROUP BY webhook",
                false,
            ),
            (
                "SELECT webhook, COUNT(*) FROM deliveries
                 WHERE status != 'delivered' AND status = 'dead' GROUP BY webhook",
                true,
            ),
        ] {
            for row in sqlx::query(sql).fetch_all(&self.pool).await? {
                let entry = stats.entry(row.try_get(0)?).or_default();
                let count: i64 = row.try_get(1)?;
                if dead {
                    entry.dead = count;
                } else {
                    entry.pending = count;
                }
            }
        }
        let rows = sqlx::query(
            "SELECT name, last_success_at, last_error, last_error_at, disabled_reason, failing_since
             FROM webhook_state",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let s = stats.entry(row.try_get(0)?).or_default();
            s.last_success_at = row.try_get(1)?;
            s.last_error = row.try_get(2)?;
            s.last_error_at = row.try_get(3)?;
            s.disabled_reason = row.try_get(4)?;
            s.failing_since = row.try_get(5)?;
        }
        Ok(stats)
    }

    async fn set_webhook_disabled(
        &self,
        name: &str,
        reason: Option<String>,
        now: Millis,
    ) -> Result<()> {
        let name = name.to_string();
        self.write(|r| Write::Disable(name, reason, now, r)).await
    }

    async fn set_webhook_failing_since(&self, name: &str, since: Option<Millis>) -> Result<()> {
        let name = name.to_string();
        self.write(|r| Write::Failing(name, since, r)).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| stored_event(r, 0)).collect()
    }

    async fn recent_events(
        &self,
        event_type: &str,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data FROM events
             WHERE created_at >= ? AND type = ? ORDER BY seq LIMIT ?",
        )
        .bind(since)
        .bind(event_type)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| stored_event(r, 0)).collect()
    }

    async fn enqueue_send(&self, send: NewSend) -> Result<Enqueued> {
        self.write(|r| Write::Enqueue(send, r)).await
    }

    async fn claim_sends(&self, limit: usize, now: Millis) -> Result<Claim<QueuedSend>> {
        let _gate = self.claim_gate.lock().await;
        let skip = self.in_flight().len();
        let rows = sqlx::query(
            "SELECT s.id, s.request, s.conversation, s.attempts, s.next_attempt_at FROM sends s
             WHERE s.status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM sends p WHERE p.status = 'queued'
                               AND p.conversation = s.conversation AND p.seq < s.seq)
             ORDER BY s.next_attempt_at, s.seq LIMIT ?",
        )
        .bind((limit + skip + 1) as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut in_flight = self.in_flight();
        let mut claim = Claim {
            items: Vec::new(),
            next_due: None,
        };
        for row in rows {
            let id: String = row.try_get(0)?;
            if in_flight.contains(&id) {
                continue;
            }
            let due_at: Millis = row.try_get(4)?;
            if due_at > now || claim.items.len() == limit {
                claim.next_due = Some(due_at);
                break;
            }
            in_flight.insert(id.clone());
            claim.items.push(QueuedSend {
                id,
                request_json: row.try_get(1)?,
                conversation: row.try_get(2)?,
                attempts: row.try_get::<i64, _>(3)? as u32,
            });
        }
        Ok(claim)
    }

    async fn finish_send(
        &self,
        send: &QueuedSend,
        outcome: SendOutcome,
        now: Millis,
    ) -> Result<()> {
        let id = send.id.clone();
        let result = self.write(|r| Write::FinishSend(id, outcome, now, r)).await;
        self.unclaim(&send.id).await;
        result
    }

    async fn defer_send(&self, send: &QueuedSend, at: Millis) -> Result<()> {
        let id = send.id.clone();
        let result = self.write(|r| Write::Defer(id, at, r)).await;
        self.unclaim(&send.id).await;
        result
    }

    async fn get_send(&self, id: &str) -> Result<Option<SendView>> {
        let row = sqlx::query("SELECT id, status, error, message_id FROM sends WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(send_view).transpose()
    }

    async fn prune(&self, before: Millis) -> Result<u64> {
        self.write(|r| Write::Prune(before, r)).await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, created_at: Millis, dedup: Option<&str>) -> NewEvent {
        NewEvent {
            id: id.into(),
            event_type: "message",
            dedup_key: dedup.map(str::to_string),
            conversation: Some("contact:alice".into()),
            created_at,
            bot_json: "{}".into(),
            data_json: "{}".into(),
        }
    }

    fn attempt(at: Millis) -> AttemptRecord {
        AttemptRecord {
            at,
            status_code: Some(200),
            error: None,
            duration_ms: 1,
            response: None,
        }
    }

    /// One unclaimed delivery to webhook `a`.
    fn hooks() -> Vec<NewDelivery> {
        vec![NewDelivery {
            id: format!("dlv_{}", ulid::Ulid::new()),
            webhook: "a".into(),
            claimed: false,
            conversation: None,
        }]
    }

    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn duplicates_are_stored_once_and_claims_are_exclusive() {
        let (_dir, store) = open().await;
        let first = store
            .append_event(event("evt_1", 1, Some("m1")), hooks())
            .await
            .unwrap();
        let again = store
            .append_event(event("evt_2", 2, Some("m1")), hooks())
            .await
            .unwrap();
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(again.id, "evt_1");

        let claim = store.claim_due("a", Ordering::None, 10, 100).await.unwrap();
        assert_eq!(claim.items.len(), 1);
        assert_eq!(claim.items[0].event.id, "evt_1");
        let second = store.claim_due("a", Ordering::None, 10, 100).await.unwrap();
        assert!(
            second.items.is_empty(),
            "a claimed delivery is not handed out twice"
        );
        assert_eq!(second.next_due, None);

        store.release_delivery(&claim.items[0].id).await.unwrap();
        let third = store.claim_due("a", Ordering::None, 10, 100).await.unwrap();
        assert_eq!(
            third.items.len(),
            1,
            "a released delivery can be claimed again"
        );
    }

    #[tokio::test]
    async fn retention_prunes_delivered_events_and_keeps_dead_ones() {
        let (_dir, store) = open().await;
        store
            .append_event(event("evt_old_ok", 10, None), hooks())
            .await
            .unwrap();
        store
            .append_event(event("evt_old_dead", 11, None), hooks())
            .await
            .unwrap();
        store
            .append_event(event("evt_new_ok", 5_000, None), hooks())
            .await
            .unwrap();
        let claim = store
            .claim_due("a", Ordering::None, 10, 10_000)
            .await
            .unwrap();
        for d in &claim.items {
            let outcome = if d.event.id == "evt_old_dead" {
                Outcome::Dead
            } else {
                Outcome::Delivered
            };
            store
                .finish_attempt(d, attempt(6_000), outcome, vec![])
                .await
                .unwrap();
        }
        assert_eq!(store.prune(1_000).await.unwrap(), 1);
        let left: Vec<String> = store
            .events_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, ["evt_old_dead", "evt_new_ok"]);
        let dead = store
            .list_deliveries(DeliveryFilter {
                status: Some(DeliveryStatus::Dead),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts.len(), 1);
    }
}
