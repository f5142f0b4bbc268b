//! The workers' lifecycle: the supervisor event loop (signals, exits, readiness, recycling,
//! rolling restarts), the pool the HTTP side dispatches into, spawning processes, the
//! embedded Python package, systemd's notify protocol and the reload status socket.
//! Lifecycle state is changed only by the event loop.

pub mod handshake;
pub mod pool;
pub mod process;
pub mod python;
pub mod reload;
pub mod sdnotify;
pub mod supervisor;
