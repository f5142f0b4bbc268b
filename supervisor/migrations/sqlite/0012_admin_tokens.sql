-- Schema 12 (SQLite): named admin API tokens (issue 18). Keep in step with the PostgreSQL file.
-- The token itself is never stored: only the lower-case hex SHA-256 of it, looked up on every
-- admin request. Not part of the config version, export or import.
CREATE TABLE admin_tokens (
    name         TEXT   PRIMARY KEY,
    role         TEXT   NOT NULL,         -- admin | deployer | viewer
    token_hash   TEXT   NOT NULL UNIQUE,  -- hex SHA-256 of the token
    created_at   BIGINT NOT NULL,         -- Unix ms
    created_by   TEXT   NOT NULL,         -- the identity that created it
    last_used_at BIGINT                   -- Unix ms, to the minute; NULL = never used
);
