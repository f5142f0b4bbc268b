-- Schema 10 (SQLite): scheduler jobs (issue 8). Keep in step with the PostgreSQL file.
CREATE TABLE jobs (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of jobs::JobDef (start_date always set)
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
