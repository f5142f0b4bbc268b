//! The Oxbus server ("supervisor"): owns every socket, supervises the Python workers and
//! dispatches each invocation to one of them over the IPC protocol of `oxbus-ipc`.
//!
//! One folder per concern (ARCHITECTURE.md has the map and the layer rules):
//! - [`edge`]: the HTTP edge — head checks, routing table, gate, JSON-RPC, OpenAPI.
//! - [`lifecycle`]: the supervisor event loop, the worker pool, processes, embedded Python.
//! - [`deploy`]: hot deployment and deploy-on-save.
//! - [`cluster`]: the cluster bus, following the store (`sync`), the on-disk snapshot.
//! - [`scheduler`]: job definitions and the scheduler runtime.
//! - [`store`]: the config store (every SQL statement of the crate).
//! - [`admin`]: the admin API, one file per resource; config export/import.
//! - [`cli`]: the `oxbus` subcommands other than `server`.
//! - [`config`]: `server.toml` settings; [`secrets`]: sealing secrets under a key file.
//! - [`boot`]: the only module that knows every subsystem: builds the handles, wires them.
//! - [`node`]: this server's own state (name, readiness, store health, applied version).
//! - [`random`]: small random values from the OS.
//! - [`trace`]: W3C trace context (`traceparent`): parsing, new trace and span ids.
//! - [`user_config`]: the user config services read (`user_config.get`), live by name.
//! - The named caches are their own crate, `oxbus-cache`.

pub mod admin;
pub mod boot;
pub mod cid;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod edge;
pub mod files;
pub mod inbound;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod node;
pub mod outgoing;
pub mod pubsub;
pub mod random;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod trace;
pub mod user_config;
pub mod wsx;
