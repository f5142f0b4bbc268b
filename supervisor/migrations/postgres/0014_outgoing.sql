-- Schema 14 (PostgreSQL): outgoing REST and SQL connections (issue 19), credentials only sealed
-- in the JSON. Keep in step with the SQLite file.
CREATE TABLE outgoing_rest (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::outgoing::RestConn
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE outgoing_sql (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::outgoing::SqlConn
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
