-- A row the writer rewrites to learn whether the database takes writes again after a
-- failure (a full disk), so readiness and the workers recover without a restart.
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL
);

-- Every verified signed request (Standard Webhooks `webhook-id`), with the answer it
-- got: a replay, on any route, is answered the same and acts no second time.
CREATE TABLE signed_requests (
    webhook_id   TEXT    PRIMARY KEY,
    method       TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    -- the Idempotency-Key header it came with, if any: a replay with another is a 409
    idempotency_key TEXT,
    status       INTEGER,             -- NULL while the first request is being served
    content_type TEXT,
    response     BLOB,
    created_at   INTEGER NOT NULL     -- unix ms
);
CREATE INDEX signed_requests_created ON signed_requests (created_at);
