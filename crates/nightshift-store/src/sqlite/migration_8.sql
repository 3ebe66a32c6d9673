-- A try's log, shipped into the store by the host that runs it, so any host can read and
-- follow it (used with a shared PostgreSQL store; kept here so both backends have one
-- schema). Keyed by byte offset: shipping a chunk again is a no-op.
CREATE TABLE log_chunks (
    ti         INTEGER NOT NULL,
    try_number INTEGER NOT NULL,
    "offset"   INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (ti, try_number, "offset")
);
