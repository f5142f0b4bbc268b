-- Schema 20 (PostgreSQL): user config, the operator settings services read as
-- self.user_config.<name> (docs/USER_CONFIG.md). Keep in step with the SQLite file.
CREATE TABLE user_config (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::user_config::UserConfig
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
