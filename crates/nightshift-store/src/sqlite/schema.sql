-- Version 1 of the metadata store. Instants are i64 microseconds since the Unix epoch (UTC).

-- Every pipeline file text a run was created from; a run executes the version it started with.
CREATE TABLE pipeline_versions (
    hash        TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The run ledger.
CREATE TABLE pipeline_runs (
    id                  INTEGER PRIMARY KEY,
    run_id              TEXT NOT NULL,
    pipeline            TEXT NOT NULL,
    logical_date        TEXT NOT NULL,
    data_interval_start INTEGER NOT NULL,
    data_interval_end   INTEGER NOT NULL,
    queued_at           INTEGER NOT NULL,
    start_time          INTEGER,
    end_time            INTEGER,
    status              TEXT NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCESS', 'FAILED')),
    rows_loaded         INTEGER NOT NULL DEFAULT 0,
    "trigger"           TEXT NOT NULL CHECK ("trigger" IN ('scheduled', 'manual', 'backfill')),
    version             TEXT NOT NULL REFERENCES pipeline_versions(hash),
    -- Invariant 1: one run per (pipeline, data interval), whatever creates it.
    UNIQUE (pipeline, data_interval_start),
    UNIQUE (pipeline, run_id)
);
CREATE INDEX pipeline_runs_active ON pipeline_runs(status) WHERE status IN ('QUEUED', 'RUNNING');
CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs(pipeline, data_interval_start);

-- One row per task per run: its current state and the claim on its current try.
CREATE TABLE task_instances (
    id          INTEGER PRIMARY KEY,
    run         INTEGER NOT NULL REFERENCES pipeline_runs(id),
    pipeline    TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('PENDING', 'QUEUED', 'RUNNING', 'SUCCESS', 'FAILED',
                                              'UP_FOR_RETRY', 'UPSTREAM_FAILED', 'SKIPPED')),
    try_number  INTEGER NOT NULL DEFAULT 0,
    max_tries   INTEGER NOT NULL,
    next_try_at INTEGER,
    pool        TEXT,
    owner       TEXT,
    host        TEXT,
    pid         INTEGER,
    pid_start   INTEGER,
    lease_until INTEGER,
    updated_at  INTEGER NOT NULL,
    UNIQUE (run, task_id)
);
CREATE INDEX task_instances_live ON task_instances(state, pool) WHERE state IN ('QUEUED', 'RUNNING', 'UP_FOR_RETRY');
CREATE INDEX task_instances_pipeline_running ON task_instances(pipeline) WHERE state = 'RUNNING';

-- One row per try: history is never overwritten.
CREATE TABLE task_tries (
    id          INTEGER PRIMARY KEY,
    ti          INTEGER NOT NULL REFERENCES task_instances(id),
    run         INTEGER NOT NULL REFERENCES pipeline_runs(id),
    task_id     TEXT NOT NULL,
    try_number  INTEGER NOT NULL,
    state       TEXT NOT NULL,
    start_time  INTEGER NOT NULL,
    end_time    INTEGER,
    duration_ms INTEGER,
    exit_code   INTEGER,
    signal      INTEGER,
    pid         INTEGER,
    host        TEXT NOT NULL,
    log_path    TEXT,
    error       TEXT,
    metrics     TEXT,
    rows_loaded INTEGER,
    UNIQUE (ti, try_number)
);
CREATE INDEX task_tries_by_run ON task_tries(run);

-- Every state change, with its time (invariant 4).
CREATE TABLE task_events (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    run         INTEGER NOT NULL,
    task_id     TEXT,
    try_number  INTEGER,
    state       TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX task_events_by_run ON task_events(run);

-- At most one `nightshift up` per project holds this lease.
CREATE TABLE scheduler_lease (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE TABLE pipeline_flags (
    pipeline   TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
