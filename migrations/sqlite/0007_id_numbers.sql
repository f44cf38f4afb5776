-- Integers standing for waas's and WeChat's string ids, for protocols whose ids are
-- numbers (OneBot's user_id, group_id, message_id): stable, never reused, never pruned,
-- so a number handed out once means the same thing after a restart.
CREATE TABLE id_numbers (
    number     INTEGER PRIMARY KEY AUTOINCREMENT,   -- 1, 2, 3…, far below 2^53
    kind       TEXT    NOT NULL,                    -- contact | room | message | …
    target     TEXT    NOT NULL,                    -- the string id it stands for
    created_at INTEGER NOT NULL,                    -- unix ms
    UNIQUE (kind, target)
);
