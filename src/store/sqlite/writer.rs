//! The store's writer: one OS thread owning the only write connection.
//!
//! Every write goes through here and commits with whatever else has queued up, in a
//! single transaction (group commit): under load one fsync covers hundreds of events,
//! and with nothing queued a write commits alone at once. Callers get their answer only
//! after the commit.
//!
//! The connection is driven directly through SQLite's C API (rusqlite), on this thread:
//! each statement is a function call on a cached prepared statement, not a message to
//! another thread, which is what made the writer the relay's serial stage before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use crate::config::Synchronous;
use crate::store::{
    Appended, Claim, Enqueued, FinishedAttempt, Millis, NewDelivery, NewEvent, NewSend, Ordering,
    Outcome, QueuedSend, Receipt, RecordedAnswer, RequeueChunk, Requeued, Result, SendOutcome,
    SendStatus, SendView, SignedBegin, SignedRequest, StoreError,
};

/// What the WAL is truncated to after a checkpoint (bytes).
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 512;

/// Prepared statements kept by the connection: every statement the writer runs.
const STATEMENT_CACHE: usize = 64;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// A claimed delivery before its event is read: (id, attempts, event seq).
pub(super) type ClaimedRow = (String, u32, i64);

pub(super) struct ClaimRequest {
    pub webhook: String,
    pub ordering: Ordering,
    pub limit: usize,
    pub now: Millis,
    /// When the claims expire (kept in `deliveries.claimed`).
    pub until: Millis,
}

pub(super) struct SendClaimRequest {
    pub account: String,
    pub owner: std::sync::Arc<str>,
    pub limit: usize,
    pub now: Millis,
    pub until: Millis,
}

pub(super) enum Write {
    /// An event, its deliveries, and when the claim of those created claimed expires.
    Append(NewEvent, Vec<NewDelivery>, Millis, Reply<Appended>),
    Claim(ClaimRequest, Reply<Claim<ClaimedRow>>),
    Release(String, Reply<()>),
    ClaimSends(SendClaimRequest, Reply<Claim<QueuedSend>>),
    /// (kind, alias, target, now)
    Alias(String, String, String, Millis, Reply<bool>),
    Key(String, Vec<u8>, Millis, Reply<Vec<u8>>),
    Number(String, String, Millis, Reply<i64>),
    Cursor(String, i64, Millis, Reply<()>),
    ReleaseSend(String, Reply<()>),
    Finish(Box<FinishedAttempt>, Reply<()>),
    Enqueue(NewSend, Reply<Enqueued>),
    FinishSend(
        String,
        SendOutcome,
        Millis,
        Option<Box<Receipt>>,
        Reply<Option<Appended>>,
    ),
    Defer(String, Millis, Reply<()>),
    Retry(String, Millis, Reply<Option<String>>),
    Requeue(RequeueChunk, Reply<Requeued>),
    Disable(String, Option<String>, Millis, Reply<()>),
    Failing(String, Option<Millis>, Reply<()>),
    Prune(Millis, Reply<u64>),
    /// A tiny write that tells whether the store takes writes again after a failure.
    Probe(Millis, Reply<()>),
    BeginSigned(SignedRequest, Reply<SignedBegin>),
    /// Copies the WAL into the database and truncates it (outside any transaction).
    Checkpoint(Reply<()>),
    FinishSigned(String, Option<RecordedAnswer>, Reply<()>),
}

/// Whether the writer's last transaction committed; read by `/readyz` and by the
/// workers that stop taking new work while the store cannot record what they do.
#[derive(Default)]
pub(super) struct WriteHealth {
    failure: Mutex<Option<String>>,
}

impl WriteHealth {
    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, failure: Option<String>) {
        let mut current = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match (&*current, &failure) {
            (None, Some(why)) => {
                tracing::error!(error = %why, "the store cannot write; new sends and claims wait until it can")
            }
            (Some(_), None) => tracing::info!("the store writes again"),
            _ => {}
        }
        *current = failure;
    }
}

/// Deliveries pending and dead per webhook, kept up to date by the writer as it
/// commits (counted once at start-up), so `/metrics` and `GET /v1/webhooks` never scan
/// the delivery table.
#[derive(Default)]
pub(super) struct Backlog(Mutex<HashMap<String, (i64, i64)>>);

impl Backlog {
    pub(super) fn set(&self, counts: HashMap<String, (i64, i64)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    pub(super) fn get(&self) -> HashMap<String, (i64, i64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn apply(&self, counts: Counts) {
        if counts.0.is_empty() {
            return;
        }
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (webhook, (pending, dead)) in counts.0 {
            let entry = all.entry(webhook).or_default();
            entry.0 += pending;
            entry.1 += dead;
        }
    }
}

/// Changes to the backlog made by a transaction, applied once it commits.
#[derive(Default)]
struct Counts(HashMap<String, (i64, i64)>);

impl Counts {
    fn add(&mut self, webhook: &str, pending: i64, dead: i64) {
        match self.0.get_mut(webhook) {
            Some(entry) => {
                entry.0 += pending;
                entry.1 += dead;
            }
            None => {
                self.0.insert(webhook.to_string(), (pending, dead));
            }
        }
    }

    fn merge(&mut self, other: Counts) {
        for (webhook, (pending, dead)) in other.0 {
            self.add(&webhook, pending, dead);
        }
    }
}

/// Whether an error says the database cannot take writes now (as opposed to one
/// operation being wrong).
fn is_resource_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

/// Whether SQLite says the database cannot take writes now (as opposed to one
/// statement being wrong).
pub(super) fn is_resource_code(code: rusqlite::ErrorCode) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        code,
        DiskFull
            | SystemIoFailure
            | DatabaseBusy
            | DatabaseLocked
            | ReadOnly
            | CannotOpen
            | OutOfMemory
    )
}

/// Opens the write connection on `path` (already migrated) and starts the writer
/// thread; it ends when every sender is dropped.
pub(super) fn spawn(
    path: &str,
    synchronous: Synchronous,
    health: Arc<WriteHealth>,
    backlog: Arc<Backlog>,
) -> Result<mpsc::Sender<Write>> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "SQLite refused WAL mode; readers will wait for writes"
        );
    }
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Checkpoints truncate the WAL back to this size, so one burst does not leave a
    // large file behind for good.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let kept = Kept {
        written: SuccessWritten::default(),
        next_seq: NextSeq::read(&conn)?,
    };

    let (tx, rx) = mpsc::channel(4096);
    // An OS thread of its own: it is the one serial stage, and on the shared runtime it
    // would wait behind HTTP work between its statements.
    std::thread::Builder::new()
        .name("waas-store-writer".into())
        .spawn(move || run(conn, rx, health, backlog, synchronous, kept))
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(tx)
}

/// How long a plain attempt record may wait for company (an append or any other write
/// to commit with) before it commits alone. Nobody waits on it but its dispatcher task
/// (the webhook's slot is already free), so holding it costs no latency, and under load
/// it rides along in the next append's transaction instead of costing a commit of its
/// own.
const ATTEMPT_HOLD: Duration = Duration::from_millis(5);

/// A plain attempt result that may wait: delivered, no replies to queue, and no other
/// delivery of its conversation waiting for it.
fn can_wait(op: &Write) -> bool {
    matches!(op, Write::Finish(f, _)
        if f.outcome == Outcome::Delivered && f.replies.is_empty() && !f.prompt)
}

/// How long a smaller group of appends than the last waits for the rest of the
/// concurrent appends before it commits: under load, fewer and larger commits for the
/// same work (each costs an fsync and a WAL write of every page it touched).
const GATHER: Duration = Duration::from_micros(200);

/// Takes what is queued, up to [`MAX_BATCH`], without waiting.
fn drain(rx: &mut mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// What the writer keeps from one transaction to the next.
struct Kept {
    written: SuccessWritten,
    next_seq: NextSeq,
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Write>,
    health: Arc<WriteHealth>,
    backlog: Arc<Backlog>,
    synchronous: Synchronous,
    mut kept: Kept,
) {
    // Only to wait for the channel with a deadline; nothing else runs on it.
    let waiter = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the writer's timer; attempt records commit at once");
            None
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Attempt records waiting for company, and since when.
    let mut held: Vec<Write> = Vec::new();
    let mut held_since = Instant::now();
    let mut open = true;
    // Appends in the last group that had any.
    let mut last_appends = 0;
    let mut meter = CommitMeter::default();
    while open || !held.is_empty() {
        let next = match (&waiter, held.is_empty()) {
            (Some(rt), false) => {
                let left = (held_since + ATTEMPT_HOLD).saturating_duration_since(Instant::now());
                match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(Some(op)) => Some(op),
                    Ok(None) => {
                        open = false;
                        None
                    }
                    Err(_) => None,
                }
            }
            _ => match rx.blocking_recv() {
                Some(op) => Some(op),
                None => {
                    open = false;
                    None
                }
            },
        };
        batch.extend(next);
        drain(&mut rx, &mut batch);
        // Concurrent appends (the last group had several, this one has fewer): the
        // ones on their way join this commit if they come within GATHER. One append
        // after one append, as at a steady rate, does not wait.
        let appends = |batch: &[Write]| {
            batch
                .iter()
                .filter(|op| matches!(op, Write::Append(..)))
                .count()
        };
        let mut group = appends(&batch);
        if open && group > 0 && group < last_appends && batch.len() < MAX_BATCH {
            std::thread::sleep(GATHER);
            drain(&mut rx, &mut batch);
            group = appends(&batch);
        }
        if group > 0 {
            last_appends = group;
        }
        if open
            && waiter.is_some()
            && !batch.is_empty()
            && batch.iter().all(can_wait)
            && held.len() + batch.len() < MAX_BATCH
        {
            if held.is_empty() {
                held_since = Instant::now();
            }
            if held_since.elapsed() < ATTEMPT_HOLD {
                held.append(&mut batch);
                continue;
            }
        }
        // Alone (nothing else came within the hold): committed without waiting for
        // the disk. A crash may lose them, and the deliveries then go out again under
        // the same webhook-id; anything committed after them with an fsync (every
        // append) makes them durable too, since the WAL is written in order.
        let relaxed = !held.is_empty()
            && batch.is_empty()
            && synchronous == Synchronous::Full
            && exec(&conn, "PRAGMA synchronous = NORMAL", []).is_ok();
        if !held.is_empty() {
            held.append(&mut batch);
            batch = std::mem::take(&mut held);
        }
        // A caller that stopped waiting (its request timed out and was answered so)
        // no longer wants the work done: drop it rather than commit it unseen.
        batch.retain(|op| !op_abandoned(op));
        if batch.iter().any(|op| matches!(op, Write::Checkpoint(_))) {
            let mut rest = Vec::with_capacity(batch.len());
            for op in batch.drain(..) {
                match op {
                    Write::Checkpoint(reply) => {
                        let done = conn
                            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                            .map_err(StoreError::from);
                        let _ = reply.send(done);
                    }
                    other => rest.push(other),
                }
            }
            batch = rest;
        }
        if !batch.is_empty() {
            let ops = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let (size, started) = (ops.len(), Instant::now());
            let careful = match fast_batch(&mut conn, ops, &backlog, &mut kept) {
                Some(ops) => {
                    health.set(slow_batch(&mut conn, ops, &backlog, &mut kept));
                    true
                }
                None => {
                    health.set(None);
                    false
                }
            };
            let took = started.elapsed();
            meter.record(synchronous == Synchronous::Full && !relaxed, size, took);
            tracing::trace!(
                ops = size,
                careful,
                relaxed,
                us = took.as_micros() as u64,
                "write batch committed"
            );
        }
        if relaxed && let Err(e) = exec(&conn, "PRAGMA synchronous = FULL", []) {
            tracing::error!(error = %e, "cannot set synchronous = FULL back");
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
}

/// `waas_store_commit_seconds` and `waas_store_writes_total`: how long each group
/// commit took (statements, WAL write and, with `sync="full"`, the fsync) and how many
/// operations it carried; the disk's pace shows here first. Each series is registered
/// when first used (a store at `synchronous = normal` has no `full` one).
#[derive(Default)]
struct CommitMeter {
    full: Option<metrics::Histogram>,
    normal: Option<metrics::Histogram>,
    writes: Option<metrics::Counter>,
}

impl CommitMeter {
    fn record(&mut self, synced: bool, ops: usize, took: Duration) {
        let (slot, sync) = match synced {
            true => (&mut self.full, "full"),
            false => (&mut self.normal, "normal"),
        };
        slot.get_or_insert_with(
            || metrics::histogram!(crate::metrics::STORE_COMMIT_SECONDS, "sync" => sync),
        )
        .record(took);
        self.writes
            .get_or_insert_with(|| metrics::counter!(crate::metrics::STORE_WRITES_TOTAL))
            .increment(ops as u64);
    }
}

/// Runs a statement that returns no rows, from the statement cache.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

/// Appends, claims and plain attempt results: the hot path, written without a
/// savepoint per operation.
fn is_bulk(op: &Write) -> bool {
    match op {
        Write::Append(..) | Write::Claim(..) => true,
        Write::Finish(f, _) => {
            f.replies.is_empty() && !matches!(f.outcome, Outcome::Disabled { .. })
        }
        _ => false,
    }
}

/// The fast path: a batch of appends, attempt results and claims in one transaction,
/// without savepoints. Returns the operations untouched when it cannot (another kind of
/// operation in the batch, or any error), for the careful path.
fn fast_batch(
    conn: &mut Connection,
    ops: Vec<Write>,
    backlog: &Backlog,
    kept: &mut Kept,
) -> Option<Vec<Write>> {
    if !ops.iter().all(is_bulk) {
        return Some(ops);
    }
    if exec(conn, "BEGIN IMMEDIATE", []).is_err() {
        return Some(ops);
    }
    kept.next_seq.begin();
    let written = (|| {
        let mut appended = Vec::with_capacity(ops.len());
        let mut health = Health::default();
        let mut counts = Counts::default();
        for op in &ops {
            match op {
                Write::Append(event, deliveries, until, _) => {
                    appended.push(append(
                        conn,
                        event,
                        deliveries,
                        *until,
                        &mut counts,
                        &mut kept.next_seq,
                    )?);
                }
                Write::Finish(f, _) => {
                    record_attempt(conn, f, &mut counts)?;
                    health.note(f);
                }
                _ => {}
            }
        }
        health.write(conn, &mut kept.written)?;
        // Claims last, so they see what this batch appended and finished.
        let mut claimed = Vec::new();
        for op in &ops {
            if let Write::Claim(request, _) = op {
                claimed.push(claim(conn, request)?);
            }
        }
        exec(conn, "COMMIT", [])?;
        Ok::<_, StoreError>((appended, claimed, counts))
    })();
    let (appended, claimed) = match written {
        Ok((appended, claimed, counts)) => {
            backlog.apply(counts);
            (appended, claimed)
        }
        Err(e) => {
            tracing::warn!(error = %e, "batched write failed; writing each operation alone");
            let _ = exec(conn, "ROLLBACK", []);
            kept.next_seq.rollback();
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
            Write::Append(.., reply) => {
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

/// Sends one operation's result once the commit is known (`Some(error)` if it failed).
type Answer = Box<dyn FnOnce(Option<&str>)>;

fn answer<T: 'static>(failure: &mut Option<String>, reply: Reply<T>, result: Result<T>) -> Answer {
    track(failure, &result);
    Box::new(move |failed: Option<&str>| {
        let _ = reply.send(match failed {
            None => result,
            Some(msg) => Err(StoreError::Unavailable(msg.to_string())),
        });
    })
}

/// Runs one operation in its own savepoint: if it fails, its writes are undone and the
/// rest of the batch stands.
fn step<T>(conn: &mut Connection, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    exec(conn, "SAVEPOINT op", [])?;
    let result = work(conn);
    if result.is_err() {
        let _ = exec(conn, "ROLLBACK TO op", []);
    }
    let _ = exec(conn, "RELEASE op", []);
    result
}

/// The careful path: every operation in its own savepoint, so one that fails does not
/// undo the others; all committed together.
fn slow_batch(
    conn: &mut Connection,
    batch: Vec<Write>,
    backlog: &Backlog,
    kept: &mut Kept,
) -> Option<String> {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE", []) {
        let msg = e.to_string();
        tracing::error!(error = %msg, "cannot begin a write transaction");
        for op in batch {
            fail(op, &msg);
        }
        return Some(msg);
    }
    kept.next_seq.begin();
    let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
    // The first error that says the database cannot write, if any.
    let mut resource_failure: Option<String> = None;
    let mut counts = Counts::default();
    // Runs one counted operation in its savepoint; its backlog changes count only if
    // it stood.
    fn counted<T>(
        conn: &mut Connection,
        counts: &mut Counts,
        work: impl FnOnce(&mut Connection, &mut Counts) -> Result<T>,
    ) -> Result<T> {
        let mut mine = Counts::default();
        let result = step(conn, |c| work(c, &mut mine));
        if result.is_ok() {
            counts.merge(mine);
        }
        result
    }
    for op in batch {
        answers.push(match op {
            Write::Append(event, deliveries, until, reply) => answer(
                &mut resource_failure,
                reply,
                counted(conn, &mut counts, |c, n| {
                    append(c, &event, &deliveries, until, n, &mut kept.next_seq)
                }),
            ),
            Write::ClaimSends(request, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| claim_sends(c, &request)),
            ),
            Write::ReleaseSend(id, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| release_send(c, &id)),
            ),
            Write::Alias(kind, alias, target, now, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| set_alias(c, &kind, &alias, &target, now)),
            ),
            Write::Number(kind, target, now, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| number(c, &kind, &target, now)),
            ),
            Write::Cursor(name, seq, now, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| cursor(c, &name, seq, now)),
            ),
            Write::Key(name, fresh, now, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| key(c, &name, &fresh, now)),
            ),
            Write::Claim(request, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| claim(c, &request)),
            ),
            Write::Release(id, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| release(c, &id)),
            ),
            Write::Finish(f, reply) => answer(
                &mut resource_failure,
                reply,
                counted(conn, &mut counts, |c, n| {
                    finish(c, &f, n, &mut kept.written)
                }),
            ),
            Write::Enqueue(send, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| enqueue(c, &send)),
            ),
            Write::FinishSend(id, outcome, now, receipt, reply) => answer(
                &mut resource_failure,
                reply,
                counted(conn, &mut counts, |c, n| {
                    finish_send(c, &id, &outcome, now)?;
                    receipt
                        .map(|r| append(c, &r.event, &r.deliveries, 0, n, &mut kept.next_seq))
                        .transpose()
                }),
            ),
            Write::Defer(id, at, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| defer(c, &id, at)),
            ),
            Write::Retry(id, now, reply) => answer(
                &mut resource_failure,
                reply,
                counted(conn, &mut counts, |c, n| retry(c, &id, now, n)),
            ),
            Write::Requeue(request, reply) => answer(
                &mut resource_failure,
                reply,
                counted(conn, &mut counts, |c, n| requeue(c, &request, n)),
            ),
            Write::Disable(name, reason, now, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| disable(c, &name, reason.as_deref(), now)),
            ),
            Write::Prune(before, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| prune(c, before)),
            ),
            Write::Failing(name, since, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| failing_since(c, &name, since)),
            ),
            Write::Probe(now, reply) => {
                answer(&mut resource_failure, reply, step(conn, |c| probe(c, now)))
            }
            Write::BeginSigned(request, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| begin_signed(c, &request)),
            ),
            Write::Checkpoint(reply) => answer(&mut resource_failure, reply, Ok(())),
            Write::FinishSigned(id, recorded, reply) => answer(
                &mut resource_failure,
                reply,
                step(conn, |c| finish_signed(c, &id, recorded.as_ref())),
            ),
        });
    }
    match exec(conn, "COMMIT", []) {
        Ok(_) => {
            backlog.apply(counts);
            answers.into_iter().for_each(|a| a(None));
            resource_failure
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, "commit failed; the batch is rolled back");
            let _ = exec(conn, "ROLLBACK", []);
            kept.next_seq.rollback();
            answers.into_iter().for_each(|a| a(Some(&msg)));
            Some(msg)
        }
    }
}

/// Notes the first resource error among a batch's results.
fn track<T>(failure: &mut Option<String>, result: &Result<T>) {
    if failure.is_none()
        && let Err(e) = result
        && is_resource_error(e)
    {
        *failure = Some(e.to_string());
    }
}

/// An append or an enqueue whose caller stopped waiting before the writer got to it.
fn op_abandoned(op: &Write) -> bool {
    match op {
        Write::Append(.., reply) => reply.is_closed(),
        Write::Enqueue(_, reply) => reply.is_closed(),
        _ => false,
    }
}

fn begin_signed(conn: &Connection, r: &SignedRequest) -> Result<SignedBegin> {
    let inserted = exec(
        conn,
        "INSERT INTO signed_requests (webhook_id, method, path, idempotency_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (webhook_id) DO NOTHING",
        params![r.webhook_id, r.method, r.path, r.idempotency_key, r.at],
    )?;
    if inserted == 1 {
        return Ok(SignedBegin::New);
    }
    type Seen = (Option<u16>, Option<String>, Option<Vec<u8>>, Option<String>);
    let (status, content_type, body, key): Seen = conn
        .prepare_cached(
            "SELECT status, content_type, response, idempotency_key FROM signed_requests
             WHERE webhook_id = ?1",
        )?
        .query_row([&r.webhook_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    if key != r.idempotency_key {
        return Ok(SignedBegin::Conflict);
    }
    Ok(match status {
        None => SignedBegin::InProgress,
        Some(status) => SignedBegin::Answered(RecordedAnswer {
            status,
            content_type,
            body: body.unwrap_or_default(),
        }),
    })
}

fn finish_signed(conn: &Connection, id: &str, answer: Option<&RecordedAnswer>) -> Result<()> {
    match answer {
        Some(a) => exec(
            conn,
            "UPDATE signed_requests SET status = ?1, content_type = ?2, response = ?3
             WHERE webhook_id = ?4",
            params![a.status, a.content_type, a.body, id],
        )?,
        None => exec(
            conn,
            "DELETE FROM signed_requests WHERE webhook_id = ?1",
            [id],
        )?,
    };
    Ok(())
}

fn probe(conn: &Connection, now: Millis) -> Result<()> {
    exec(
        conn,
        "INSERT INTO store_probe (id, at) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        [now],
    )?;
    Ok(())
}

fn fail(op: Write, msg: &str) {
    fn err<T>(msg: &str) -> Result<T> {
        Err(StoreError::Unavailable(msg.to_string()))
    }
    let _ = match op {
        Write::Append(.., r) => r.send(err(msg)).is_ok(),
        Write::ClaimSends(_, r) => r.send(err(msg)).is_ok(),
        Write::ReleaseSend(_, r) => r.send(err(msg)).is_ok(),
        Write::Alias(.., r) => r.send(err(msg)).is_ok(),
        Write::Key(.., r) => r.send(err(msg)).is_ok(),
        Write::Number(.., r) => r.send(err(msg)).is_ok(),
        Write::Cursor(.., r) => r.send(err(msg)).is_ok(),
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
        Write::Probe(_, r) => r.send(err(msg)).is_ok(),
        Write::BeginSigned(_, r) => r.send(err(msg)).is_ok(),
        Write::FinishSigned(.., r) => r.send(err(msg)).is_ok(),
        Write::Checkpoint(r) => r.send(err(msg)).is_ok(),
    };
}

/// Stores an event and its deliveries; an event whose dedup key is already stored is
/// answered with the stored one instead.
fn append(
    conn: &Connection,
    e: &NewEvent,
    deliveries: &[NewDelivery],
    claimed_until: Millis,
    counts: &mut Counts,
    next: &mut NextSeq,
) -> Result<Appended> {
    let seq = next.next;
    let inserted = exec(
        conn,
        "INSERT INTO events (seq, id, type, dedup_key, conversation, created_at, bot, data, account)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (dedup_key) DO NOTHING",
        params![
            seq,
            e.id,
            e.event_type,
            e.dedup_key,
            e.conversation,
            e.created_at,
            e.bot_json,
            e.data_json,
            e.account
        ],
    )?;
    if inserted == 0 {
        let (id, seq) = conn
            .prepare_cached("SELECT id, seq FROM events WHERE dedup_key = ?1")?
            .query_row([&e.dedup_key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        return Ok(Appended {
            id,
            seq,
            duplicate: true,
        });
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at, conversation, claimed, updated_at)
         VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?5, ?6, ?4)",
    )?;
    for d in deliveries {
        insert.execute(params![
            d.id,
            seq,
            d.webhook,
            e.created_at,
            d.conversation,
            if d.claimed { claimed_until } else { 0 }
        ])?;
        counts.add(&d.webhook, 1, 0);
    }
    next.next += 1;
    Ok(Appended {
        id: e.id.clone(),
        seq,
        duplicate: false,
    })
}

/// The seq the next stored event gets. The writer assigns it (SQLite's AUTOINCREMENT
/// writes its counter's page in every commit): one more than the newest event, which
/// pruning never removes, or than the high-water mark an older layout left
/// (`event_seq_floor`). A transaction that rolls back gives its seqs back, so `seq`
/// grows by one per stored event.
pub(super) struct NextSeq {
    next: i64,
    /// `next` when the open transaction began.
    at_begin: i64,
}

impl NextSeq {
    fn read(conn: &Connection) -> Result<NextSeq> {
        let last: i64 = conn.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0),
                        COALESCE((SELECT MAX(floor) FROM event_seq_floor), 0))",
            [],
            |r| r.get(0),
        )?;
        Ok(NextSeq {
            next: last + 1,
            at_begin: last + 1,
        })
    }

    /// A transaction begins.
    fn begin(&mut self) {
        self.at_begin = self.next;
    }

    /// The transaction rolled back: what it took is free again.
    fn rollback(&mut self) {
        self.next = self.at_begin;
    }
}

/// Records an attempt and moves its delivery to the outcome's state. The newest attempt
/// is kept in the delivery's row; the one it replaces, if any, moves to `attempts`. A
/// delivery that succeeds at its first try so writes one row, not two.
fn record_attempt(conn: &Connection, f: &FinishedAttempt, counts: &mut Counts) -> Result<()> {
    let a = &f.attempt;
    if f.attempts_before > 0 {
        exec(
            conn,
            "INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms, response)
             SELECT id, last_at, last_status_code, last_error, last_duration_ms, last_response
             FROM deliveries WHERE id = ?1 AND last_at IS NOT NULL",
            [&f.delivery_id],
        )?;
    }
    let now = a.at + a.duration_ms;
    let (status, next) = match f.outcome {
        Outcome::Delivered => ("delivered", None),
        Outcome::Retry { at } => ("pending", Some(at)),
        Outcome::Dead => ("dead", None),
        // Pending, to go again once the webhook is enabled.
        Outcome::Disabled { .. } => ("pending", Some(now)),
    };
    exec(
        conn,
        "UPDATE deliveries SET status = ?1, attempts = attempts + 1, claimed = 0,
                next_attempt_at = ?2, updated_at = ?3, last_at = ?4, last_status_code = ?5,
                last_error = ?6, last_duration_ms = ?7, last_response = ?8
         WHERE id = ?9",
        params![
            status,
            next,
            now,
            a.at,
            a.status_code,
            a.error,
            a.duration_ms,
            a.response,
            f.delivery_id
        ],
    )?;
    match f.outcome {
        Outcome::Delivered => counts.add(&f.webhook, -1, 0),
        Outcome::Dead => counts.add(&f.webhook, -1, 1),
        Outcome::Retry { .. } | Outcome::Disabled { .. } => {}
    }
    Ok(())
}

/// The webhooks' health from a batch of attempts, written once per webhook: the newest
/// success, the newest error.
#[derive(Default)]
struct Health(HashMap<String, WebhookHealth>);

#[derive(Default)]
struct WebhookHealth {
    success: Option<Millis>,
    error: Option<(Millis, String)>,
}

impl Health {
    fn note(&mut self, f: &FinishedAttempt) {
        let a = &f.attempt;
        let at = a.at + a.duration_ms;
        let health = self.0.entry(f.webhook.clone()).or_default();
        if f.outcome == Outcome::Delivered {
            health.success = health.success.max(Some(at));
        } else if health.error.as_ref().is_none_or(|(t, _)| *t <= at) {
            health.error = Some((at, a.error_text()));
        }
    }

    fn write(self, conn: &Connection, written: &mut SuccessWritten) -> Result<()> {
        for (webhook, WebhookHealth { success, error }) in self.0 {
            if let Some(at) = success.filter(|at| written.due(&webhook, *at)) {
                exec(
                    conn,
                    "INSERT INTO webhook_state (name, last_success_at) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET
                         last_success_at = MAX(COALESCE(last_success_at, 0), excluded.last_success_at)",
                    params![webhook, at],
                )?;
            }
            if let Some((at, error)) = error {
                exec(
                    conn,
                    "INSERT INTO webhook_state (name, last_error, last_error_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                                      last_error_at = excluded.last_error_at",
                    params![webhook, error, at],
                )?;
            }
        }
        Ok(())
    }
}

/// When each webhook's `last_success_at` was last written: at most once a second, so a
/// busy webhook does not put its `webhook_state` page into every commit.
#[derive(Default)]
struct SuccessWritten(HashMap<String, Millis>);

impl SuccessWritten {
    /// Whether a success at `at` is to be written (and notes it so).
    fn due(&mut self, webhook: &str, at: Millis) -> bool {
        match self.0.get_mut(webhook) {
            Some(last) if at < *last + 1000 => false,
            Some(last) => {
                *last = at;
                true
            }
            None => {
                self.0.insert(webhook.to_string(), at);
                true
            }
        }
    }
}

/// An attempt with everything that follows from it: health, disabling the webhook,
/// the replies its response asked for.
fn finish(
    conn: &Connection,
    f: &FinishedAttempt,
    counts: &mut Counts,
    written: &mut SuccessWritten,
) -> Result<()> {
    record_attempt(conn, f, counts)?;
    let mut health = Health::default();
    health.note(f);
    health.write(conn, written)?;
    if let Outcome::Disabled { reason } = f.outcome {
        disable(
            conn,
            &f.webhook,
            Some(reason),
            f.attempt.at + f.attempt.duration_ms,
        )?;
    }
    for send in &f.replies {
        match enqueue(conn, send) {
            Ok(_) => {}
            // A redelivery whose response asks for something else than the first time:
            // the first reply stands.
            Err(StoreError::IdempotencyConflict) => tracing::warn!(
                webhook = %f.webhook,
                delivery_id = %f.delivery_id,
                "reply ignored: an earlier response to this event already queued a different reply"
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Marks up to `limit` due deliveries claimed, oldest due first. The order is the
/// `deliveries_due` index's alone, so SQLite walks the index and stops at the limit
/// instead of sorting every due row (ties fall in insertion order). Their events are
/// read afterwards, from the read pool, to keep the writer's work short.
fn claim(conn: &Connection, c: &ClaimRequest) -> Result<Claim<ClaimedRow>> {
    let mut items = conn
        .prepare_cached(match c.ordering {
            Ordering::None => {
                "UPDATE deliveries SET claimed = ?4 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE webhook = ?1 AND status = 'pending' AND claimed = 0 AND next_attempt_at <= ?2
                     ORDER BY next_attempt_at LIMIT ?3)
                 RETURNING id, attempts, event_seq"
            }
            // Only the oldest pending delivery of each conversation may go (a claimed
            // one still counts, so its followers wait); events without a conversation
            // (login, scan…) are not ordered.
            Ordering::Conversation => {
                "UPDATE deliveries SET claimed = ?4 WHERE id IN (
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
        })?
        .query_map(params![c.webhook, c.now, c.limit as i64, c.until], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<ClaimedRow>>>()?;
    items.sort_by_key(|(_, _, seq)| *seq);
    let next_due = if items.len() == c.limit {
        Some(c.now)
    } else {
        conn.prepare_cached(match c.ordering {
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
        })?
        .query_row([&c.webhook], |r| r.get(0))?
    };
    Ok(Claim { items, next_due })
}

fn release(conn: &Connection, id: &str) -> Result<()> {
    exec(
        conn,
        "UPDATE deliveries SET claimed = 0 WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

fn enqueue(conn: &Connection, s: &NewSend) -> Result<Enqueued> {
    if let Some(key) = &s.idempotency_key {
        let existing = conn
            .prepare_cached(
                "SELECT id, status, error, message_id, request_hash, account FROM sends WHERE idempotency_key = ?1",
            )?
            .query_row([key], |r| {
                let mut view = send_view(r)?;
                view.account = r.get(5)?;
                Ok((view, r.get::<_, String>(4)?))
            })
            .optional()?;
        if let Some((send, hash)) = existing {
            if hash != s.request_hash {
                return Err(StoreError::IdempotencyConflict);
            }
            return Ok(Enqueued {
                send,
                replayed: true,
            });
        }
    }
    exec(
        conn,
        "INSERT INTO sends (id, idempotency_key, request_hash, request, conversation, status, attempts, next_attempt_at, created_at, account)
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?6, ?7)",
        params![
            s.id,
            s.idempotency_key,
            s.request_hash,
            s.request_json,
            s.conversation,
            s.created_at,
            s.account
        ],
    )?;
    Ok(Enqueued {
        send: SendView {
            id: s.id.clone(),
            account: s.account.clone(),
            status: SendStatus::Queued,
            error: None,
            message_id: None,
            request: None,
        },
        replayed: false,
    })
}

/// A send from `id, status, error, message_id` columns.
fn send_view(row: &Row) -> rusqlite::Result<SendView> {
    Ok(SendView {
        id: row.get(0)?,
        account: String::new(),
        status: SendStatus::parse(&row.get::<_, String>(1)?),
        error: row.get(2)?,
        message_id: row.get(3)?,
        request: None,
    })
}

fn finish_send(conn: &Connection, id: &str, outcome: &SendOutcome, now: Millis) -> Result<()> {
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
    exec(
        conn,
        "UPDATE sends SET status = ?1, attempts = attempts + 1, next_attempt_at = ?2, error = ?3,
                message_id = ?4, finished_at = ?5, claimed_by = NULL, claimed_until = 0
         WHERE id = ?6",
        params![status, next, error, message_id, finished, id],
    )?;
    Ok(())
}

fn defer(conn: &Connection, id: &str, at: Millis) -> Result<()> {
    exec(
        conn,
        "UPDATE sends SET next_attempt_at = ?1, claimed_by = NULL, claimed_until = 0 WHERE id = ?2",
        params![at, id],
    )?;
    Ok(())
}

fn set_alias(
    conn: &Connection,
    kind: &str,
    alias: &str,
    target: &str,
    now: Millis,
) -> Result<bool> {
    let inserted = exec(
        conn,
        "INSERT INTO id_aliases (kind, alias, target, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, alias) DO NOTHING",
        params![kind, alias, target, now],
    )?;
    if inserted == 1 {
        return Ok(true);
    }
    let existing: String = conn
        .prepare_cached("SELECT target FROM id_aliases WHERE kind = ?1 AND alias = ?2")?
        .query_row([kind, alias], |r| r.get(0))?;
    Ok(existing == target)
}

/// The number given to `target`, or a new one.
fn number(conn: &Connection, kind: &str, target: &str, now: Millis) -> Result<i64> {
    exec(
        conn,
        "INSERT INTO id_numbers (kind, target, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, target) DO NOTHING",
        params![kind, target, now],
    )?;
    Ok(conn
        .prepare_cached("SELECT number FROM id_numbers WHERE kind = ?1 AND target = ?2")?
        .query_row([kind, target], |r| r.get(0))?)
}

/// Moves a cursor forward (a lower `seq` leaves it).
fn cursor(conn: &Connection, name: &str, seq: i64, now: Millis) -> Result<()> {
    exec(
        conn,
        "INSERT INTO cursors (name, seq, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at
         WHERE excluded.seq > cursors.seq",
        params![name, seq, now],
    )?;
    Ok(())
}

/// The kept key, or `fresh` stored as it.
fn key(conn: &Connection, name: &str, fresh: &[u8], now: Millis) -> Result<Vec<u8>> {
    exec(
        conn,
        "INSERT INTO keys (name, value, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO NOTHING",
        params![name, fresh, now],
    )?;
    Ok(conn
        .prepare_cached("SELECT value FROM keys WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?)
}

fn release_send(conn: &Connection, id: &str) -> Result<()> {
    exec(
        conn,
        "UPDATE sends SET claimed_by = NULL, claimed_until = 0 WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Claims up to `limit` due sends of one account, only the oldest queued send of each
/// conversation (a claimed one still counts, so its followers wait). A send claimed by
/// the same owner is never taken again; one claimed by another owner is taken once its
/// claim has expired. Free sends sort first, so `limit + 1` rows tell what is due now
/// and when the next one is.
fn claim_sends(conn: &Connection, c: &SendClaimRequest) -> Result<Claim<QueuedSend>> {
    let rows = conn
        .prepare_cached(
            "SELECT s.id, s.request, s.conversation, s.attempts, s.next_attempt_at,
                    s.claimed_by IS NULL OR (s.claimed_by != ?2 AND s.claimed_until <= ?3)
             FROM sends s
             WHERE s.account = ?1 AND s.status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM sends p WHERE p.account = s.account
                               AND p.status = 'queued'
                               AND p.conversation = s.conversation AND p.seq < s.seq)
             ORDER BY 6 DESC, s.next_attempt_at, s.seq LIMIT ?4",
        )?
        .query_map(
            params![c.account, &*c.owner, c.now, c.limit as i64 + 1],
            |r| {
                Ok((
                    QueuedSend {
                        id: r.get(0)?,
                        request_json: r.get(1)?,
                        conversation: r.get(2)?,
                        attempts: r.get::<_, i64>(3)? as u32,
                    },
                    r.get::<_, Millis>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut claim = Claim {
        items: Vec::new(),
        next_due: None,
    };
    let mut mark =
        conn.prepare_cached("UPDATE sends SET claimed_by = ?1, claimed_until = ?2 WHERE id = ?3")?;
    for (send, due_at, free) in rows {
        if !free {
            continue;
        }
        if due_at > c.now || claim.items.len() == c.limit {
            claim.next_due = Some(due_at);
            break;
        }
        mark.execute(params![&*c.owner, c.until, send.id])?;
        claim.items.push(send);
    }
    Ok(claim)
}

/// One chunk of a replay: the deliveries with rowids in `(cursor, cursor + rows]`
/// (rowids follow insertion, so a range is a cheap slice of the table).
fn requeue(conn: &Connection, r: &RequeueChunk, counts: &mut Counts) -> Result<Requeued> {
    let end: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM deliveries")?
        .query_row([], |row| row.get(0))?;
    let upto = r.cursor.saturating_add(r.rows.max(1));
    let mut done = 0;
    for (was, dead) in [("delivered", 0), ("dead", -1)] {
        let n = exec(
            conn,
            "UPDATE deliveries SET status = 'pending', claimed = 0, next_attempt_at = ?1, updated_at = ?1
             WHERE rowid > ?5 AND rowid <= ?6
               AND webhook = ?2 AND status = ?7
               AND event_seq > COALESCE(?3, 0)
               AND (?4 IS NULL OR (SELECT created_at FROM events WHERE seq = deliveries.event_seq) >= ?4)",
            params![r.now, r.webhook, r.after_seq, r.since, r.cursor, upto, was],
        )? as i64;
        counts.add(&r.webhook, n, dead * n);
        done += n;
    }
    Ok(Requeued {
        requeued: done as u64,
        cursor: (upto < end).then_some(upto),
        end,
    })
}

fn retry(conn: &Connection, id: &str, now: Millis, counts: &mut Counts) -> Result<Option<String>> {
    let found: Option<(String, String)> = conn
        .prepare_cached("SELECT webhook, status FROM deliveries WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((webhook, status)) = found else {
        return Ok(None);
    };
    exec(
        conn,
        "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, updated_at = ?1
         WHERE id = ?2",
        params![now, id],
    )?;
    match status.as_str() {
        "dead" => counts.add(&webhook, 1, -1),
        "delivered" => counts.add(&webhook, 1, 0),
        _ => {}
    }
    Ok(Some(webhook))
}

fn disable(conn: &Connection, name: &str, reason: Option<&str>, now: Millis) -> Result<()> {
    exec(
        conn,
        "INSERT INTO webhook_state (name, disabled_at, disabled_reason) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET disabled_at = excluded.disabled_at,
                                          disabled_reason = excluded.disabled_reason",
        params![name, reason.map(|_| now), reason],
    )?;
    Ok(())
}

fn failing_since(conn: &Connection, name: &str, since: Option<Millis>) -> Result<()> {
    exec(
        conn,
        "INSERT INTO webhook_state (name, failing_since) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET failing_since = excluded.failing_since",
        params![name, since],
    )?;
    Ok(())
}

fn prune(conn: &Connection, before: Millis) -> Result<u64> {
    // An event goes once every delivery of it succeeded; dead ones are kept for
    // inspection and manual retry. Each statement scans a table at most once.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS prune_seq (seq INTEGER PRIMARY KEY);
         DELETE FROM prune_seq;
         CREATE TEMP TABLE IF NOT EXISTS open_seq (seq INTEGER PRIMARY KEY);
         DELETE FROM open_seq;
         -- Events with an unfinished delivery stay; the open deliveries come from
         -- their partial index.
         INSERT OR IGNORE INTO open_seq
             SELECT event_seq FROM deliveries WHERE status != 'delivered';",
    )?;
    // Events are not indexed by time; `seq` follows insertion (and so time), and the
    // events older than `before` are the ones before the first that is not: a walk from
    // the oldest that reads what is to be pruned and one more.
    // The newest event always stays: the next seq is one more than it (see NextSeq).
    let young: Option<i64> = conn
        .prepare_cached("SELECT seq FROM events WHERE created_at >= ?1 ORDER BY seq LIMIT 1")?
        .query_row([before], |r| r.get(0))
        .optional()?;
    let newest: i64 =
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    let events = conn.execute(
        "INSERT INTO prune_seq SELECT seq FROM events
         WHERE seq < ?2 AND created_at < ?1 AND seq NOT IN (SELECT seq FROM open_seq)",
        params![before, young.unwrap_or(newest).min(newest)],
    )?;
    if events > 0 {
        conn.execute_batch(
            "DELETE FROM attempts WHERE delivery_id IN (
                 SELECT d.id FROM deliveries d JOIN prune_seq p ON d.event_seq = p.seq);
             DELETE FROM deliveries WHERE event_seq IN (SELECT seq FROM prune_seq);
             DELETE FROM events WHERE seq IN (SELECT seq FROM prune_seq);",
        )?;
    }
    conn.execute(
        "DELETE FROM sends WHERE status != 'queued' AND finished_at < ?1",
        [before],
    )?;
    conn.execute("DELETE FROM id_aliases WHERE created_at < ?1", [before])?;
    // Signed requests older than retention are far outside the signature's 5-minute
    // window: a replay of one is refused as stale before the cache is asked.
    conn.execute(
        "DELETE FROM signed_requests WHERE created_at < ?1",
        [before],
    )?;
    Ok(events as u64)
}
