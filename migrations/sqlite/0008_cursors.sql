-- How far each long-lived consumer of the event log has got (a OneBot WebSocket bot):
-- the `seq` of the last event it confirmed, so it resumes there when it reconnects.
CREATE TABLE cursors (
    name       TEXT    PRIMARY KEY,                 -- onebot:reverse:default:ws://…
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL                     -- unix ms
);
