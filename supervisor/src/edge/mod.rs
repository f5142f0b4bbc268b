//! The HTTP edge: everything between a client's bytes and a call into the worker pool —
//! head checks, hyper, the routing table and the checks compiled with it (the gate),
//! JSON-RPC, the pub/sub REST API (through the broker), WebSocket upgrades (handed to
//! `wsx`), OpenAPI, client addresses behind
//! trusted proxies, correlation ids. It never touches the config store or the workers'
//! lifecycle.

pub mod conn;
pub mod forwarded;
pub mod gate;
pub mod head_gate;
pub mod http;
pub mod json_depth;
pub mod jsonrpc;
pub mod openapi;
pub mod pubsub;
pub mod router;
pub mod routes;
pub mod websocket;
