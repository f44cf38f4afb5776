-- Ids other protocols give out for waas's own (a Slack `ts` for a send, later OneBot's
-- integer ids): stable, so an id handed out once is accepted back after a restart.
CREATE TABLE id_aliases (
    kind       TEXT    NOT NULL,          -- slack_ts | …
    alias      TEXT    NOT NULL,
    target     TEXT    NOT NULL,          -- the waas id it stands for
    created_at INTEGER NOT NULL,          -- unix ms
    PRIMARY KEY (kind, alias)
);
CREATE INDEX id_aliases_target ON id_aliases (kind, target);
