-- Schema 21 (SQLite): a REST or JSON-RPC channel's params_priority (Zato's channel setting:
-- channel-params-over-msg or msg-over-channel-params; NULL: the service's default). Keep in
-- step with the PostgreSQL file. (Number 20 is left to the user_config objects.)
ALTER TABLE channels ADD COLUMN params_priority TEXT;
