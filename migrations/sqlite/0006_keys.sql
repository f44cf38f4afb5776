-- Secret keys waas makes for itself (the master key of media links), kept so that a
-- link handed out stays valid across a restart.
CREATE TABLE keys (
    name       TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL          -- unix ms
);
