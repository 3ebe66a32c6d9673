-- Deadlines: when a run must finish, the forecast, and where it stands (on_track, at_risk,
-- missed, met). Written by the scheduler; read by the UI, the API and `explain`.
ALTER TABLE pipeline_runs ADD COLUMN deadline_at INTEGER;
ALTER TABLE pipeline_runs ADD COLUMN deadline_state TEXT;
ALTER TABLE pipeline_runs ADD COLUMN forecast_at INTEGER;
CREATE INDEX pipeline_runs_by_end ON pipeline_runs(data_interval_end);

-- The alert outbox: one row per (event, channel). The UNIQUE key is what makes an alert go
-- out once however many processes observe the event; a row is claimed by the process that
-- delivers it, and a pending row whose claim lapsed is delivered by the next scheduler.
CREATE TABLE alerts (
    id            INTEGER PRIMARY KEY,
    event_key     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    pipeline      TEXT NOT NULL,
    run_id        TEXT,
    task_id       TEXT,
    try_number    INTEGER,
    payload       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER,
    claimed_by    TEXT,
    claimed_until INTEGER,
    UNIQUE (event_key, channel)
);
CREATE INDEX alerts_by_pipeline ON alerts(pipeline, channel, id);
CREATE INDEX alerts_pending ON alerts(status) WHERE status = 'pending';
