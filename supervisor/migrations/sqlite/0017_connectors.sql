-- Schema 17 (SQLite): messaging connectors (issue 21): AMQP and MQTT channels (inbound), AMQP,
-- MQTT and Redis outgoing connections; credentials only sealed in the JSON. Keep in step with
-- the PostgreSQL file.
CREATE TABLE inbound_amqp (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::amqp::AmqpChannel
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE inbound_mqtt (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::mqtt::MqttChannel
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE outgoing_amqp (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::amqp::AmqpConn
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE outgoing_mqtt (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::mqtt::MqttConn
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
CREATE TABLE outgoing_redis (
    name       TEXT   PRIMARY KEY,
    definition TEXT   NOT NULL,  -- JSON of model::redis::RedisConn
    updated_by TEXT   NOT NULL,
    updated_at BIGINT NOT NULL   -- Unix ms
);
