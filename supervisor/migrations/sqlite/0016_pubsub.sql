-- Schema 16 (SQLite): pub/sub (issue 20, docs/PUBSUB.md). Keep in step with the PostgreSQL file.
-- Definitions: the generic object tables (model::pubsub).
CREATE TABLE pubsub_topics (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::pubsub::Topic
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE pubsub_subs (
    name       TEXT   PRIMARY KEY,  -- the sub_key
    definition TEXT   NOT NULL,     -- JSON of model::pubsub::Subscription
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL      -- Unix ms
);
CREATE TABLE pubsub_endpoints (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::pubsub::Endpoint
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
-- Each topic's log position: the row is locked by every publish transaction that appends
-- to the topic, so per topic seq order is commit order (a reader past seq N never sees
-- N-1 commit later).
CREATE TABLE pubsub_topic_seq (
    topic    TEXT   PRIMARY KEY,
    last_seq BIGINT NOT NULL     -- the last seq appended; 0 before the first
);
-- The GD message log, append-only; rows leave by rotation (docs/PUBSUB.md "Storage").
CREATE TABLE pubsub_msg (
    part          SMALLINT NOT NULL,  -- the generation it was written in (0-3)
    topic         TEXT     NOT NULL,
    seq           BIGINT   NOT NULL,
    msg_id        TEXT     NOT NULL,
    pub_time      BIGINT   NOT NULL,  -- Unix ms
    expires_at    BIGINT,             -- Unix ms; NULL: never
    priority      SMALLINT NOT NULL,
    mime_type     TEXT     NOT NULL,
    correl_id     TEXT,
    in_reply_to   TEXT,
    ext_client_id TEXT,
    published_by  TEXT     NOT NULL,
    data          BLOB     NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX pubsub_msg_part ON pubsub_msg (part);
-- Which partition publishes write to, and when it last changed.
CREATE TABLE pubsub_parts (
    id         INTEGER  PRIMARY KEY CHECK (id = 1),
    current    SMALLINT NOT NULL,
    rotated_at BIGINT   NOT NULL  -- Unix ms
);
INSERT INTO pubsub_parts (id, current, rotated_at) VALUES (1, 0, 0);
-- A subscription's place in one topic's log: every message of the topic with seq <=
-- acked_upto is done with (acked, expired, overflowed or dead-lettered); state is JSON of
-- what is done above it and the attempts of messages that failed (bounded by the delivery
-- window).
CREATE TABLE pubsub_cursor (
    sub_key    TEXT   NOT NULL,
    topic      TEXT   NOT NULL,
    acked_upto BIGINT NOT NULL,
    state      TEXT   NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL,  -- Unix ms
    PRIMARY KEY (sub_key, topic)
);
CREATE INDEX pubsub_cursor_topic ON pubsub_cursor (topic, acked_upto);
-- Which server delivers a subscription (and runs the rotation: key '#rotate'), until when.
CREATE TABLE pubsub_lease (
    sub_key    TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL   -- Unix ms
);
-- A subscription's dead letters: messages that failed retry.max_attempts deliveries, kept
-- until purged or requeued (requeued = 1: back in the subscription's queue until acked).
CREATE TABLE pubsub_dead (
    sub_key       TEXT     NOT NULL,
    msg_id        TEXT     NOT NULL,
    topic         TEXT     NOT NULL,
    seq           BIGINT   NOT NULL,
    pub_time      BIGINT   NOT NULL,
    expires_at    BIGINT,
    priority      SMALLINT NOT NULL,
    mime_type     TEXT     NOT NULL,
    correl_id     TEXT,
    in_reply_to   TEXT,
    ext_client_id TEXT,
    published_by  TEXT     NOT NULL,
    data          BLOB    NOT NULL,
    attempts      INTEGER  NOT NULL,
    reason        TEXT     NOT NULL,
    dead_at       BIGINT   NOT NULL,  -- Unix ms
    requeued      SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (sub_key, msg_id)
);
