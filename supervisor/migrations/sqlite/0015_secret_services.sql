-- Schema 15 (SQLite): which services may read a secret (`self.secrets[name]`, issue 19).
-- A JSON list of service-name patterns (exact names or globs with `*`); '[]' (every secret
-- stored before this schema) means no service may. Keep in step with the PostgreSQL file.
ALTER TABLE secrets ADD COLUMN services TEXT NOT NULL DEFAULT '[]';
