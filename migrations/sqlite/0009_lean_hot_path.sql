-- no-transaction
-- The hot path's layout. Every B-tree an event touches costs a page in the WAL (and in
-- the fsync) of each commit: an event and its delivery used to touch eleven. Four go:
--
-- * `events.id` loses its UNIQUE index: nothing looks an event up by id, and the id is
--   `evt_` + a ULID (80 random bits per millisecond), unique by construction.
-- * `events_created` goes: pruning and the legacy "last 5 minutes" read walk `seq`
--   instead, which follows insertion (and so time).
-- * AUTOINCREMENT's counter (`sqlite_sequence`): see below.
-- * A delivery keeps its newest attempt in its own row (`last_*`); the `attempts` table
--   holds the earlier ones. A delivery that succeeds at the first try, the usual case,
--   writes no attempt row.
--
-- Rebuilding `events` needs foreign keys off (deliveries point at it), which SQLite
-- allows only outside a transaction: hence no-transaction, and an explicit one.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

-- `seq` is assigned by the writer (one more than the newest, which is never pruned),
-- not by AUTOINCREMENT, whose counter row is one more page in every commit. The old
-- counter's high-water mark is kept, so a seq handed out once is not handed out again
-- even where the newest events were pruned.
CREATE TABLE event_seq_floor (floor INTEGER NOT NULL);
INSERT INTO event_seq_floor (floor)
    SELECT MAX(COALESCE((SELECT MAX(seq) FROM events), 0),
               COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0));

CREATE TABLE events_lean (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    dedup_key    TEXT    UNIQUE,
    conversation TEXT,
    created_at   INTEGER NOT NULL,          -- unix ms
    bot          TEXT    NOT NULL,          -- JSON
    data         TEXT    NOT NULL,          -- JSON
    account      TEXT    NOT NULL DEFAULT 'default'
);
INSERT INTO events_lean (seq, id, type, dedup_key, conversation, created_at, bot, data, account)
    SELECT seq, id, type, dedup_key, conversation, created_at, bot, data, account FROM events;
DROP TABLE events;
ALTER TABLE events_lean RENAME TO events;

ALTER TABLE deliveries ADD COLUMN last_at INTEGER;            -- unix ms; NULL: no attempt yet
ALTER TABLE deliveries ADD COLUMN last_status_code INTEGER;
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
ALTER TABLE deliveries ADD COLUMN last_duration_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN last_response TEXT;

COMMIT;
PRAGMA foreign_keys = ON;
