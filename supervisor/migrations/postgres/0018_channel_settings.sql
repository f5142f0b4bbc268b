-- Schema 18 (PostgreSQL): a channel's type-specific settings as JSON (a WebSocket channel's
-- model::websocket::WsSettings; NULL for the other types). Keep in step with the SQLite file.
ALTER TABLE channels ADD COLUMN settings TEXT;
