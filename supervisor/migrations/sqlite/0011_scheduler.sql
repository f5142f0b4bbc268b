-- Schema 11 (SQLite): the scheduler's state (issue 8). Keep in step with the PostgreSQL file.
-- Who fires the cluster's jobs, until when: one row, renewed every second by the leader.
CREATE TABLE scheduler_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT   NOT NULL,  -- the server's name
    expires_at BIGINT NOT NULL   -- Unix ms
);
-- Per job: its next due time, claimed by compare-and-set so that each due time fires once.
CREATE TABLE job_state (
    name     TEXT   PRIMARY KEY,
    schedule TEXT   NOT NULL,            -- fingerprint of the definition's schedule fields
    next_due BIGINT NOT NULL,            -- Unix ms; -1 = no further run
    fired    BIGINT NOT NULL DEFAULT 0   -- runs claimed under this schedule
);
-- Recent runs, per job (the last 100 are kept).
CREATE TABLE job_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job         TEXT   NOT NULL,
    trigger     TEXT   NOT NULL,  -- schedule | manual
    due         BIGINT,           -- Unix ms the run was due (schedule)
    started     BIGINT NOT NULL,  -- Unix ms
    server      TEXT   NOT NULL,
    duration_ms BIGINT,
    outcome     TEXT   NOT NULL,  -- ok | error | skipped
    error       TEXT
);
CREATE INDEX job_runs_by_job ON job_runs (job, id);
