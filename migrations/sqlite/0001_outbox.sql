-- The outbox: every event, and one delivery row per webhook that should receive it,
-- committed together before anything is acknowledged.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    type       TEXT    NOT NULL,
    dedup_key  TEXT    UNIQUE,
    conversation TEXT,
    created_at INTEGER NOT NULL,          -- unix ms
    bot        TEXT    NOT NULL,          -- JSON
    data       TEXT    NOT NULL           -- JSON
);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE deliveries (
    id              TEXT    PRIMARY KEY,
    event_seq       INTEGER NOT NULL REFERENCES events (seq),
    webhook         TEXT    NOT NULL,
    status          TEXT    NOT NULL,     -- pending | delivered | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,              -- unix ms, while pending
    conversation    TEXT,                 -- only for webhooks with conversation ordering
    -- 1 while a dispatcher owns it; cleared at start-up (one process owns the file)
    claimed         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL
);
-- Partial indexes keep the hot path cheap: a delivery created claimed and then
-- delivered never enters deliveries_due nor (without conversation ordering, where
-- `conversation` is left NULL) deliveries_conversation, and leaves deliveries_open
-- when it succeeds.
CREATE INDEX deliveries_due ON deliveries (webhook, next_attempt_at)
    WHERE status = 'pending' AND claimed = 0;
CREATE INDEX deliveries_conversation ON deliveries (webhook, conversation, event_seq)
    WHERE status = 'pending' AND conversation IS NOT NULL;
CREATE INDEX deliveries_open ON deliveries (webhook, status, event_seq)
    WHERE status != 'delivered';

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT    NOT NULL REFERENCES deliveries (id),
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    response    TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE webhook_state (
    name            TEXT PRIMARY KEY,
    last_success_at INTEGER,
    last_error      TEXT,
    last_error_at   INTEGER,
    disabled_at     INTEGER,
    disabled_reason TEXT,
    failing_since   INTEGER               -- first dead delivery since the last success
);

-- The send queue: outbound messages, committed before they are attempted.
CREATE TABLE sends (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    idempotency_key TEXT    UNIQUE,
    request_hash    TEXT    NOT NULL,
    request         TEXT    NOT NULL,     -- JSON
    conversation    TEXT    NOT NULL,
    status          TEXT    NOT NULL,     -- queued | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    error           TEXT,
    message_id      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX sends_queued ON sends (status, conversation, seq);
