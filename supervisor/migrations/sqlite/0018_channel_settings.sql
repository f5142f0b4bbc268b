-- Schema 18 (SQLite): a channel's type-specific settings as JSON (a WebSocket channel's
-- model::websocket::WsSettings; NULL for the other types). Keep in step with the PostgreSQL file.
ALTER TABLE channels ADD COLUMN settings TEXT;
