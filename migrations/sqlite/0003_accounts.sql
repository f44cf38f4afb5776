-- Several WeChat accounts in one waas: events and sends belong to one. A v0.1 database
-- is migrated in place; its rows belong to the account `default`.
ALTER TABLE events ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
ALTER TABLE sends ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
-- Each account's sender claims its own queued sends.
CREATE INDEX sends_account_queued ON sends (account, status, conversation, seq);
