//! PostgreSQL implementation of [`Store`], for several waas instances sharing one
//! database (`storage.url = "postgres://…"`).
//!
//! Every operation is one short transaction on a pooled connection; the database does
//! the coordination:
//! - appends take a transaction-scoped advisory lock, so `seq` grows in commit order
//!   across instances (a reader that has seen `seq` N never later finds a smaller one
//!   appear, which the event feed, long polls and OneBot cursors rely on);
//! - deliveries and sends are claimed with `FOR UPDATE SKIP LOCKED`; a claim names its
//!   instance and expires, and the claims of an instance that stopped heartbeating are
//!   freed by whichever instance notices first ([`Cluster::reap`]);
//! - each account has a lease row with a fencing epoch: events the puppet hands over and
//!   the sender's claims carry the epoch, checked under a share lock on the lease row,
//!   so a stale holder's writes are refused ([`StoreError::Fenced`]) even when they race
//!   a takeover;
//! - `NOTIFY waas` tells the other instances about new events, queued sends and freed
//!   work ([`Notice`]); lease and heartbeat times are the database's clock.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::StorageSettings;

/// The advisory lock key every append holds until it commits ("waas" in ASCII).
const APPEND_LOCK: i64 = 0x7761_6173;

/// The channel the instances notify each other on.
const CHANNEL: &str = "waas";

/// The database's clock, in unix milliseconds.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Events pruned per transaction.
const PRUNE_CHUNK: i64 = 5_000;

pub use crate::config::{is_postgres_url, redact, redact_any};

pub struct PgStore {
    pool: PgPool,
    /// Appends, committed in groups by [`append_batches`].
    appends: tokio::sync::mpsc::Sender<AppendJob>,
    /// Why writes are failing now, if they are.
    failure: Arc<Mutex<Option<String>>>,
    notices: broadcast::Sender<Notice>,
    /// The newest `last_success_at` written per webhook: written at most once a second,
    /// so concurrent successes do not queue on the webhook's row.
    success_written: Mutex<HashMap<String, Millis>>,
    /// Stops the listener and the probe when the store is dropped.
    stop: CancellationToken,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PgStore {
    /// Connects (`storage.max_connections` pooled connections, each with
    /// `storage.statement_timeout`), runs the embedded migrations (one instance at a time:
    /// sqlx holds an advisory lock) and starts listening for the other instances' notices.
    pub async fn open(settings: &StorageSettings) -> Result<PgStore> {
        let shown = redact(&settings.url);
        let timeout_ms = settings.statement_timeout.as_millis().max(1).to_string();
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| StoreError::Rejected(format!("storage.url `{shown}`: {e}")))?
            .application_name("waas")
            .options([("statement_timeout", timeout_ms.as_str())])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {shown}: {e} (is it running, and does the \
                     database exist?)"
                ))
            })?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let (notices, _) = broadcast::channel(4096);
        let (appends, queued) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(append_batches(pool.clone(), queued));
        let store = PgStore {
            appends,
            pool,
            failure: Default::default(),
            notices,
            success_written: Default::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(listen(
            store.pool.clone(),
            store.notices.clone(),
            store.stop.clone(),
        ));
        tokio::spawn(probe_while_failing(
            store.pool.clone(),
            store.failure.clone(),
            store.stop.clone(),
        ));
        tracing::info!(database = %shown, "the store is PostgreSQL");
        Ok(store)
    }

    /// Notes whether a write went through: a failure the database may recover from makes
    /// [`Store::write_failure`] say so until a write (or the probe) succeeds.
    fn track<T>(&self, result: Result<T>) -> Result<T> {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(_) => {
                if failure.take().is_some() {
                    tracing::info!("the store writes again");
                }
            }
            Err(e) if e.is_transient() => {
                if failure.is_none() {
                    tracing::error!(error = %e, "the store cannot write; new sends and claims wait until it can");
                }
                *failure = Some(e.to_string());
            }
            Err(_) => {}
        }
        result
    }

    async fn tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// Turns the other instances' `NOTIFY`s into [`Notice`]s. A lost connection is
/// reconnected; what was notified meanwhile is unknown, so everyone looks again.
async fn listen(pool: PgPool, notices: broadcast::Sender<Notice>, stop: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(l) = listener.as_mut() else {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => {
                        listener = Some(l);
                        let _ = notices.send(Notice::Work);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for the other instances; trying again in 1s")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to LISTEN for the other instances; trying again in 1s")
                }
            }
            if listener.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            continue;
        };
        let next = tokio::select! {
            n = l.try_recv() => n,
            _ = stop.cancelled() => return,
        };
        match next {
            Ok(Some(n)) => {
                if let Some(notice) = parse_notice(n.payload()) {
                    let _ = notices.send(notice);
                }
            }
            // The connection was lost; the next call reconnects.
            Ok(None) => {
                tracing::warn!(
                    "lost the connection that listens for the other instances; reconnecting"
                );
                let _ = notices.send(Notice::Work);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for the other instances failed; reconnecting in 1s");
                listener = None;
                let _ = notices.send(Notice::Work);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

fn parse_notice(payload: &str) -> Option<Notice> {
    match payload.split_once(':') {
        Some(("e", seq)) => seq.parse().ok().map(Notice::Event),
        Some(("s", account)) => Some(Notice::Send(account.to_string())),
        _ if payload == "w" => Some(Notice::Work),
        _ => None,
    }
}

/// While writes fail, asks the database every second whether it answers again, so the
/// workers (which wait for exactly that) resume without a restart.
async fn probe_while_failing(
    pool: PgPool,
    failure: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        if failure.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            continue;
        }
        if sqlx::query("SELECT 1").execute(&pool).await.is_ok() {
            let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
            if f.take().is_some() {
                tracing::info!("the store answers again");
            }
        }
    }
}

fn stored_event(row: &PgRow) -> Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.try_get(0)?,
        event_type: row.try_get(1)?,
        seq: row.try_get(2)?,
        created_at: row.try_get(3)?,
        bot_json: row.try_get(4)?,
        data_json: row.try_get(5)?,
        account: row.try_get(6)?,
    })
}

/// Refuses a write made under `epoch` unless it is still `account`'s, holding a share
/// lock on the lease row until the transaction ends (a takeover waits for it).
async fn check_epoch(conn: &mut PgConnection, account: &str, epoch: Option<i64>) -> Result<()> {
    let Some(epoch) = epoch else {
        return Ok(());
    };
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM leases WHERE account = $1 FOR SHARE")
            .bind(account)
            .fetch_optional(&mut *conn)
            .await?;
    if current == Some(epoch) {
        Ok(())
    } else {
        Err(StoreError::Fenced(account.to_string()))
    }
}

/// Stores an event and its deliveries in the caller's transaction; a duplicate dedup
/// key answers the stored event. `claim` is who the deliveries marked claimed belong to,
/// and until when.
async fn append(
    conn: &mut PgConnection,
    e: &NewEvent,
    deliveries: &[NewDelivery],
    claim: Option<(&str, Millis)>,
) -> Result<Appended> {
    check_epoch(conn, &e.account, e.epoch).await?;
    if let Some(key) = &e.dedup_key {
        let seen: Option<(String, i64)> =
            sqlx::query_as("SELECT id, seq FROM events WHERE dedup_key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((id, seq)) = seen {
            return Ok(Appended {
                id,
                seq,
                duplicate: true,
            });
        }
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *conn)
        .await?;
    let inserted: Option<i64> = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO events (id, type, dedup_key, conversation, created_at, bot, data, account)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (dedup_key) DO NOTHING
             RETURNING seq)
         SELECT seq FROM ins, pg_notify('waas', 'e:' || ins.seq)",
    )
    .bind(&e.id)
    .bind(e.event_type)
    .bind(&e.dedup_key)
    .bind(&e.conversation)
    .bind(e.created_at)
    .bind(&e.bot_json)
    .bind(&e.data_json)
    .bind(&e.account)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(seq) = inserted else {
        // Stored meanwhile by another instance (the dedup key is unique).
        let (id, seq): (String, i64) =
            sqlx::query_as("SELECT id, seq FROM events WHERE dedup_key = $1")
                .bind(&e.dedup_key)
                .fetch_one(&mut *conn)
                .await?;
        return Ok(Appended {
            id,
            seq,
            duplicate: true,
        });
    };
    if !deliveries.is_empty() {
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let webhooks: Vec<&str> = deliveries.iter().map(|d| d.webhook.as_str()).collect();
        let conversations: Vec<Option<&str>> = deliveries
            .iter()
            .map(|d| d.conversation.as_deref())
            .collect();
        let owners: Vec<Option<&str>> = deliveries
            .iter()
            .map(|d| claim.filter(|_| d.claimed).map(|(by, _)| by))
            .collect();
        let untils: Vec<i64> = deliveries
            .iter()
            .map(|d| claim.filter(|_| d.claimed).map_or(0, |(_, until)| until))
            .collect();
        sqlx::query(
            "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at,
                                     conversation, claimed_by, claimed_until, updated_at)
             SELECT d.id, $1, d.webhook, 'pending', 0, $2, d.conversation, d.owner, d.until, $2
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
                  AS d(id, webhook, conversation, owner, until)",
        )
        .bind(seq)
        .bind(e.created_at)
        .bind(ids)
        .bind(webhooks)
        .bind(conversations)
        .bind(owners)
        .bind(untils)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Appended {
        id: e.id.clone(),
        seq,
        duplicate: false,
    })
}

/// An append waiting for its group commit.
struct AppendJob {
    event: NewEvent,
    deliveries: Vec<NewDelivery>,
    /// Who the deliveries created claimed belong to, and until when.
    owner: Arc<str>,
    until: Millis,
    reply: tokio::sync::oneshot::Sender<Result<Appended>>,
}

/// Most appends committed in one transaction.
const APPEND_BATCH: usize = 256;

/// Commits appends in groups: whatever queued up while the last group committed goes in
/// one transaction (one advisory lock, one fsync, a handful of statements), so under
/// load the cost per event falls and with nothing queued an append commits alone at
/// once. Callers are answered after the commit. If a group fails for a reason that is
/// not the database's (one bad row), each append of it is retried alone.
async fn append_batches(pool: PgPool, mut queued: tokio::sync::mpsc::Receiver<AppendJob>) {
    while let Some(first) = queued.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < APPEND_BATCH {
            match queued.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that stopped waiting no longer wants the event stored unseen.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        match append_group(&pool, &jobs).await {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) if e.is_transient() => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, appends = jobs.len(), "a group of appends failed; storing each alone");
                for job in jobs {
                    let result = async {
                        let mut tx = pool.begin().await?;
                        let appended = append(
                            &mut tx,
                            &job.event,
                            &job.deliveries,
                            Some((&*job.owner, job.until)),
                        )
                        .await?;
                        tx.commit().await?;
                        Ok(appended)
                    }
                    .await;
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

/// One group of appends in one transaction; each job's own answer (a stale lease
/// epoch refuses that job only).
async fn append_group(pool: &PgPool, jobs: &[AppendJob]) -> Result<Vec<Result<Appended>>> {
    let mut tx = pool.begin().await?;
    let mut results: Vec<Option<Result<Appended>>> = jobs.iter().map(|_| None).collect();
    // Fencing: the current epoch of every account a job carries one for, share-locked
    // until the commit (a takeover waits for it).
    let fenced: Vec<&str> = jobs
        .iter()
        .filter(|j| j.event.epoch.is_some())
        .map(|j| j.event.account.as_str())
        .collect();
    if !fenced.is_empty() {
        let current: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT account, epoch FROM leases WHERE account = ANY($1) FOR SHARE",
        )
        .bind(&fenced)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for (job, result) in jobs.iter().zip(results.iter_mut()) {
            if let Some(epoch) = job.event.epoch
                && current.get(&job.event.account) != Some(&epoch)
            {
                *result = Some(Err(StoreError::Fenced(job.event.account.clone())));
            }
        }
    }
    let todo: Vec<usize> = (0..jobs.len()).filter(|i| results[*i].is_none()).collect();
    if !todo.is_empty() {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let events: Vec<&NewEvent> = todo.iter().map(|i| &jobs[*i].event).collect();
        let inserted: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "INSERT INTO events (id, type, dedup_key, conversation, created_at, bot, data, account)
             SELECT id, type, dedup_key, conversation, created_at, bot, data, account
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[])
                  WITH ORDINALITY AS e(id, type, dedup_key, conversation, created_at, bot, data,
                                       account, ord)
             ORDER BY ord
             ON CONFLICT (dedup_key) DO NOTHING
             RETURNING id, seq",
        )
        .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.dedup_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.conversation.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.created_at).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.bot_json.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.data_json.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.account.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        // The others had their dedup key stored already (before, or earlier in this
        // group): answered with the stored event.
        let keys: Vec<&str> = events
            .iter()
            .filter(|e| !inserted.contains_key(&e.id))
            .filter_map(|e| e.dedup_key.as_deref())
            .collect();
        let stored: HashMap<String, (String, i64)> = if keys.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT dedup_key, id, seq FROM events WHERE dedup_key = ANY($1)",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(key, id, seq)| (key, (id, seq)))
            .collect()
        };
        let (mut d_ids, mut d_seqs, mut d_hooks, mut d_convs, mut d_owners, mut d_untils, mut d_at) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut newest = 0;
        for i in &todo {
            let job = &jobs[*i];
            let e = &job.event;
            results[*i] = Some(match inserted.get(&e.id) {
                Some(seq) => {
                    newest = newest.max(*seq);
                    for d in &job.deliveries {
                        d_ids.push(d.id.as_str());
                        d_seqs.push(*seq);
                        d_hooks.push(d.webhook.as_str());
                        d_convs.push(d.conversation.as_deref());
                        d_owners.push(d.claimed.then_some(&*job.owner));
                        d_untils.push(if d.claimed { job.until } else { 0 });
                        d_at.push(e.created_at);
                    }
                    Ok(Appended {
                        id: e.id.clone(),
                        seq: *seq,
                        duplicate: false,
                    })
                }
                None => match e.dedup_key.as_ref().and_then(|k| stored.get(k)) {
                    Some((id, seq)) => Ok(Appended {
                        id: id.clone(),
                        seq: *seq,
                        duplicate: true,
                    }),
                    None => Err(StoreError::Rejected(format!(
                        "event {} was not stored (its id is taken)",
                        e.id
                    ))),
                },
            });
        }
        if !d_ids.is_empty() {
            sqlx::query(
                "INSERT INTO deliveries (id, event_seq, webhook, status, attempts, next_attempt_at,
                                         conversation, claimed_by, claimed_until, updated_at)
                 SELECT id, seq, webhook, 'pending', 0, at, conversation, owner, until, at
                 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                             $6::bigint[], $7::bigint[])
                      AS d(id, seq, webhook, conversation, owner, until, at)",
            )
            .bind(d_ids)
            .bind(d_seqs)
            .bind(d_hooks)
            .bind(d_convs)
            .bind(d_owners)
            .bind(d_untils)
            .bind(d_at)
            .execute(&mut *tx)
            .await?;
        }
        if newest > 0 {
            sqlx::query("SELECT pg_notify('waas', 'e:' || $1::bigint)")
                .bind(newest)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Rejected("not appended".into()))))
        .collect())
}

/// Queues a send in the caller's transaction (or answers the one queued before under
/// the same idempotency key) and tells the account's holder.
async fn enqueue(conn: &mut PgConnection, s: &NewSend) -> Result<Enqueued> {
    let inserted: Option<String> = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO sends (id, idempotency_key, request_hash, request, conversation, status,
                                attempts, next_attempt_at, created_at, account)
             VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $6, $7)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING id, account)
         SELECT id FROM ins, pg_notify('waas', 's:' || ins.account)",
    )
    .bind(&s.id)
    .bind(&s.idempotency_key)
    .bind(&s.request_hash)
    .bind(&s.request_json)
    .bind(&s.conversation)
    .bind(s.created_at)
    .bind(&s.account)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Enqueued {
            send: SendView {
                id: s.id.clone(),
                account: s.account.clone(),
                status: SendStatus::Queued,
                error: None,
                message_id: None,
                request: None,
            },
            replayed: false,
        });
    }
    let row = sqlx::query(
        "SELECT id, status, error, message_id, request_hash, account FROM sends
         WHERE idempotency_key = $1",
    )
    .bind(&s.idempotency_key)
    .fetch_one(&mut *conn)
    .await?;
    let hash: String = row.try_get(4)?;
    if hash != s.request_hash {
        return Err(StoreError::IdempotencyConflict);
    }
    Ok(Enqueued {
        send: SendView {
            id: row.try_get(0)?,
            account: row.try_get(5)?,
            status: SendStatus::parse(row.try_get(1)?),
            error: row.try_get(2)?,
            message_id: row.try_get(3)?,
            request: None,
        },
        replayed: true,
    })
}

#[async_trait]
impl EventLog for PgStore {
    async fn append_event(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        by: &Claimant,
    ) -> Result<Appended> {
        let mut appended = self.append_events(vec![(event, deliveries)], by).await;
        appended.pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Queued for the group committer one after the other before any answer is
    /// awaited: they are committed in this order (a group keeps its order in `seq`),
    /// normally in one transaction.
    async fn append_events(
        &self,
        events: Vec<(NewEvent, Vec<NewDelivery>)>,
        by: &Claimant,
    ) -> Vec<Result<Appended>> {
        let mut queued = Vec::with_capacity(events.len());
        for (event, deliveries) in events {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let job = AppendJob {
                until: by.until(event.created_at),
                owner: by.owner.clone(),
                event,
                deliveries,
                reply,
            };
            queued.push(self.appends.send(job).await.ok().map(|()| answer));
        }
        answers(queued)
            .await
            .into_iter()
            .map(|result| self.track(result))
            .collect()
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data, account FROM events
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::bigint FROM events")
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
        let rows = sqlx::query(
            "SELECT id, type, seq, created_at, bot, data, account FROM events
             WHERE created_at >= $1 AND type = $2 ORDER BY seq LIMIT $3",
        )
        .bind(since)
        .bind(event_type)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_event).collect()
    }
}

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn claim_due(
        &self,
        by: &Claimant,
        webhook: &str,
        ordering: Ordering,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<DueDelivery>> {
        // Free, or claimed by another instance and expired; never one's own claims.
        let claimed: Result<Vec<(String, i64, i64)>> = sqlx::query_as(match ordering {
            Ordering::None => {
                "UPDATE deliveries SET claimed_by = $4, claimed_until = $5 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE webhook = $1 AND status = 'pending' AND next_attempt_at <= $2
                       AND (claimed_by IS NULL OR (claimed_by <> $4 AND claimed_until <= $2))
                     ORDER BY next_attempt_at LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, attempts, event_seq"
            }
            // Only the oldest pending delivery of each conversation may go (a claimed one
            // still counts, so its followers wait).
            Ordering::Conversation => {
                "UPDATE deliveries SET claimed_by = $4, claimed_until = $5 WHERE id IN (
                     SELECT d.id FROM deliveries d
                     WHERE d.webhook = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2
                       AND (d.claimed_by IS NULL OR (d.claimed_by <> $4 AND d.claimed_until <= $2))
                       AND NOT EXISTS (SELECT 1 FROM deliveries p
                                       WHERE p.webhook = $1 AND p.conversation = d.conversation
                                         AND p.status = 'pending' AND p.event_seq < d.event_seq)
                     ORDER BY d.next_attempt_at LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, attempts, event_seq"
            }
        })
        .bind(webhook)
        .bind(now)
        .bind(limit as i64)
        .bind(&*by.owner)
        .bind(by.until(now))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from);
        let mut claimed = self.track(claimed)?;
        claimed.sort_by_key(|(_, _, seq)| *seq);
        let next_due: Option<Millis> = if claimed.len() == limit {
            Some(now)
        } else {
            sqlx::query_scalar(match ordering {
                Ordering::None => {
                    "SELECT MIN(next_attempt_at) FROM deliveries
                     WHERE webhook = $1 AND status = 'pending' AND claimed_by IS NULL"
                }
                Ordering::Conversation => {
                    "SELECT MIN(d.next_attempt_at) FROM deliveries d
                     WHERE d.webhook = $1 AND d.status = 'pending' AND d.claimed_by IS NULL
                       AND NOT EXISTS (SELECT 1 FROM deliveries p
                                       WHERE p.webhook = $1 AND p.conversation = d.conversation
                                         AND p.status = 'pending' AND p.event_seq < d.event_seq)"
                }
            })
            .bind(webhook)
            .fetch_one(&self.pool)
            .await?
        };
        let seqs: Vec<i64> = claimed.iter().map(|(_, _, seq)| *seq).collect();
        let mut events: HashMap<i64, StoredEvent> = HashMap::with_capacity(seqs.len());
        if !seqs.is_empty() {
            let rows = sqlx::query(
                "SELECT id, type, seq, created_at, bot, data, account FROM events
                 WHERE seq = ANY($1)",
            )
            .bind(&seqs)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let event = stored_event(row)?;
                events.insert(event.seq, event);
            }
        }
        let items = claimed
            .into_iter()
            .filter_map(|(id, attempts, seq)| {
                Some(DueDelivery {
                    id,
                    webhook: webhook.to_string(),
                    attempts: attempts as u32,
                    event: events.remove(&seq)?,
                })
            })
            .collect();
        Ok(Claim { items, next_due })
    }

    async fn finish_attempt(&self, f: &FinishedAttempt) -> Result<()> {
        let result = async {
            let a = &f.attempt;
            let now = a.at + a.duration_ms;
            let (status, next) = match f.outcome {
                Outcome::Delivered => ("delivered", None),
                Outcome::Retry { at } => ("pending", Some(at)),
                Outcome::Dead => ("dead", None),
                Outcome::Disabled { .. } => ("pending", Some(now)),
            };
            let mut tx = self.tx().await?;
            // Not waited for on disk: if the database itself crashes before writing this
            // out, the delivery is pending again and goes out once more under the same
            // webhook-id (receivers deduplicate); nothing acknowledged rides on it.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "WITH a AS (
                     INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms, response)
                     VALUES ($1, $2, $3, $4, $5, $6))
                 UPDATE deliveries SET status = $7, attempts = attempts + 1, claimed_by = NULL,
                        claimed_until = 0, next_attempt_at = $8, updated_at = $9
                 WHERE id = $1",
            )
            .bind(&f.delivery_id)
            .bind(a.at)
            .bind(a.status_code.map(i64::from))
            .bind(&a.error)
            .bind(a.duration_ms)
            .bind(&a.response)
            .bind(status)
            .bind(next)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if f.outcome == Outcome::Delivered {
                let due = {
                    let written = self
                        .success_written
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    written.get(&f.webhook).is_none_or(|w| now >= w + 1000)
                };
                if due {
                    sqlx::query(
                        "INSERT INTO webhook_state (name, last_success_at) VALUES ($1, $2)
                         ON CONFLICT (name) DO UPDATE SET last_success_at =
                             GREATEST(COALESCE(webhook_state.last_success_at, 0), excluded.last_success_at)",
                    )
                    .bind(&f.webhook)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            } else {
                sqlx::query(
                    "INSERT INTO webhook_state (name, last_error, last_error_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error,
                                                      last_error_at = excluded.last_error_at",
                )
                .bind(&f.webhook)
                .bind(a.error_text())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Outcome::Disabled { reason } = f.outcome {
                disable(&mut tx, &f.webhook, Some(reason), now).await?;
            }
            for send in &f.replies {
                // A savepoint: a conflicting reply must not undo the attempt.
                let mut sp = tx.begin().await?;
                match enqueue(&mut sp, send).await {
                    Ok(_) => sp.commit().await?,
                    Err(StoreError::IdempotencyConflict) => {
                        sp.rollback().await?;
                        tracing::warn!(
                            webhook = %f.webhook,
                            delivery_id = %f.delivery_id,
                            "reply ignored: an earlier response to this event already queued a different reply"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
            if f.outcome == Outcome::Delivered {
                let mut written = self
                    .success_written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let w = written.entry(f.webhook.clone()).or_insert(0);
                if now >= *w + 1000 {
                    *w = now;
                }
            }
            Ok(())
        }
        .await;
        self.track(result)
    }

    async fn release_delivery(&self, delivery_id: &str) -> Result<()> {
        let result =
            sqlx::query("UPDATE deliveries SET claimed_by = NULL, claimed_until = 0 WHERE id = $1")
                .bind(delivery_id)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(StoreError::from);
        self.track(result)
    }

    async fn retry_delivery(&self, id: &str, now: Millis) -> Result<Option<String>> {
        let result = sqlx::query_scalar(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, updated_at = $1
             WHERE id = $2 RETURNING webhook",
        )
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from);
        self.track(result)
    }

    async fn requeue(&self, r: RequeueChunk) -> Result<Requeued> {
        let result = async {
            let end: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(rid), 0)::bigint FROM deliveries")
                    .fetch_one(&self.pool)
                    .await?;
            let upto = r.cursor.saturating_add(r.rows.max(1));
            let done = sqlx::query(
                "UPDATE deliveries SET status = 'pending', claimed_by = NULL, claimed_until = 0,
                        next_attempt_at = $1, updated_at = $1
                 WHERE rid > $5 AND rid <= $6
                   AND webhook = $2 AND status IN ('delivered', 'dead')
                   AND event_seq > COALESCE($3, 0)
                   AND event_seq IN (SELECT seq FROM events WHERE created_at >= COALESCE($4, 0))",
            )
            .bind(r.now)
            .bind(&r.webhook)
            .bind(r.after_seq)
            .bind(r.since)
            .bind(r.cursor)
            .bind(upto)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(Requeued {
                requeued: done,
                cursor: (upto < end).then_some(upto),
                end,
            })
        }
        .await;
        self.track(result)
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryView>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "SELECT d.id, d.webhook, e.id, e.type, d.status, d.next_attempt_at,
                    a.at, a.status_code, a.error, a.duration_ms
             FROM (SELECT * FROM deliveries
                   WHERE ($1::text IS NULL OR webhook = $1) AND ($2::text IS NULL OR status = $2)
                     AND ($4::text[] IS NULL OR event_seq IN (
                          SELECT seq FROM events WHERE account = ANY($4)))
                   ORDER BY rid DESC LIMIT $3) d
             JOIN events e ON e.seq = d.event_seq
             LEFT JOIN attempts a ON a.delivery_id = d.id
             ORDER BY d.event_seq DESC, d.id, a.id",
        )
        .bind(&filter.webhook)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(i64::from(filter.limit))
        .bind(&filter.accounts)
        .fetch_all(&self.pool)
        .await?;
        Ok(fold_deliveries(rows))
    }

    async fn delivery_account(&self, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT e.account FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

async fn disable(
    conn: &mut PgConnection,
    name: &str,
    reason: Option<&str>,
    now: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_state (name, disabled_at, disabled_reason) VALUES ($1, $2, $3)
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

#[async_trait]
impl WebhookState for PgStore {
    async fn webhook_stats(&self) -> Result<HashMap<String, WebhookStats>> {
        let mut stats: HashMap<String, WebhookStats> = HashMap::new();
        for row in sqlx::query(
            "SELECT webhook, status, COUNT(*) FROM deliveries
             WHERE status <> 'delivered' GROUP BY webhook, status",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let entry = stats.entry(row.try_get(0)?).or_default();
            let n: i64 = row.try_get(2)?;
            match row.try_get::<String, _>(1)?.as_str() {
                "dead" => entry.dead += n,
                _ => entry.pending += n,
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
        let result = async {
            let mut conn = self.pool.acquire().await?;
            disable(&mut conn, name, reason.as_deref(), now).await
        }
        .await;
        self.track(result)
    }

    async fn set_webhook_failing_since(&self, name: &str, since: Option<Millis>) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO webhook_state (name, failing_since) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET failing_since = excluded.failing_since",
        )
        .bind(name)
        .bind(since)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.track(result)
    }
}

#[async_trait]
impl SendQueue for PgStore {
    async fn enqueue_send(&self, send: NewSend) -> Result<Enqueued> {
        let result = async {
            let mut conn = self.pool.acquire().await?;
            enqueue(&mut conn, &send).await
        }
        .await;
        self.track(result)
    }

    async fn claim_sends(
        &self,
        by: &Claimant,
        account: &str,
        limit: usize,
        now: Millis,
    ) -> Result<Claim<QueuedSend>> {
        let result = async {
            let mut tx = self.tx().await?;
            check_epoch(&mut tx, account, by.epoch).await?;
            // The oldest queued send of each conversation (a claimed one still counts, so
            // its followers wait); free ones first, so `limit + 1` rows tell what is due
            // now and when the next one is.
            let rows = sqlx::query(
                "SELECT s.id, s.request, s.conversation, s.attempts, s.next_attempt_at,
                        (s.claimed_by IS NULL OR (s.claimed_by <> $2 AND s.claimed_until <= $3)) AS free
                 FROM sends s
                 WHERE s.account = $1 AND s.status = 'queued'
                   AND NOT EXISTS (SELECT 1 FROM sends p WHERE p.account = s.account
                                   AND p.status = 'queued'
                                   AND p.conversation = s.conversation AND p.seq < s.seq)
                 ORDER BY free DESC, s.next_attempt_at, s.seq LIMIT $4
                 FOR UPDATE OF s SKIP LOCKED",
            )
            .bind(account)
            .bind(&*by.owner)
            .bind(now)
            .bind(limit as i64 + 1)
            .fetch_all(&mut *tx)
            .await?;
            let mut claim = Claim {
                items: Vec::new(),
                next_due: None,
            };
            for row in rows {
                let free: bool = row.try_get(5)?;
                if !free {
                    continue;
                }
                let due_at: Millis = row.try_get(4)?;
                if due_at > now || claim.items.len() == limit {
                    claim.next_due = Some(due_at);
                    break;
                }
                claim.items.push(QueuedSend {
                    id: row.try_get(0)?,
                    request_json: row.try_get(1)?,
                    conversation: row.try_get(2)?,
                    attempts: row.try_get::<i64, _>(3)? as u32,
                });
            }
            if !claim.items.is_empty() {
                let ids: Vec<&str> = claim.items.iter().map(|s| s.id.as_str()).collect();
                sqlx::query(
                    "UPDATE sends SET claimed_by = $1, claimed_until = $2 WHERE id = ANY($3)",
                )
                .bind(&*by.owner)
                .bind(by.until(now))
                .bind(ids)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(claim)
        }
        .await;
        self.track(result)
    }

    async fn finish_send(
        &self,
        send: &QueuedSend,
        outcome: SendOutcome,
        now: Millis,
        receipt: Option<Receipt>,
    ) -> Result<Option<Appended>> {
        let (status, next, error, message_id, finished) = match &outcome {
            SendOutcome::Sent { message_id } => (
                "sent",
                now,
                None,
                Some(message_id.as_str()).filter(|m| !m.is_empty()),
                Some(now),
            ),
            SendOutcome::Retry { at, error } => ("queued", *at, Some(error.as_str()), None, None),
            SendOutcome::Failed { error } => ("failed", now, Some(error.as_str()), None, Some(now)),
        };
        let result = async {
            let mut tx = self.tx().await?;
            sqlx::query(
                "UPDATE sends SET status = $1, attempts = attempts + 1, next_attempt_at = $2,
                        error = $3, message_id = $4, finished_at = $5, claimed_by = NULL,
                        claimed_until = 0
                 WHERE id = $6",
            )
            .bind(status)
            .bind(next)
            .bind(error)
            .bind(message_id)
            .bind(finished)
            .bind(&send.id)
            .execute(&mut *tx)
            .await?;
            // What went out is recorded whatever the lease says now: the receipt is not
            // fenced (refusing it would lose the truth about a message that was sent).
            let appended = match receipt {
                Some(r) => {
                    let mut event = r.event;
                    event.epoch = None;
                    Some(append(&mut tx, &event, &r.deliveries, None).await?)
                }
                None => None,
            };
            tx.commit().await?;
            Ok(appended)
        }
        .await;
        self.track(result)
    }

    async fn defer_send(&self, send: &QueuedSend, at: Millis) -> Result<()> {
        let result = sqlx::query(
            "UPDATE sends SET next_attempt_at = $1, claimed_by = NULL, claimed_until = 0 WHERE id = $2",
        )
        .bind(at)
        .bind(&send.id)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.track(result)
    }

    async fn release_send(&self, send_id: &str) -> Result<()> {
        let result =
            sqlx::query("UPDATE sends SET claimed_by = NULL, claimed_until = 0 WHERE id = $1")
                .bind(send_id)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(StoreError::from);
        self.track(result)
    }

    async fn get_send(&self, id: &str) -> Result<Option<SendView>> {
        let row = sqlx::query(
            "SELECT id, status, error, message_id, account, request, created_at FROM sends
             WHERE id = $1",
        )
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
impl IdMap for PgStore {
    async fn set_alias(&self, kind: &str, alias: &str, target: &str, now: Millis) -> Result<bool> {
        let result = async {
            let inserted = sqlx::query(
                "INSERT INTO id_aliases (kind, alias, target, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, alias) DO NOTHING",
            )
            .bind(kind)
            .bind(alias)
            .bind(target)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(true);
            }
            let existing: Option<String> =
                sqlx::query_scalar("SELECT target FROM id_aliases WHERE kind = $1 AND alias = $2")
                    .bind(kind)
                    .bind(alias)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(existing.as_deref() == Some(target))
        }
        .await;
        self.track(result)
    }

    async fn alias_target(&self, kind: &str, alias: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT target FROM id_aliases WHERE kind = $1 AND alias = $2")
                .bind(kind)
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn alias_of(&self, kind: &str, target: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT alias FROM id_aliases WHERE kind = $1 AND target = $2 LIMIT 1",
        )
        .bind(kind)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn number(&self, kind: &str, target: &str, now: Millis) -> Result<i64> {
        let given: Option<i64> =
            sqlx::query_scalar("SELECT number FROM id_numbers WHERE kind = $1 AND target = $2")
                .bind(kind)
                .bind(target)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(n) = given {
            return Ok(n);
        }
        let result = async {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO id_numbers (kind, target, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, target) DO NOTHING RETURNING number",
            )
            .bind(kind)
            .bind(target)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            match inserted {
                Some(n) => Ok(n),
                // Given meanwhile by another instance.
                None => Ok(sqlx::query_scalar(
                    "SELECT number FROM id_numbers WHERE kind = $1 AND target = $2",
                )
                .bind(kind)
                .bind(target)
                .fetch_one(&self.pool)
                .await?),
            }
        }
        .await;
        self.track(result)
    }

    async fn number_target(&self, kind: &str, number: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT target FROM id_numbers WHERE kind = $1 AND number = $2")
                .bind(kind)
                .bind(number)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn key(&self, name: &str, fresh: Vec<u8>, now: Millis) -> Result<Vec<u8>> {
        let result = async {
            sqlx::query(
                "INSERT INTO keys (name, value, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&fresh)
            .bind(now)
            .execute(&self.pool)
            .await?;
            Ok(sqlx::query_scalar("SELECT value FROM keys WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?)
        }
        .await;
        self.track(result)
    }
}

#[async_trait]
impl Cursors for PgStore {
    async fn cursor(&self, name: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_cursor(&self, name: &str, seq: i64, now: Millis) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO cursors (name, seq, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at
             WHERE excluded.seq > cursors.seq",
        )
        .bind(name)
        .bind(seq)
        .bind(now)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.track(result)
    }
}

#[async_trait]
impl SignedRequests for PgStore {
    async fn begin_signed(&self, r: SignedRequest) -> Result<SignedBegin> {
        let result = async {
            let inserted = sqlx::query(
                "INSERT INTO signed_requests (webhook_id, method, path, idempotency_key, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (webhook_id) DO NOTHING",
            )
            .bind(&r.webhook_id)
            .bind(&r.method)
            .bind(&r.path)
            .bind(&r.idempotency_key)
            .bind(r.at)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(SignedBegin::New);
            }
            let row = sqlx::query(
                "SELECT status, content_type, response, idempotency_key FROM signed_requests
                 WHERE webhook_id = $1",
            )
            .bind(&r.webhook_id)
            .fetch_one(&self.pool)
            .await?;
            let key: Option<String> = row.try_get(3)?;
            if key != r.idempotency_key {
                return Ok(SignedBegin::Conflict);
            }
            Ok(match row.try_get::<Option<i64>, _>(0)? {
                None => SignedBegin::InProgress,
                Some(status) => SignedBegin::Answered(RecordedAnswer {
                    status: status as u16,
                    content_type: row.try_get(1)?,
                    body: row.try_get::<Option<Vec<u8>>, _>(2)?.unwrap_or_default(),
                }),
            })
        }
        .await;
        self.track(result)
    }

    async fn finish_signed(&self, webhook_id: &str, answer: Option<RecordedAnswer>) -> Result<()> {
        let result = match answer {
            Some(a) => {
                sqlx::query(
                    "UPDATE signed_requests SET status = $1, content_type = $2, response = $3
                 WHERE webhook_id = $4",
                )
                .bind(i64::from(a.status))
                .bind(a.content_type)
                .bind(a.body)
                .bind(webhook_id)
                .execute(&self.pool)
                .await
            }
            None => {
                sqlx::query("DELETE FROM signed_requests WHERE webhook_id = $1")
                    .bind(webhook_id)
                    .execute(&self.pool)
                    .await
            }
        }
        .map(|_| ())
        .map_err(StoreError::from);
        self.track(result)
    }
}

#[async_trait]
impl Cluster for PgStore {
    async fn heartbeat(&self, instance: &str, started_at: Millis) -> Result<()> {
        let sql = format!(
            "INSERT INTO instances (id, started_at, last_seen) VALUES ($1, $2, {DB_NOW})
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
        );
        let result = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(instance)
            .bind(started_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::from);
        self.track(result)
    }

    async fn acquire_lease(
        &self,
        account: &str,
        instance: &str,
        lease: Duration,
    ) -> Result<Option<i64>> {
        // A renewal keeps the epoch; a takeover (from another holder, or from nobody)
        // makes a new one. Another holder's lease that has not run out is left alone.
        let sql = format!(
            "INSERT INTO leases (account, holder, epoch, expires_at, since)
             VALUES ($1, $2, 1, {DB_NOW} + $3, {DB_NOW})
             ON CONFLICT (account) DO UPDATE SET
                 epoch = CASE WHEN leases.holder = excluded.holder THEN leases.epoch
                              ELSE leases.epoch + 1 END,
                 since = CASE WHEN leases.holder = excluded.holder THEN leases.since
                              ELSE excluded.since END,
                 holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.holder IS NULL
                OR leases.expires_at <= {DB_NOW}
             RETURNING epoch"
        );
        let result = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(account)
            .bind(instance)
            .bind(lease.as_millis() as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from);
        self.track(result)
    }

    async fn release_lease(&self, account: &str, instance: &str) -> Result<()> {
        let result = sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at = 0 WHERE account = $1 AND holder = $2",
        )
        .bind(account)
        .bind(instance)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(StoreError::from);
        self.track(result)
    }

    async fn reap(&self, silence: Duration) -> Result<u64> {
        let result = async {
            let mut tx = self.tx().await?;
            let gone: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "DELETE FROM instances WHERE last_seen < {DB_NOW} - $1 RETURNING id"
            )))
            .bind(silence.as_millis() as i64)
            .fetch_all(&mut *tx)
            .await?;
            for id in &gone {
                tracing::warn!(instance = %id, "an instance stopped heartbeating; its claimed work is free again");
            }
            // Claims of instances that are not alive (reaped now, or never seen).
            let mut freed = 0;
            for table in ["deliveries", "sends"] {
                freed += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET claimed_by = NULL, claimed_until = 0
                     WHERE claimed_by IS NOT NULL
                       AND claimed_by NOT IN (SELECT id FROM instances)"
                )))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            if freed > 0 {
                sqlx::query("SELECT pg_notify('waas', 'w')")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(freed)
        }
        .await;
        self.track(result)
    }

    async fn instances(&self) -> Result<Vec<InstanceView>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, started_at, last_seen FROM instances ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, started_at, last_seen)| InstanceView {
                id,
                started_at,
                last_seen,
            })
            .collect())
    }

    async fn leases(&self) -> Result<Vec<LeaseView>> {
        let rows: Vec<(String, Option<String>, i64, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT account, CASE WHEN expires_at > {DB_NOW} THEN holder END, epoch, since,
                        expires_at
                 FROM leases ORDER BY account"
            )))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, holder, epoch, since, expires_at)| LeaseView {
                name,
                holder,
                epoch,
                since,
                expires_at,
            })
            .collect())
    }

    fn notices(&self) -> Option<broadcast::Receiver<Notice>> {
        Some(self.notices.subscribe())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn prune(&self, before: Millis) -> Result<u64> {
        let result = async {
            let mut pruned = 0u64;
            // In bounded chunks, so a large backlog never holds long locks.
            loop {
                let mut tx = self.tx().await?;
                let seqs: Vec<i64> = sqlx::query_scalar(
                    "SELECT seq FROM events e WHERE created_at < $1
                       AND NOT EXISTS (SELECT 1 FROM deliveries o
                                       WHERE o.event_seq = e.seq AND o.status <> 'delivered')
                     ORDER BY seq LIMIT $2",
                )
                .bind(before)
                .bind(PRUNE_CHUNK)
                .fetch_all(&mut *tx)
                .await?;
                if !seqs.is_empty() {
                    sqlx::query(
                        "DELETE FROM attempts WHERE delivery_id IN (
                             SELECT id FROM deliveries WHERE event_seq = ANY($1))",
                    )
                    .bind(&seqs)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM deliveries WHERE event_seq = ANY($1)")
                        .bind(&seqs)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM events WHERE seq = ANY($1)")
                        .bind(&seqs)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                pruned += seqs.len() as u64;
                if (seqs.len() as i64) < PRUNE_CHUNK {
                    break;
                }
            }
            for sql in [
                "DELETE FROM sends WHERE status <> 'queued' AND finished_at < $1",
                "DELETE FROM id_aliases WHERE created_at < $1",
                "DELETE FROM signed_requests WHERE created_at < $1",
            ] {
                sqlx::query(sql).bind(before).execute(&self.pool).await?;
            }
            Ok(pruned)
        }
        .await;
        self.track(result)
    }

    async fn ping(&self) -> Result<()> {
        if let Some(why) = self.write_failure() {
            return Err(StoreError::Unavailable(why));
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn write_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://waas:hunter2@db:5432/waas"),
            "postgres://waas:***@db:5432/waas"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/waas"),
            "postgres://postgres@127.0.0.1/waas"
        );
    }

    #[test]
    fn notices_are_read_back() {
        assert_eq!(parse_notice("e:42"), Some(Notice::Event(42)));
        assert_eq!(parse_notice("s:sales"), Some(Notice::Send("sales".into())));
        assert_eq!(parse_notice("w"), Some(Notice::Work));
        assert_eq!(parse_notice("x:1"), None);
    }
}
