//! The store's behaviour, once, run against every backend: each test below becomes
//! `sqlite::NAME` (a fresh file) and `postgres::NAME` (a fresh database on
//! `WAAS_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`, created
//! for the test and dropped after it). Postgres being unreachable fails the tests: it
//! is part of what is tested, not optional.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{StorageSettings, Synchronous};

/// A fresh store of one backend, which can be opened again (a restart) and as a second
/// instance (Postgres).
pub(crate) enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(crate::harness::ScratchDatabase),
}

impl Backend {
    pub(crate) async fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    pub(crate) async fn postgres() -> Backend {
        Backend::Postgres(
            crate::harness::ScratchDatabase::create(&crate::harness::test_postgres(), "waas_test")
                .await
                .unwrap(),
        )
    }

    pub(crate) fn settings(&self) -> StorageSettings {
        StorageSettings {
            url: match self {
                Backend::Sqlite(dir) => format!("sqlite://{}/t.db", dir.path().display()),
                Backend::Postgres(db) => db.url.clone(),
            },
            retention: Duration::from_secs(3600),
            synchronous: Synchronous::Normal,
            max_connections: 8,
            statement_timeout: Duration::from_secs(30),
        }
    }

    pub(crate) async fn open(&self) -> Arc<dyn Store> {
        open(&self.settings()).await.unwrap()
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

/// Each test, once per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::sqlite().await).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Backend::postgres().await).await;
            })*
        }
    };
}

store_tests!(
    numbers_are_stable_distinct_and_survive_a_reopen,
    duplicates_are_stored_once_and_claims_are_exclusive,
    retention_prunes_delivered_events_and_keeps_dead_ones,
    a_seq_is_never_handed_out_twice,
    send_claims_have_an_owner_and_an_expiry,
    idempotency_keys_replay_or_conflict,
    signed_requests_are_answered_once,
    conversations_deliver_in_order,
    replays_and_retries_requeue_finished_deliveries,
    every_attempt_is_listed_in_order,
    cursors_aliases_and_keys_are_kept,
    events_come_back_in_seq_order,
    a_run_of_events_is_stored_in_its_order,
    webhook_state_is_counted_and_kept,
    leases_have_one_holder_and_a_growing_epoch,
);

fn event(id: &str, created_at: Millis, dedup: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.into(),
        event_type: "message",
        dedup_key: dedup.map(str::to_string),
        conversation: Some("contact:alice".into()),
        created_at,
        account: "default".into(),
        bot_json: "{}".into(),
        data_json: "{}".into(),
        epoch: None,
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

/// This process, as the owner of its claims.
fn me() -> Claimant {
    Claimant::new("test", Duration::from_secs(60))
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

fn finished(d: &DueDelivery, outcome: Outcome, at: Millis) -> FinishedAttempt {
    FinishedAttempt {
        delivery_id: d.id.clone(),
        webhook: d.webhook.clone(),
        attempts_before: d.attempts,
        attempt: attempt(at),
        outcome,
        replies: vec![],
        prompt: false,
    }
}

async fn numbers_are_stable_distinct_and_survive_a_reopen(b: Backend) {
    let store = b.open().await;
    let alice = store.number("contact", "alice", 1).await.unwrap();
    let bob = store.number("contact", "bob", 1).await.unwrap();
    let room = store.number("room", "alice", 1).await.unwrap();
    assert_ne!(alice, bob);
    assert_ne!(alice, room, "kinds are apart");
    assert_eq!(store.number("contact", "alice", 2).await.unwrap(), alice);
    assert_eq!(
        store
            .number_target("contact", bob)
            .await
            .unwrap()
            .as_deref(),
        Some("bob")
    );
    assert_eq!(store.number_target("room", bob).await.unwrap(), None);
    assert!(alice > 0 && bob < (1 << 53));
    drop(store);
    let again = b.open().await;
    assert_eq!(again.number("contact", "alice", 3).await.unwrap(), alice);
    let carol = again.number("contact", "carol", 3).await.unwrap();
    assert!(carol > room, "numbers are never reused");
}

async fn duplicates_are_stored_once_and_claims_are_exclusive(b: Backend) {
    let store = b.open().await;
    let first = store
        .append_event(event("evt_1", 1, Some("m1")), hooks(), &me())
        .await
        .unwrap();
    let again = store
        .append_event(event("evt_2", 2, Some("m1")), hooks(), &me())
        .await
        .unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.id, "evt_1");
    assert_eq!(again.seq, first.seq);

    let claim = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    assert_eq!(claim.items.len(), 1);
    assert_eq!(claim.items[0].event.id, "evt_1");
    let second = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    assert!(
        second.items.is_empty(),
        "a claimed delivery is not handed out twice"
    );
    assert_eq!(second.next_due, None);

    store.release_delivery(&claim.items[0].id).await.unwrap();
    let third = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    assert_eq!(
        third.items.len(),
        1,
        "a released delivery can be claimed again"
    );
    // Created claimed: handed over in memory, never claimed from the store.
    let claimed = NewDelivery {
        claimed: true,
        ..hooks().remove(0)
    };
    store
        .append_event(event("evt_3", 3, None), vec![claimed], &me())
        .await
        .unwrap();
    let fourth = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    assert!(fourth.items.is_empty(), "created claimed by this owner");
}

async fn retention_prunes_delivered_events_and_keeps_dead_ones(b: Backend) {
    let store = b.open().await;
    for (id, at) in [
        ("evt_old_ok", 10),
        ("evt_old_dead", 11),
        ("evt_new_ok", 5_000),
    ] {
        store
            .append_event(event(id, at, None), hooks(), &me())
            .await
            .unwrap();
    }
    store.enqueue_send(send("out_old", "x")).await.unwrap();
    let claim = store
        .claim_due(&me(), "a", Ordering::None, 10, 10_000)
        .await
        .unwrap();
    assert_eq!(claim.items.len(), 3);
    for d in &claim.items {
        let outcome = if d.event.id == "evt_old_dead" {
            Outcome::Dead
        } else {
            Outcome::Delivered
        };
        store
            .finish_attempt(&finished(d, outcome, 6_000))
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
    assert_eq!(dead[0].attempts[0].status_code, Some(200));
    assert!(
        store.get_send("out_old").await.unwrap().is_some(),
        "a queued send is never pruned"
    );
}

/// Pull clients keep a seq as their cursor: one handed out is never handed out again,
/// not after every event was pruned, not after a restart, not for a duplicate.
async fn a_seq_is_never_handed_out_twice(b: Backend) {
    let store = b.open().await;
    let mut last = 0;
    for i in 0..3 {
        let a = store
            .append_event(
                event(&format!("evt_{i}"), 10, Some(&format!("m{i}"))),
                vec![],
                &me(),
            )
            .await
            .unwrap();
        assert!(a.seq > last);
        last = a.seq;
    }
    let dup = store
        .append_event(event("evt_dup", 10, Some("m0")), vec![], &me())
        .await
        .unwrap();
    assert!(dup.duplicate);
    store.prune(1_000).await.unwrap();
    drop(store);
    let store = b.open().await;
    let a = store
        .append_event(event("evt_after", 2_000, None), vec![], &me())
        .await
        .unwrap();
    assert!(a.seq > last, "{} after {last}", a.seq);
    assert!(
        store
            .events_after(last, 10)
            .await
            .unwrap()
            .iter()
            .any(|e| e.id == "evt_after")
    );
}

fn send(id: &str, conversation: &str) -> NewSend {
    NewSend {
        id: id.into(),
        account: "default".into(),
        idempotency_key: None,
        request_hash: String::new(),
        request_json: "{}".into(),
        conversation: conversation.into(),
        created_at: 1,
    }
}

fn ids(claim: &Claim<QueuedSend>) -> Vec<&str> {
    claim.items.iter().map(|s| s.id.as_str()).collect()
}

async fn send_claims_have_an_owner_and_an_expiry(b: Backend) {
    let store = b.open().await;
    for (id, chat) in [("out_1", "a"), ("out_2", "a"), ("out_3", "b")] {
        store.enqueue_send(send(id, chat)).await.unwrap();
    }
    let mine = me();
    let other = Claimant::new("other", Duration::from_secs(1));
    // The oldest send of each conversation; a claimed one still holds its followers.
    let first = store.claim_sends(&mine, "default", 10, 100).await.unwrap();
    assert_eq!(ids(&first), ["out_1", "out_3"]);
    assert!(
        store
            .claim_sends(&mine, "default", 10, 100)
            .await
            .unwrap()
            .items
            .is_empty(),
        "an owner never takes its own claims again"
    );
    assert!(
        store
            .claim_sends(&other, "default", 10, 100)
            .await
            .unwrap()
            .items
            .is_empty(),
        "another owner waits for the claim to expire"
    );
    let taken = store
        .claim_sends(&other, "default", 10, 100 + 60_001)
        .await
        .unwrap();
    assert_eq!(
        ids(&taken),
        ["out_1", "out_3"],
        "an expired claim is taken over"
    );

    // A finished send lets its conversation's next one go; a released one is free.
    let sent = SendOutcome::Sent {
        message_id: "m1".into(),
    };
    store
        .finish_send(&taken.items[0], sent, 200, None)
        .await
        .unwrap();
    store.release_send("out_3").await.unwrap();
    let next = store.claim_sends(&mine, "default", 10, 300).await.unwrap();
    assert_eq!(ids(&next), ["out_2", "out_3"]);
    let view = store.get_send("out_1").await.unwrap().unwrap();
    assert_eq!(view.status, SendStatus::Sent);
    assert_eq!(view.message_id.as_deref(), Some("m1"));

    // A deferred send is due later, and says when.
    store.defer_send(&next.items[0], 10_000).await.unwrap();
    let later = store.claim_sends(&mine, "default", 10, 400).await.unwrap();
    assert!(later.items.is_empty());
    assert_eq!(later.next_due, Some(10_000));
}

async fn idempotency_keys_replay_or_conflict(b: Backend) {
    let store = b.open().await;
    let keyed = |id: &str, hash: &str| NewSend {
        idempotency_key: Some("key-1".into()),
        request_hash: hash.into(),
        ..send(id, "a")
    };
    let first = store.enqueue_send(keyed("out_1", "h1")).await.unwrap();
    assert!(!first.replayed);
    let again = store.enqueue_send(keyed("out_2", "h1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.send.id, "out_1", "the first send is answered");
    assert!(matches!(
        store.enqueue_send(keyed("out_3", "h2")).await,
        Err(StoreError::IdempotencyConflict)
    ));
    assert!(store.get_send("out_2").await.unwrap().is_none());
}

async fn signed_requests_are_answered_once(b: Backend) {
    let store = b.open().await;
    let request = |key: Option<&str>| SignedRequest {
        webhook_id: "msg_1".into(),
        method: "POST".into(),
        path: "/v1/messages".into(),
        idempotency_key: key.map(str::to_string),
        at: 1,
    };
    assert_eq!(
        store.begin_signed(request(None)).await.unwrap(),
        SignedBegin::New
    );
    assert_eq!(
        store.begin_signed(request(None)).await.unwrap(),
        SignedBegin::InProgress
    );
    assert_eq!(
        store.begin_signed(request(Some("k"))).await.unwrap(),
        SignedBegin::Conflict
    );
    let answer = RecordedAnswer {
        status: 202,
        content_type: Some("application/json".into()),
        body: b"{\"id\":\"out_1\"}".to_vec(),
    };
    store
        .finish_signed("msg_1", Some(answer.clone()))
        .await
        .unwrap();
    assert_eq!(
        store.begin_signed(request(None)).await.unwrap(),
        SignedBegin::Answered(answer)
    );
    // A failure a retry may fix forgets the reservation.
    let other = SignedRequest {
        webhook_id: "msg_2".into(),
        ..request(None)
    };
    store.begin_signed(other.clone()).await.unwrap();
    store.finish_signed("msg_2", None).await.unwrap();
    assert_eq!(store.begin_signed(other).await.unwrap(), SignedBegin::New);
}

async fn conversations_deliver_in_order(b: Backend) {
    let store = b.open().await;
    for (id, chat) in [("evt_1", "c1"), ("evt_2", "c1"), ("evt_3", "c2")] {
        let delivery = NewDelivery {
            conversation: Some(chat.into()),
            ..hooks().remove(0)
        };
        let e = NewEvent {
            conversation: Some(chat.into()),
            ..event(id, 1, None)
        };
        store.append_event(e, vec![delivery], &me()).await.unwrap();
    }
    let first = store
        .claim_due(&me(), "a", Ordering::Conversation, 10, 100)
        .await
        .unwrap();
    let got: Vec<&str> = first.items.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(got, ["evt_1", "evt_3"], "the oldest of each conversation");
    // A retry keeps its place: the conversation waits for it.
    store
        .finish_attempt(&finished(&first.items[0], Outcome::Retry { at: 500 }, 100))
        .await
        .unwrap();
    let waiting = store
        .claim_due(&me(), "a", Ordering::Conversation, 10, 200)
        .await
        .unwrap();
    assert!(waiting.items.is_empty());
    assert_eq!(waiting.next_due, Some(500));
    let retried = store
        .claim_due(&me(), "a", Ordering::Conversation, 10, 600)
        .await
        .unwrap();
    assert_eq!(retried.items[0].event.id, "evt_1");
    assert_eq!(retried.items[0].attempts, 1);
    store
        .finish_attempt(&finished(&retried.items[0], Outcome::Delivered, 600))
        .await
        .unwrap();
    let next = store
        .claim_due(&me(), "a", Ordering::Conversation, 10, 700)
        .await
        .unwrap();
    assert_eq!(next.items[0].event.id, "evt_2");
}

async fn replays_and_retries_requeue_finished_deliveries(b: Backend) {
    let store = b.open().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        let a = store
            .append_event(event(&format!("evt_{i}"), 10 + i, None), hooks(), &me())
            .await
            .unwrap();
        seqs.push(a.seq);
    }
    let claim = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    for d in &claim.items {
        store
            .finish_attempt(&finished(d, Outcome::Delivered, 100))
            .await
            .unwrap();
    }
    // Everything after the second event, two rows per chunk.
    let mut chunk = RequeueChunk {
        webhook: "a".into(),
        after_seq: Some(seqs[1]),
        since: None,
        now: 200,
        cursor: 0,
        rows: 2,
    };
    let mut requeued = 0;
    loop {
        let done = store.requeue(chunk.clone()).await.unwrap();
        requeued += done.requeued;
        match done.cursor {
            Some(c) => chunk.cursor = c,
            None => break,
        }
    }
    assert_eq!(requeued, 3);
    let again = store
        .claim_due(&me(), "a", Ordering::None, 10, 200)
        .await
        .unwrap();
    let got: Vec<&str> = again.items.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(got, ["evt_2", "evt_3", "evt_4"]);
    assert_eq!(
        store
            .retry_delivery(&claim.items[0].id, 300)
            .await
            .unwrap()
            .as_deref(),
        Some("a")
    );
    assert_eq!(store.retry_delivery("dlv_none", 300).await.unwrap(), None);
    assert_eq!(
        store
            .delivery_account(&claim.items[0].id)
            .await
            .unwrap()
            .as_deref(),
        Some("default")
    );
}

/// Every attempt at a delivery is kept and listed oldest first, across retries, a
/// manual retry of a dead delivery and a replay of a delivered one (SQLite keeps the
/// newest in the delivery's row, the earlier ones apart).
async fn every_attempt_is_listed_in_order(b: Backend) {
    let store = b.open().await;
    store
        .append_event(event("evt_h", 10, None), hooks(), &me())
        .await
        .unwrap();
    let mut at = 100;
    let mut attempt_once = |outcome: Outcome, code: u16| {
        let store = &store;
        at += 100;
        let now = at;
        async move {
            let d = store
                .claim_due(&me(), "a", Ordering::None, 1, now)
                .await
                .unwrap()
                .items
                .pop()
                .expect("a due delivery");
            let mut f = finished(&d, outcome, now);
            f.attempt.status_code = Some(code);
            store.finish_attempt(&f).await.unwrap();
            (d.id, d.attempts)
        }
    };
    let (id, before) = attempt_once(Outcome::Retry { at: 0 }, 500).await;
    assert_eq!(before, 0);
    let (_, before) = attempt_once(Outcome::Dead, 502).await;
    assert_eq!(before, 1);
    store.retry_delivery(&id, 250).await.unwrap();
    attempt_once(Outcome::Delivered, 200).await;
    let replay = RequeueChunk {
        webhook: "a".into(),
        after_seq: None,
        since: None,
        now: 450,
        cursor: 0,
        rows: 100,
    };
    assert_eq!(store.requeue(replay).await.unwrap().requeued, 1);
    let (_, before) = attempt_once(Outcome::Delivered, 204).await;
    assert_eq!(before, 3);
    let listed = store
        .list_deliveries(DeliveryFilter {
            webhook: Some("a".into()),
            accounts: None,
            status: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let attempts: Vec<(Millis, Option<u16>)> = listed[0]
        .attempts
        .iter()
        .map(|a| (a.at, a.status_code))
        .collect();
    assert_eq!(
        attempts,
        [
            (200, Some(500)),
            (300, Some(502)),
            (400, Some(200)),
            (500, Some(204))
        ]
    );
    assert_eq!(listed[0].status, DeliveryStatus::Delivered);
}

async fn cursors_aliases_and_keys_are_kept(b: Backend) {
    let store = b.open().await;
    assert_eq!(store.cursor("bot").await.unwrap(), None);
    store.set_cursor("bot", 5, 1).await.unwrap();
    store.set_cursor("bot", 3, 2).await.unwrap();
    assert_eq!(store.cursor("bot").await.unwrap(), Some(5), "never back");
    assert!(
        store
            .set_alias("slack_ts", "1.1", "out_1", 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_alias("slack_ts", "1.1", "out_1", 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_alias("slack_ts", "1.1", "out_2", 1)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .alias_target("slack_ts", "1.1")
            .await
            .unwrap()
            .as_deref(),
        Some("out_1")
    );
    assert_eq!(
        store
            .alias_of("slack_ts", "out_1")
            .await
            .unwrap()
            .as_deref(),
        Some("1.1")
    );
    let key = store.key("media", vec![1, 2, 3], 1).await.unwrap();
    assert_eq!(key, [1, 2, 3]);
    drop(store);
    let again = b.open().await;
    assert_eq!(again.key("media", vec![9], 2).await.unwrap(), [1, 2, 3]);
    assert_eq!(again.cursor("bot").await.unwrap(), Some(5));
}

async fn events_come_back_in_seq_order(b: Backend) {
    let store = b.open().await;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let mut last = 0;
    for i in 0..20 {
        let e = NewEvent {
            event_type: if i % 2 == 0 { "message" } else { "login" },
            ..event(&format!("evt_{i}"), 100 + i, None)
        };
        let a = store.append_event(e, vec![], &me()).await.unwrap();
        assert!(a.seq > last, "seq grows");
        last = a.seq;
    }
    assert_eq!(store.last_seq().await.unwrap(), last);
    let all = store.events_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let page = store.events_after(all[9].seq, 5).await.unwrap();
    assert_eq!(page[0].id, "evt_10");
    assert_eq!(page.len(), 5);
    let logins = store.recent_events("login", 110, 100).await.unwrap();
    assert_eq!(logins.len(), 5);
    assert!(logins.iter().all(|e| e.event_type == "login"));
    // Every boundary: before the first event, on one, between two, after the last.
    for (since, expected) in [(0, 10), (111, 5), (112, 4), (119, 1), (120, 0)] {
        let got = store.recent_events("login", since, 100).await.unwrap();
        assert_eq!(got.len(), expected, "logins since {since}");
    }
}

/// A burst from the puppet's stream, appended as one run: stored in its order, a
/// result for each, a duplicate within the run stored once.
async fn a_run_of_events_is_stored_in_its_order(b: Backend) {
    let store = b.open().await;
    let run: Vec<(NewEvent, Vec<NewDelivery>)> = (0..50)
        .map(|i| {
            let dedup = format!("m{}", if i == 30 { 10 } else { i });
            (event(&format!("evt_{i}"), 100 + i, Some(&dedup)), hooks())
        })
        .collect();
    let results = store.append_events(run, &me()).await;
    assert_eq!(results.len(), 50);
    let appended: Vec<Appended> = results.into_iter().map(Result::unwrap).collect();
    assert!(appended[30].duplicate, "m10 again");
    assert_eq!(appended[30].id, "evt_10");
    let fresh: Vec<&Appended> = appended.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(fresh.len(), 49);
    assert!(
        fresh.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq in run order"
    );
    let stored = store.events_after(0, 100).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    let expected: Vec<String> = (0..50)
        .filter(|i| *i != 30)
        .map(|i| format!("evt_{i}"))
        .collect();
    assert_eq!(ids, expected);
    let claim = store
        .claim_due(&me(), "a", Ordering::None, 100, 1_000)
        .await
        .unwrap();
    assert_eq!(claim.items.len(), 49, "one delivery per stored event");
}

async fn webhook_state_is_counted_and_kept(b: Backend) {
    let store = b.open().await;
    for i in 0..3 {
        store
            .append_event(event(&format!("evt_{i}"), 1, None), hooks(), &me())
            .await
            .unwrap();
    }
    let claim = store
        .claim_due(&me(), "a", Ordering::None, 10, 100)
        .await
        .unwrap();
    store
        .finish_attempt(&finished(&claim.items[0], Outcome::Dead, 100))
        .await
        .unwrap();
    let mut failed = finished(&claim.items[1], Outcome::Retry { at: 1000 }, 100);
    failed.attempt.status_code = Some(500);
    store.finish_attempt(&failed).await.unwrap();
    store
        .set_webhook_disabled("a", Some("410 Gone".into()), 200)
        .await
        .unwrap();
    store
        .set_webhook_failing_since("a", Some(150))
        .await
        .unwrap();
    drop(store);
    let store = b.open().await;
    let stats = store.webhook_stats().await.unwrap();
    let a = &stats["a"];
    assert_eq!((a.pending, a.dead), (2, 1));
    assert_eq!(a.last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(a.disabled_reason.as_deref(), Some("410 Gone"));
    assert_eq!(a.failing_since, Some(150));
    store.set_webhook_disabled("a", None, 300).await.unwrap();
    assert_eq!(
        store.webhook_stats().await.unwrap()["a"].disabled_reason,
        None
    );
}

async fn leases_have_one_holder_and_a_growing_epoch(b: Backend) {
    let store = b.open().await;
    let lease = Duration::from_secs(60);
    store.heartbeat("one", 1).await.unwrap();
    let first = store
        .acquire_lease("default", "one", lease)
        .await
        .unwrap()
        .expect("nobody held it");
    assert_eq!(
        store.acquire_lease("default", "one", lease).await.unwrap(),
        Some(first),
        "a renewal keeps the epoch"
    );
    let leases = store.leases().await.unwrap();
    assert_eq!(leases[0].holder.as_deref(), Some("one"));
    assert_eq!(store.instances().await.unwrap()[0].id, "one");
    if !b.is_postgres() {
        return;
    }
    // A second instance on the same database.
    let other = b.open().await;
    other.heartbeat("two", 2).await.unwrap();
    assert_eq!(
        other.acquire_lease("default", "two", lease).await.unwrap(),
        None,
        "held by another instance"
    );
    store.release_lease("default", "one").await.unwrap();
    let second = other
        .acquire_lease("default", "two", lease)
        .await
        .unwrap()
        .expect("given back");
    assert!(second > first, "a new holder, a new epoch");
    // The old holder's writes for the puppet are refused now.
    let stale = NewEvent {
        epoch: Some(first),
        ..event("evt_stale", 1, None)
    };
    assert!(matches!(
        store.append_event(stale, hooks(), &me()).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store
            .claim_sends(&me().with_epoch(Some(first)), "default", 10, 1)
            .await,
        Err(StoreError::Fenced(_))
    ));
    let current = NewEvent {
        epoch: Some(second),
        ..event("evt_current", 1, None)
    };
    other.append_event(current, hooks(), &me()).await.unwrap();

    // An expired lease is taken over.
    let short = Duration::from_millis(200);
    other.acquire_lease("sales", "two", short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store
            .acquire_lease("sales", "one", lease)
            .await
            .unwrap()
            .is_some()
    );

    // Claims of an instance that stopped heartbeating are freed by the others.
    let two = Claimant::new("two", Duration::from_secs(600));
    let claimed = other
        .claim_due(&two, "a", Ordering::None, 10, now())
        .await
        .unwrap();
    assert_eq!(claimed.items.len(), 1);
    assert!(
        store
            .claim_due(&me(), "a", Ordering::None, 10, now())
            .await
            .unwrap()
            .items
            .is_empty(),
        "claimed by a live instance"
    );
    let mut notices = store.notices().expect("postgres notifies");
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.heartbeat("one", 1).await.unwrap();
    store.heartbeat("test", 1).await.unwrap();
    let freed = store.reap(Duration::from_millis(250)).await.unwrap();
    assert_eq!(freed, 1, "instance two went quiet");
    let woken = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if notices.recv().await.unwrap() == Notice::Work {
                break;
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "the others were told");
    assert_eq!(
        store
            .claim_due(&me(), "a", Ordering::None, 10, now())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

fn now() -> Millis {
    crate::event::now_millis()
}
