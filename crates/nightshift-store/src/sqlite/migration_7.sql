-- Every running nightshift process that executes tries (`up`, `worker`, `run`, `backfill`):
-- who it is, what it does, and when it last beat; `nightshift status` and the UI list them.
CREATE TABLE engines (
    owner        TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    role         TEXT NOT NULL,
    pools        TEXT,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
