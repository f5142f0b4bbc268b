-- Schema 5 (SQLite): the address other servers dial for the cluster bus (NULL: no bus).
-- Keep in step with ../postgres/0005_bus_address.sql.
ALTER TABLE servers ADD COLUMN bus_address TEXT;
