-- Schema 9 (PostgreSQL): cache definitions (issue 7). The built-in `default` cache exists
-- without a row; a row named default changes its settings. Keep in step with the SQLite file.
CREATE TABLE cache_defs (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of cache::CacheDef
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
