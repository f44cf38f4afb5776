-- The Postgres store: the same tables as the SQLite store (see migrations/sqlite), in
-- their current shape, for several waas instances sharing one database. Times are unix
-- milliseconds (BIGINT), JSON is kept as text (the store never looks inside).

-- The outbox: every event, and one delivery row per webhook that should receive it,
-- committed together before anything is acknowledged. Appends take an advisory lock
-- (see postgres.rs), so `seq` grows in commit order and a reader that has seen seq N
-- never later finds a smaller one committed.
CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT   NOT NULL UNIQUE,
    type         TEXT   NOT NULL,
    dedup_key    TEXT   UNIQUE,
    conversation TEXT,
    created_at   BIGINT NOT NULL,
    account      TEXT   NOT NULL,
    bot          TEXT   NOT NULL,
    data         TEXT   NOT NULL
);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE deliveries (
    id              TEXT    PRIMARY KEY,
    -- insertion order, for replays in bounded chunks and newest-first listings
    rid             BIGINT  GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_seq       BIGINT  NOT NULL REFERENCES events (seq),
    webhook         TEXT    NOT NULL,
    status          TEXT    NOT NULL,     -- pending | delivered | dead
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,               -- while pending
    conversation    TEXT,                 -- only for webhooks with conversation ordering
    -- the instance that claimed it and until when; NULL / 0 while unclaimed
    claimed_by      TEXT,
    claimed_until   BIGINT  NOT NULL DEFAULT 0,
    updated_at      BIGINT  NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (webhook, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_conversation ON deliveries (webhook, conversation, event_seq)
    WHERE status = 'pending' AND conversation IS NOT NULL;
CREATE INDEX deliveries_open ON deliveries (webhook, status, event_seq) WHERE status <> 'delivered';
CREATE INDEX deliveries_event ON deliveries (event_seq);
CREATE INDEX deliveries_claimed ON deliveries (claimed_by) WHERE claimed_by IS NOT NULL;

CREATE TABLE attempts (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT    NOT NULL REFERENCES deliveries (id),
    at          BIGINT  NOT NULL,
    status_code BIGINT,
    error       TEXT,
    duration_ms BIGINT  NOT NULL,
    response    TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

CREATE TABLE webhook_state (
    name            TEXT PRIMARY KEY,
    last_success_at BIGINT,
    last_error      TEXT,
    last_error_at   BIGINT,
    disabled_at     BIGINT,
    disabled_reason TEXT,
    failing_since   BIGINT
);

-- The send queue: outbound messages, committed before they are attempted; sent by the
-- instance holding the account's lease.
CREATE TABLE sends (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    account         TEXT    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    request_hash    TEXT    NOT NULL,
    request         TEXT    NOT NULL,
    conversation    TEXT    NOT NULL,
    status          TEXT    NOT NULL,     -- queued | sent | failed
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    error           TEXT,
    message_id      TEXT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT,
    claimed_by      TEXT,
    claimed_until   BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX sends_account_queued ON sends (account, conversation, seq) WHERE status = 'queued';
CREATE INDEX sends_finished ON sends (finished_at) WHERE status <> 'queued';

CREATE TABLE signed_requests (
    webhook_id      TEXT    PRIMARY KEY,
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    idempotency_key TEXT,
    status          BIGINT,               -- NULL while the first request is being served
    content_type    TEXT,
    response        BYTEA,
    created_at      BIGINT  NOT NULL
);
CREATE INDEX signed_requests_created ON signed_requests (created_at);

CREATE TABLE id_aliases (
    kind       TEXT   NOT NULL,
    alias      TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, alias)
);
CREATE INDEX id_aliases_target ON id_aliases (kind, target);
CREATE INDEX id_aliases_created ON id_aliases (created_at);

CREATE TABLE keys (
    name       TEXT   PRIMARY KEY,
    value      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE id_numbers (
    number     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, target)
);

CREATE TABLE cursors (
    name       TEXT   PRIMARY KEY,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The instances sharing this database: each renews its row at a third of
-- `cluster.lease`; one not seen for a whole lease is dead, and its claims are freed.
CREATE TABLE instances (
    id         TEXT   PRIMARY KEY,
    started_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);

-- One row per account: the instance that runs its puppet and sender, until when, and a
-- fencing epoch that grows with every change of holder. Writes made for the puppet
-- carry the epoch; a stale one is refused.
CREATE TABLE leases (
    account    TEXT   PRIMARY KEY,
    holder     TEXT,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    since      BIGINT NOT NULL
);
