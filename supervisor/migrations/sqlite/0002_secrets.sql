-- Schema 2 (SQLite): secrets, sealed with the key outside the store (see src/secrets.rs).
-- Keep in step with ../postgres/0002_secrets.sql.
CREATE TABLE secrets (
    name       TEXT   PRIMARY KEY,
    sealed     TEXT   NOT NULL,  -- oxbus1:<key id>:<nonce>:<ciphertext+tag>, never plaintext
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
