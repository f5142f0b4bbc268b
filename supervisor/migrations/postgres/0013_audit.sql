-- Schema 13 (PostgreSQL): the audit log (issue 18). Keep in step with the SQLite file.
-- One row per admin change (or refused change): who made it, when, on which server, to
-- what, and a digest of the object before and after (never a secret's value).
CREATE TABLE audit_log (
    id            BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,  -- Unix ms
    server        TEXT   NOT NULL,  -- the server the change went through
    who           TEXT   NOT NULL,  -- identity name (root, a token's name, pickup)
    action        TEXT   NOT NULL,  -- create | update | delete | deploy | rollback | ...
    kind          TEXT   NOT NULL,  -- module | channel | secret | security | cache | job | ...
    name          TEXT   NOT NULL,  -- the object's name ('' when the change has none)
    before_digest TEXT,             -- SHA-256 (hex) of the stored object before; NULL: none
    after_digest  TEXT,             -- ... and after
    cid           TEXT,
    detail        TEXT   NOT NULL   -- a small JSON object
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_object ON audit_log (kind, name, id);
CREATE INDEX audit_log_who ON audit_log (who, id);
