-- dbt node results of each try, read from its run_results.json.
CREATE TABLE dbt_nodes (
    id             INTEGER PRIMARY KEY,
    run            INTEGER NOT NULL REFERENCES pipeline_runs(id),
    ti             INTEGER NOT NULL REFERENCES task_instances(id),
    try_number     INTEGER NOT NULL,
    task_id        TEXT NOT NULL,
    unique_id      TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    status         TEXT NOT NULL,
    execution_time REAL,
    failures       INTEGER,
    rows_affected  INTEGER,
    message        TEXT,
    invocation_id  TEXT
);
CREATE INDEX dbt_nodes_by_run ON dbt_nodes(run);
