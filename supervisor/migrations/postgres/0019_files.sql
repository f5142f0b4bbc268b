-- Schema 19 (PostgreSQL): file-transfer channels (docs/FILES.md). Keep in step with the SQLite
-- file.
CREATE TABLE inbound_file (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::files::FileChannel
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
-- The one server that takes a channel's files. epoch grows with every new holding (a
-- restart of the same server too), so a file taken under an older one is known as a
-- redelivery, and an old holder's late outcome is refused.
CREATE TABLE file_lease (
    channel    TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL   -- Unix ms
);
-- One row per file version taken and not yet moved away: state 'taken' (handed to the
-- service), 'done' or 'failed' (committed before the file is moved, so a stop between the two
-- moves it without a second call). version: inode, mtime (ns) and size.
CREATE TABLE file_taken (
    channel  TEXT   NOT NULL,
    path     TEXT   NOT NULL,
    version  TEXT   NOT NULL,
    state    TEXT   NOT NULL,
    epoch    BIGINT NOT NULL,
    holder   TEXT   NOT NULL,
    reason   TEXT,
    taken_at BIGINT NOT NULL,   -- Unix ms
    PRIMARY KEY (channel, path, version)
);
