-- Schema 3 (PostgreSQL): the servers that share this store (at most 3; a SQLite store has one).
-- Keep in step with ../sqlite/0003_servers.sql.
CREATE TABLE servers (
    name          TEXT   PRIMARY KEY,
    http_address  TEXT   NOT NULL,
    oxbus_version TEXT   NOT NULL,
    pid           BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,  -- Unix ms
    last_seen     BIGINT NOT NULL   -- Unix ms, refreshed by the server's heartbeat
);
