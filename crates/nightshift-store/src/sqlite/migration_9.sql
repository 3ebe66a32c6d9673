-- Who did what through the web UI and API: every action, allowed or refused.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    client   TEXT NOT NULL,
    outcome  TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
