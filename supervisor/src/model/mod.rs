//! The config objects as plain data: channels, security definitions, scheduler jobs (the
//! cache definition is `oxbus_cache::CacheDef`), each with its validation. No I/O here: no
//! store, no network, no files, no clock but what a caller passes in. `object`: what the
//! JSON-defined named objects (security, cache, job definitions) share; `cache`: a cache
//! definition from an operator's JSON; `outgoing`: outgoing REST and SQL connections;
//! `secret_access`: which services may read a secret; `pubsub`: topics, subscriptions,
//! endpoints and a message; `amqp`, `mqtt`, `redis`: the messaging connectors' channels and
//! outgoing connections; `websocket`: a WebSocket channel's settings;
//! `user_config`: operator-provided settings services read (`self.user_config`);
//! `document`: the config export/import document.

pub mod amqp;
pub mod cache;
pub mod channel;
pub mod document;
pub mod files;
pub mod job;
pub mod mqtt;
pub mod net;
pub mod object;
pub mod outgoing;
pub mod pubsub;
pub mod redis;
pub mod secret_access;
pub mod security;
pub mod user_config;
pub mod websocket;
