-- A try's log, shipped into the store by the host that runs it, so any host can read and
-- follow it. Keyed by byte offset: shipping a chunk again is a no-op.
CREATE TABLE log_chunks (
    ti         BIGINT NOT NULL,
    try_number BIGINT NOT NULL,
    "offset"   BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (ti, try_number, "offset")
);
