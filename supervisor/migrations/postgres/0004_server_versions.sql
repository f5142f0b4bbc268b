-- Schema 4 (PostgreSQL): the config version each server has applied (for `oxbus cluster status`).
-- Keep in step with ../sqlite/0004_server_versions.sql.
ALTER TABLE servers ADD COLUMN config_version BIGINT NOT NULL DEFAULT 0;
