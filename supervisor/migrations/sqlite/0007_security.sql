-- Schema 7 (sqlite): security definitions (issue 6) and what a channel checks before its
-- service runs. Keep in step with the other engine's file.
CREATE TABLE security_defs (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of gate::SecurityDef; secret material sealed only
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
ALTER TABLE channels ADD COLUMN security TEXT;
ALTER TABLE channels ADD COLUMN allow_from TEXT NOT NULL DEFAULT '[]';
ALTER TABLE channels ADD COLUMN rate_limit TEXT;
