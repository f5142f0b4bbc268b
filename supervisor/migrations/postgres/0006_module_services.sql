-- Schema 6 (PostgreSQL): which deployed module defines each service, so that a deploy through one
-- server cannot store a service another module already defines (two deploys through two
-- servers at once each pass their own worker's check). Keep in step with the SQLite file.
CREATE TABLE module_services (
    service TEXT PRIMARY KEY,
    module  TEXT NOT NULL
);
CREATE INDEX module_services_module ON module_services (module);
