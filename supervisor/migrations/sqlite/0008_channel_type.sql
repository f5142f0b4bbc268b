-- Schema 8 (SQLite): a channel's type (rest | jsonrpc) and, for JSON-RPC, the services it may
-- call (a JSON list of names; [] = any deployed service). A REST channel keeps its one
-- service in `service`; a JSON-RPC channel stores '' there. Keep in step with the PostgreSQL file.
ALTER TABLE channels ADD COLUMN channel_type TEXT NOT NULL DEFAULT 'rest';
ALTER TABLE channels ADD COLUMN services TEXT NOT NULL DEFAULT '[]';
