-- Schema 5 (PostgreSQL): the address other servers dial for the cluster bus (NULL: no bus).
-- Keep in step with ../sqlite/0005_bus_address.sql.
ALTER TABLE servers ADD COLUMN bus_address TEXT;
