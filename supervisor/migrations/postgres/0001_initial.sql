-- Oxbus config store, schema 1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql.

CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

CREATE TABLE service_modules (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    source      TEXT    NOT NULL,
    source_hash TEXT    NOT NULL,
    deployed_by TEXT    NOT NULL,
    deployed_at BIGINT  NOT NULL,
    active      BOOLEAN NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX service_modules_active ON service_modules (name) WHERE active;

CREATE TABLE channels (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    url_path    TEXT    NOT NULL,
    methods     TEXT    NOT NULL,
    service     TEXT    NOT NULL,
    data_format TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
