-- Oxbus config store, schema 1 (SQLite). Keep in step with ../postgres/0001_initial.sql.

-- One row: the monotonic config version every change bumps.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- Every deployed version of every service module; one active row per module at most.
CREATE TABLE service_modules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    source      TEXT    NOT NULL,
    source_hash TEXT    NOT NULL,
    deployed_by TEXT    NOT NULL,
    deployed_at BIGINT  NOT NULL,  -- Unix ms
    active      BOOLEAN NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX service_modules_active ON service_modules (name) WHERE active;

CREATE TABLE channels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    url_path    TEXT    NOT NULL,
    methods     TEXT    NOT NULL,  -- JSON list of verbs; [] = any
    service     TEXT    NOT NULL,
    data_format TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
