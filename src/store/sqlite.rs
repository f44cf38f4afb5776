//! SQLite implementation of [`Store`] for one waas process.
//!
//! All writes go through one writer thread ([`writer`]) that owns the only write
//! connection and commits whatever has queued up in a single transaction (group
//! commit). Callers get their answer only after the commit.
//!
//! Reads use a small pool of their own (WAL lets them run beside the writer). Claims go
//! through the writer, so two never overlap, and are kept in their rows: a delivery's
//! `claimed` holds its claim's expiry, a send's `claimed_by` and `claimed_until` its
//! owner and expiry. One process owns the file (it holds `.lock`), so every claim is
//! this process's own: it lives until finished or released, and every claim is cleared
//! at start-up (after a crash nothing is in flight). The expiry matters where several
//! processes share a database; here it is kept for the record.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::config::Synchronous;
use crate::event::now_millis;

mod writer;

use writer::{Backlog, ClaimRequest, Reply, SendClaimRequest, Write, WriteHealth};

pub struct SqliteStore {
    writer: mpsc::Sender<Write>,
    /// Whether the writer's last transaction committed.
    health: Arc<WriteHealth>,
    /// Pending and dead deliveries per webhook, kept by the writer.
    backlog: Arc<Backlog>,
    /// Held for the store's lifetime: one waas process per database file.
    _lock: std::fs::File,
    pool: SqlitePool,
    /// The one process using this file, and the leases it holds (all of them).
    local: std::sync::Mutex<Local>,
}

/// What [`Cluster`] keeps for a store one process owns: nothing needs to outlive it.
#[derive(Default)]
struct Local {
    instance: Option<InstanceView>,
    leases: HashMap<String, LeaseView>,
}

/// The migrations that run outside sqlx's transaction (`-- no-transaction`: their own
/// `BEGIN … COMMIT`), each with a table only it creates.
const NO_TRANSACTION_MIGRATIONS: [(i64, &str); 1] = [(9, "event_seq_floor")];

/// The versions sqlx has recorded as applied; `None` on a new file (no
/// `_sqlx_migrations` yet).
async fn recorded_migrations(conn: &mut sqlx::SqliteConnection) -> Result<Option<HashSet<i64>>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?;
    Ok(Some(versions.into_iter().collect()))
}

/// sqlx records a no-transaction migration after it ran, outside its transaction: a
/// process killed between the two would find it done but not recorded, and the next
/// start would run it again and fail on what it already created. Such a migration is
/// recorded here instead (its own transaction either committed all of it, the marker
/// table included, or none), and added to `recorded`. A migration already recorded
/// costs nothing here.
async fn record_interrupted_migrations(
    conn: &mut sqlx::SqliteConnection,
    migrator: &sqlx::migrate::Migrator,
    recorded: &mut HashSet<i64>,
) -> Result<()> {
    for (version, marker) in NO_TRANSACTION_MIGRATIONS {
        if recorded.contains(&version) {
            continue;
        }
        let Some(migration) = migrator.iter().find(|m| m.version == version) else {
            continue;
        };
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        )
        .bind(marker)
        .fetch_one(&mut *conn)
        .await?;
        if !done {
            continue;
        }
        // `version` is the table's primary key: a row sqlx left (a failed run) stays.
        let recorded_now = sqlx::query(
            "INSERT OR IGNORE INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (?1, ?2, TRUE, ?3, -1)",
        )
        .bind(version)
        .bind(&*migration.description)
        .bind(&*migration.checksum)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if recorded_now > 0 {
            recorded.insert(version);
            tracing::warn!(
                version,
                description = %migration.description,
                "a migration was applied but not recorded (the process stopped right after it); recorded it"
            );
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url`, runs the embedded migrations
    /// and starts the writer task.
    pub async fn open(url: &str, synchronous: Synchronous) -> Result<SqliteStore> {
        let path = sqlite_path(url).unwrap_or(url);
        let lock =
            prepare_files(Path::new(path)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
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

        // Migrations and start-up repairs on a connection of their own, closed before
        // the writer opens its own.
        // A migration may take a while on a big file (0009 copies `events`: about 3 s
        // per million events): said before and after, not as a slow-statement warning
        // quoting its SQL.
        let mut conn = options
            .clone()
            .log_slow_statements(tracing::log::LevelFilter::Off, Duration::MAX)
            .connect()
            .await?;
        let migrator = sqlx::migrate!("./migrations/sqlite");
        // A new file is created, not upgraded: nothing to say.
        let mut upgrading = false;
        let mut pending = 0;
        if let Some(mut recorded) = recorded_migrations(&mut conn).await? {
            record_interrupted_migrations(&mut conn, &migrator, &mut recorded).await?;
            pending = migrator
                .iter()
                .filter(|m| !recorded.contains(&m.version))
                .count();
            upgrading = !recorded.is_empty() && pending > 0;
        }
        let started = std::time::Instant::now();
        if upgrading {
            tracing::info!(
                pending,
                "upgrading the database's schema (on a big file this takes a few seconds per million events)"
            );
        }
        migrator.run(&mut conn).await?;
        if upgrading {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "the database's schema is up to date"
            );
        }
        // Claims belong to the process that made them; one process owns this file, so
        // whatever an earlier (crashed) process had claimed is free again.
        let released = sqlx::query("UPDATE deliveries SET claimed = 0 WHERE claimed != 0")
            .execute(&mut conn)
            .await?
            .rows_affected();
        let sends = sqlx::query(
            "UPDATE sends SET claimed_by = NULL, claimed_until = 0 WHERE claimed_by IS NOT NULL",
        )
        .execute(&mut conn)
        .await?
        .rows_affected();
        if released + sends > 0 {
            tracing::info!(
                deliveries = released,
                sends,
                "released work claimed before the last stop"
            );
        }
        // The backlog is counted once here; the writer keeps it current from then on.
        let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
        for row in sqlx::query(
            "SELECT webhook, status, COUNT(*) FROM deliveries
             WHERE status != 'delivered' GROUP BY webhook, status",
        )
        .fetch_all(&mut conn)
        .await?
        {
            let entry = counts.entry(row.try_get(0)?).or_default();
            let n: i64 = row.try_get(2)?;
            match row.try_get::<String, _>(1)?.as_str() {
                "dead" => entry.1 += n,
                _ => entry.0 += n,
            }
        }
        let backlog = Arc::new(Backlog::default());
        backlog.set(counts);
        conn.close().await?;
        let health = Arc::new(WriteHealth::default());
        let tx = writer::spawn(path, synchronous, health.clone(), backlog.clone())?;
        tokio::spawn(probe_while_failing(tx.downgrade(), health.clone()));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            writer: tx,
            health,
            backlog,
            _lock: lock,
            pool,
            local: Default::default(),
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
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if writer::is_resource_code(f.code) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Rejected(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        // Reads fail for reasons of the database's (a locked or missing file, a full
        // pool) far more often than for the query's; treated as passing.
        // A database's own error is the query's fault when it names a constraint, bad
        // data or a bad statement (SQLSTATE classes 22, 23 and 42 in Postgres); a lost
        // connection, a timeout, a deadlock or a full disk may pass.
        match &e {
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::Decode(_) => StoreError::Rejected(e.to_string()),
            sqlx::Error::Database(db) => {
                use sqlx::error::ErrorKind;
                let code = db.code().unwrap_or_default();
                let sqlstate_says_query = code.len() == 5
                    && (code.starts_with("22") || code.starts_with("23") || code.starts_with("42"));
                if sqlstate_says_query
                    || matches!(
                        db.kind(),
                        ErrorKind::UniqueViolation
                            | ErrorKind::ForeignKeyViolation
                            | ErrorKind::NotNullViolation
                            | ErrorKind::CheckViolation
                    )
                {
                    StoreError::Rejected(e.to_string())
                } else {
                    StoreError::Unavailable(e.to_string())
                }
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(e.to_string())
    }
}

/// Creates the database's folder (0700) and file (0600) when missing, so events and
/// messages are not readable by other users, and takes the lock that keeps a second
/// waas off the same file.
fn prepare_files(path: &Path) -> std::io::Result<std::fs::File> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
    }
    let lock_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot create {}: {e}", lock_path.display()),
            )
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
            ErrorKind::WouldBlock,
            format!(
                "another waas is already using {} (it holds {}); stop it first, or give this \
                 one its own storage.url",
                path.display(),
                lock_path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::new(
            e.kind(),
            format!("cannot lock {}: {e}", lock_path.display()),
        )),
    }
}

/// While writes fail, writes a probe row every second, so that the store is seen to
/// recover even when no other work is writing (the workers wait for exactly that).
async fn probe_while_failing(writer: mpsc::WeakSender<Write>, health: Arc<WriteHealth>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if health.failure().is_none() {
            continue;
        }
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if writer.send(Write::Probe(now_millis(), tx)).await.is_err() {
            return;
        }
        drop(writer);
        let _ = rx.await;
    }
}

/// The first `seq` stored at or after `since` (unix ms), or one past the newest when
/// none is. Events are not indexed by time: `seq` follows insertion, and so time, and a
/// binary search over it costs a few dozen lookups by `seq` where an index would cost a
/// page in every commit. (An event stored while the clock stood earlier than its
/// predecessor's may be placed on the wrong side of `since`.)
async fn first_seq_since(conn: &mut sqlx::SqliteConnection, since: Millis) -> Result<i64> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM events")
            .fetch_one(&mut *conn)
            .await?;
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(1);
    };
    let mut hi = hi + 1;
    // The created_at of the first event at or after `seq` (seq has gaps where events
    // were pruned); `None` past the newest.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at: Option<i64> =
            sqlx::query_scalar("SELECT created_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1")
                .bind(mid)
                .fetch_optional(&mut *conn)
                .await?;
        match at {
            Some(at) if at >= since => hi = mid,
            _ => lo = mid + 1,
        }
    }
    Ok(lo)
}

/// Splits `items` into chunks whose lengths are powers of two (at most
/// [`ROWS_PER_STATEMENT`]), so statements with one placeholder per item come in a
/// handful of shapes that stay in the prepared-statement cache.
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

/// Items per statement (a power of two), well under SQLite's limit on bound parameters.
const ROWS_PER_STATEMENT: usize = 256;

fn stored_event(row: &SqliteRow, at: usize) -> Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.try_get(at)?,
        event_type: row.try_get(at + 1)?,
        seq: row.try_get(at + 2)?,
        created_at: row.try_get(at + 3)?,
        bot_json: row.try_get(at + 4)?,
        data_json: row.try_get(at + 5)?,
        account: row.try_get(at + 6)?,
    })
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append_event(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        by: &Claimant,
    ) -> Result<Appended> {
        let mut appended = self.append_events(vec![(event, deliveries)], by).await;
        appended.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Queued for the writer one after the other before any answer is awaited: they
    /// reach it in this order and normally commit in one transaction.
    async fn append_events(
        &self,
        events: Vec<(NewEvent, Vec<NewDelivery>)>,
        by: &Claimant,
    ) -> Vec<Result<Appended>> {
        let mut queued = Vec::with_capacity(events.len());
        for (event, deliveries) in events {
            let until = by.until(event.created_at);
            let (reply, answer) = oneshot::channel();
            let op = Write::Append(event, deliveries, until, reply);
            queued.push(self.writer.send(op).await.ok().map(|()| answer));
        }
        answers(queued).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data, account FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| stored_event(r, 0)).collect()
    }

    async fn last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn recent_events(
        &self,
        event_type: &str,
        since: Millis,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let mut conn = self.pool.acquire().await?;
        let from = first_seq_since(&mut conn, since).await?;
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data, account FROM events
             WHERE seq >= ? AND created_at >= ? AND type = ? ORDER BY seq LIMIT ?",
        )
        .bind(from)
        .bind(since)
        .bind(event_type)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(|r| stored_event(r, 0)).collect()
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn delivery_account(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT e.account FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn claim_due(
        &self,
        by: &Claimant,
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
            until: by.until(now),
        };
        let claim = self.write(|r| Write::Claim(request, r)).await?;
        let mut events: HashMap<i64, StoredEvent> = HashMap::with_capacity(claim.items.len());
        for chunk in shaped_chunks(&claim.items) {
            let sql = format!(
                "SELECT id, type, seq, created_at, bot, data, account FROM events WHERE seq IN ({})",
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

    async fn finish_attempt(&self, finished: &FinishedAttempt) -> Result<()> {
        let finish = Box::new(finished.clone());
        self.write(|r| Write::Finish(finish, r)).await
    }

    async fn release_delivery(&self, delivery_id: &str) -> Result<()> {
        let id = delivery_id.to_string();
        self.write(|r| Write::Release(id, r)).await
    }

    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<String>> {
        let id = id.to_string();
        self.write(|r| Write::Retry(id, now, r)).await
    }

    async fn requeue(&self, chunk: RequeueChunk) -> Result<Requeued> {
        self.write(|r| Write::Requeue(chunk, r)).await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            // A delivery's newest attempt is in its own row, the earlier ones in
            // `attempts` (in the order they were made).
            "WITH d AS (SELECT * FROM deliveries
                        WHERE (?1 IS NULL OR webhook = ?1) AND (?2 IS NULL OR status = ?2)
                          AND (?4 IS NULL OR event_seq IN (
                               SELECT seq FROM events WHERE account IN (SELECT value FROM json_each(?4))))
                        ORDER BY rowid DESC LIMIT ?3),
                  a AS (SELECT delivery_id, at, status_code, error, duration_ms, id AS n
                        FROM attempts WHERE delivery_id IN (SELECT id FROM d)
                        UNION ALL
                        SELECT id, last_at, last_status_code, last_error, last_duration_ms,
                               9223372036854775807
                        FROM d WHERE last_at IS NOT NULL)
             SELECT d.id, d.webhook, e.id, e.type, d.status, d.next_attempt_at,
                    a.at, a.status_code, a.error, a.duration_ms
             FROM d JOIN events e ON e.seq = d.event_seq
             LEFT JOIN a ON a.delivery_id = d.id
             ORDER BY d.event_seq DESC, d.id, a.n",
        )
        .bind(&filter.webhook)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(i64::from(filter.limit))
        .bind(
            filter
                .accounts
                .as_ref()
                .map(|a| serde_json::to_string(a).unwrap_or_default()),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(fold_deliveries(rows))
    }
}

#[async_trait]
impl WebhookState for SqliteStore {
    async fn webhook_stats(&self) -> Result<HashMap<String, WebhookStats>> {
        let mut stats: HashMap<String, WebhookStats> = HashMap::new();
        for (webhook, (pending, dead)) in self.backlog.get() {
            let entry = stats.entry(webhook).or_default();
            entry.pending = pending;
            entry.dead = dead;
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
}

#[async_trait]
impl SendQueue for SqliteStore {
    async fn enqueue_send(&self, send: NewSend) -> Result<Enqueued> {
        self.write(|r| Write::Enqueue(send, r)).await
    }

    async fn claim_sends(
        &self,
        by: &Claimant,
        account: &str,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<QueuedSend>> {
        let request = SendClaimRequest {
            account: account.to_string(),
            owner: by.owner.clone(),
            limit,
            now,
            until: by.until(now),
        };
        self.write(|r| Write::ClaimSends(request, r)).await
    }

    async fn finish_send(
        &self,
        send: &QueuedSend,
        outcome: SendOutcome,
        now: Millis,
        receipt: Option<Receipt>,
    ) -> Result<Option<Appended>> {
        // A send whose outcome is not recorded stays claimed (its row is unchanged): it
        // went out (or was tried), and claiming it again would send it again. The
        // caller retries the write.
        let id = send.id.clone();
        let receipt = receipt.map(Box::new);
        self.write(|r| Write::FinishSend(id, outcome, now, receipt, r))
            .await
    }

    async fn defer_send(&self, send: &QueuedSend, at: Millis) -> Result<()> {
        let id = send.id.clone();
        self.write(|r| Write::Defer(id, at, r)).await
    }

    async fn release_send(&self, send_id: &str) -> Result<()> {
        let id = send_id.to_string();
        self.write(|r| Write::ReleaseSend(id, r)).await
    }

    async fn get_send(&self, id: &str) -> Result<Option<SendView>> {
        let row =
            sqlx::query("SELECT id, status, error, message_id, account, request, created_at FROM sends WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(SendView {
                id: row.try_get(0)?,
                account: row.try_get(4)?,
                status: SendStatus::parse(row.try_get(1)?),
                error: row.try_get(2)?,
                message_id: row.try_get(3)?,
                request: Some((row.try_get(5)?, row.try_get(6)?)),
            })
        })
        .transpose()
    }
}

#[async_trait]
impl IdMap for SqliteStore {
    async fn set_alias(&self, kind: &str, alias: &str, target: &str, now: Millis) -> Result<bool> {
        let (kind, alias, target) = (kind.to_string(), alias.to_string(), target.to_string());
        self.write(|r| Write::Alias(kind, alias, target, now, r))
            .await
    }

    async fn number(&self, kind: &str, target: &str, now: Millis) -> Result<i64> {
        // Most lookups find a number already given: read first, write only when new.
        let given: Option<i64> =
            sqlx::query_scalar("SELECT number FROM id_numbers WHERE kind = ? AND target = ?")
                .bind(kind)
                .bind(target)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(n) = given {
            return Ok(n);
        }
        let (kind, target) = (kind.to_string(), target.to_string());
        self.write(|r| Write::Number(kind, target, now, r)).await
    }

    async fn number_target(&self, kind: &str, number: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT target FROM id_numbers WHERE kind = ? AND number = ?")
                .bind(kind)
                .bind(number)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn key(&self, name: &str, fresh: Vec<u8>, now: Millis) -> Result<Vec<u8>> {
        let name = name.to_string();
        self.write(|r| Write::Key(name, fresh, now, r)).await
    }

    async fn alias_target(&self, kind: &str, alias: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT target FROM id_aliases WHERE kind = ? AND alias = ?")
                .bind(kind)
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn alias_of(&self, kind: &str, target: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT alias FROM id_aliases WHERE kind = ? AND target = ? LIMIT 1",
            )
            .bind(kind)
            .bind(target)
            .fetch_optional(&self.pool)
            .await?,
        )
    }
}

#[async_trait]
impl Cursors for SqliteStore {
    async fn cursor(&self, name: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT seq FROM cursors WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_cursor(&self, name: &str, seq: i64, now: Millis) -> Result<()> {
        let name = name.to_string();
        self.write(|r| Write::Cursor(name, seq, now, r)).await
    }
}

#[async_trait]
impl SignedRequests for SqliteStore {
    async fn begin_signed(&self, request: SignedRequest) -> Result<SignedBegin> {
        self.write(|r| Write::BeginSigned(request, r)).await
    }

    async fn finish_signed(&self, webhook_id: &str, answer: Option<RecordedAnswer>) -> Result<()> {
        let id = webhook_id.to_string();
        self.write(|r| Write::FinishSigned(id, answer, r)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn prune(&self, before: Millis) -> Result<u64> {
        let pruned = self.write(|r| Write::Prune(before, r)).await?;
        // Give the space back: the WAL is copied in and truncated.
        if let Err(e) = self.write(Write::Checkpoint).await {
            tracing::warn!(error = %e, "cannot checkpoint the write-ahead log");
        }
        Ok(pruned)
    }

    async fn ping(&self) -> Result<()> {
        if let Some(why) = self.health.failure() {
            return Err(StoreError::Unavailable(why));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn write_failure(&self) -> Option<String> {
        self.health.failure()
    }
}

/// One process owns the file (it holds `.lock`), so it is the whole cluster: every
/// lease is its own, at epoch 1, and no other instance sends notices.
#[async_trait]
impl Cluster for SqliteStore {
    async fn heartbeat(&self, instance: &str, started_at: Millis) -> Result<()> {
        let now = now_millis();
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .instance = Some(InstanceView {
            id: instance.to_string(),
            started_at,
            last_seen: now,
        });
        Ok(())
    }

    async fn acquire_lease(
        &self,
        account: &str,
        instance: &str,
        lease: Duration,
    ) -> Result<Option<i64>> {
        let now = now_millis();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let view = local
            .leases
            .entry(account.to_string())
            .or_insert_with(|| LeaseView {
                name: account.to_string(),
                holder: None,
                epoch: 0,
                since: now,
                expires_at: 0,
            });
        if view.holder.as_deref() != Some(instance) {
            view.holder = Some(instance.to_string());
            view.epoch += 1;
            view.since = now;
        }
        view.expires_at = now.saturating_add(lease.as_millis() as i64);
        Ok(Some(view.epoch))
    }

    async fn release_lease(&self, account: &str, instance: &str) -> Result<()> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(view) = local.leases.get_mut(account)
            && view.holder.as_deref() == Some(instance)
        {
            view.holder = None;
            view.expires_at = 0;
        }
        Ok(())
    }

    async fn reap(&self, _silence: Duration) -> Result<u64> {
        Ok(0)
    }

    async fn instances(&self) -> Result<Vec<InstanceView>> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        Ok(local.instance.iter().cloned().collect())
    }

    async fn leases(&self) -> Result<Vec<LeaseView>> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<LeaseView> = local.leases.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message event deduplicated under `dedup_key`.
    fn message_event(id: &str, dedup_key: &str, created_at: i64) -> NewEvent {
        NewEvent {
            id: id.into(),
            event_type: "message",
            dedup_key: Some(dedup_key.into()),
            conversation: None,
            created_at,
            account: "default".into(),
            bot_json: "{}".into(),
            data_json: "{}".into(),
            epoch: None,
        }
    }

    /// A connection of its own to the file at `db` (created if missing), beside any store.
    async fn raw_connection(db: &Path) -> sqlx::SqliteConnection {
        use sqlx::ConnectOptions;
        format!("sqlite://{}?mode=rwc", db.display())
            .parse::<SqliteConnectOptions>()
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pruning_truncates_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        let me = Claimant::new("test", Duration::from_secs(60));
        for i in 0..2_000 {
            let event = NewEvent {
                id: format!("evt_{i}"),
                event_type: "message",
                dedup_key: None,
                conversation: None,
                created_at: 10,
                account: "default".into(),
                bot_json: "{}".into(),
                data_json: "{}".into(),
                epoch: None,
            };
            store.append_event(event, vec![], &me).await.unwrap();
        }
        let wal = dir.path().join("t.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        store.prune(1_000).await.unwrap();
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "checkpointed and truncated"
        );
    }

    /// A database in the layout before the lean hot path (migrations 1–8) keeps its
    /// events, its deliveries' attempts and its `seq` high-water mark: a `seq` handed out
    /// once is not handed out again, even after the newest events were pruned.
    #[tokio::test]
    async fn the_lean_layout_keeps_history_and_never_reuses_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let before = dir.path().join("migrations-1-8");
        std::fs::create_dir_all(&before).unwrap();
        for entry in std::fs::read_dir("migrations/sqlite").unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.as_str() < "0009" {
                std::fs::copy(&path, before.join(&name)).unwrap();
            }
        }
        let mut conn = raw_connection(&db).await;
        sqlx::migrate::Migrator::new(before.as_path())
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
        for sql in [
            "INSERT INTO events (seq, id, type, dedup_key, created_at, bot, data)
             VALUES (1, 'evt_1', 'message', 'message:m1', 10, '{}', '{}'),
                    (2, 'evt_2', 'message', 'message:m2', 20, '{}', '{}'),
                    (3, 'evt_3', 'message', 'message:m3', 30, '{}', '{}')",
            "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at, updated_at)
             VALUES ('dlv_1', 1, 'a', 'dead', 2, NULL, 40)",
            "INSERT INTO attempts (delivery_id, at, status_code, duration_ms) VALUES
             ('dlv_1', 11, 500, 1), ('dlv_1', 21, 503, 1)",
            // The newest events went (an old store could prune them).
            "DELETE FROM events WHERE seq > 1",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();

        let url = format!("sqlite://{}", db.display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        let me = Claimant::new("test", Duration::from_secs(60));
        let fresh = message_event("evt_new", "message:m1", 50);
        let new = NewEvent {
            dedup_key: Some("message:m4".into()),
            ..fresh.clone()
        };
        let appended = store.append_event(new, vec![], &me).await.unwrap();
        assert_eq!(appended.seq, 4, "after the high-water mark 3");
        // Still deduplicated against what was there.
        let again = store.append_event(fresh, vec![], &me).await.unwrap();
        assert!(again.duplicate && again.seq == 1, "{again:?}");
        let listed = store
            .list_deliveries(DeliveryFilter {
                webhook: None,
                accounts: None,
                status: None,
                limit: 10,
            })
            .await
            .unwrap();
        let codes: Vec<Option<u16>> = listed[0].attempts.iter().map(|a| a.status_code).collect();
        assert_eq!(codes, [Some(500), Some(503)]);
    }

    /// A process killed after migration 0009 committed but before sqlx recorded it (sqlx
    /// records a no-transaction migration afterwards): the next start records it rather
    /// than run it again over the tables it made.
    #[tokio::test]
    async fn a_no_transaction_migration_done_but_not_recorded_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let url = format!("sqlite://{}", db.display());
        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        let me = Claimant::new("test", Duration::from_secs(60));
        let event = message_event("evt_1", "message:m1", 50);
        store
            .append_event(event.clone(), vec![], &me)
            .await
            .unwrap();
        drop(store);
        let mut conn = raw_connection(&db).await;
        let forgotten = sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9")
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(forgotten, 1);
        conn.close().await.unwrap();

        let store = SqliteStore::open(&url, Synchronous::Normal).await.unwrap();
        let again = store.append_event(event, vec![], &me).await.unwrap();
        assert!(
            again.duplicate && again.seq == 1,
            "the events are still there: {again:?}"
        );
        drop(store);
        let mut conn = raw_connection(&db).await;
        let recorded: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE version = 9 AND success",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(recorded, 1);
    }
}
