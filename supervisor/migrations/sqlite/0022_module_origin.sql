-- Schema 22 (SQLite): where a deployed module's source came from, as its deployer named it
-- (the absolute path of the file `oxbus deploy` read, the pickup directory's file): the
-- workers compile the module under that file name and set its __file__, so tracebacks and
-- resources next to the code name the real file. NULL: not known (a version deployed before
-- this schema, or through the admin API without one); the workers then use
-- <oxbus:NAME@vVERSION>. Keep in step with the PostgreSQL file.
ALTER TABLE service_modules ADD COLUMN origin TEXT;
