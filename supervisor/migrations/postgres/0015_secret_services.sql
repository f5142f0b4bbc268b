-- Schema 15 (PostgreSQL): which services may read a secret (`self.secrets[name]`, issue 19).
-- A JSON list of service-name patterns (exact names or globs with `*`); '[]' (every secret
-- stored before this schema) means no service may. Keep in step with the SQLite file.
ALTER TABLE secrets ADD COLUMN services TEXT NOT NULL DEFAULT '[]';
