-- CANCELLED, a terminal state of runs and task instances (`nightshift cancel`). SQLite cannot
-- change a CHECK constraint in place: both tables are rebuilt with the same columns, keys and
-- indexes (the migration runs with foreign keys off and checks them before committing).
CREATE TABLE pipeline_runs_v6 (
    id                  INTEGER PRIMARY KEY,
    run_id              TEXT NOT NULL,
    pipeline            TEXT NOT NULL,
    logical_date        TEXT NOT NULL,
    data_interval_start INTEGER NOT NULL,
    data_interval_end   INTEGER NOT NULL,
    queued_at           INTEGER NOT NULL,
    start_time          INTEGER,
    end_time            INTEGER,
    status              TEXT NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCESS', 'FAILED', 'CANCELLED')),
    rows_loaded         INTEGER NOT NULL DEFAULT 0,
    "trigger"           TEXT NOT NULL CHECK ("trigger" IN ('scheduled', 'manual', 'backfill')),
    version             TEXT NOT NULL REFERENCES pipeline_versions(hash),
    deadline_at         INTEGER,
    deadline_state      TEXT,
    forecast_at         INTEGER,
    -- Invariant 1: one run per (pipeline, data interval), whatever creates it.
    UNIQUE (pipeline, data_interval_start),
    UNIQUE (pipeline, run_id)
);
INSERT INTO pipeline_runs_v6 (id, run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at,
    start_time, end_time, status, rows_loaded, "trigger", version, deadline_at, deadline_state, forecast_at)
SELECT id, run_id, pipeline, logical_date, data_interval_start, data_interval_end, queued_at,
    start_time, end_time, status, rows_loaded, "trigger", version, deadline_at, deadline_state, forecast_at
FROM pipeline_runs;
DROP TABLE pipeline_runs;
ALTER TABLE pipeline_runs_v6 RENAME TO pipeline_runs;
CREATE INDEX pipeline_runs_active ON pipeline_runs(status) WHERE status IN ('QUEUED', 'RUNNING');
CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs(pipeline, data_interval_start);
CREATE INDEX pipeline_runs_by_end ON pipeline_runs(data_interval_end);

CREATE TABLE task_instances_v6 (
    id            INTEGER PRIMARY KEY,
    run           INTEGER NOT NULL REFERENCES pipeline_runs(id),
    pipeline      TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('PENDING', 'QUEUED', 'RUNNING', 'SUCCESS', 'FAILED',
                                                'UP_FOR_RETRY', 'UPSTREAM_FAILED', 'SKIPPED', 'CANCELLED')),
    try_number    INTEGER NOT NULL DEFAULT 0,
    max_tries     INTEGER NOT NULL,
    next_try_at   INTEGER,
    pool          TEXT,
    owner         TEXT,
    host          TEXT,
    pid           INTEGER,
    pid_start     INTEGER,
    lease_until   INTEGER,
    updated_at    INTEGER NOT NULL,
    waiting_since INTEGER,
    pokes         INTEGER NOT NULL DEFAULT 0,
    interruptions INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run, task_id)
);
INSERT INTO task_instances_v6 (id, run, pipeline, task_id, state, try_number, max_tries, next_try_at, pool, owner, host,
    pid, pid_start, lease_until, updated_at, waiting_since, pokes, interruptions)
SELECT id, run, pipeline, task_id, state, try_number, max_tries, next_try_at, pool, owner, host,
    pid, pid_start, lease_until, updated_at, waiting_since, pokes, interruptions
FROM task_instances;
DROP TABLE task_instances;
ALTER TABLE task_instances_v6 RENAME TO task_instances;
CREATE INDEX task_instances_live ON task_instances(state, pool) WHERE state IN ('QUEUED', 'RUNNING', 'UP_FOR_RETRY');
CREATE INDEX task_instances_pipeline_running ON task_instances(pipeline) WHERE state = 'RUNNING';
