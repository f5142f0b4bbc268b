//! The workers' lifecycle: the supervisor event loop (signals, exits, readiness, recycling,
//! rolling restarts), the worker handshake, the pool the HTTP side dispatches into, the
//! workers' IPC connections (`connection`), spawning processes, the embedded Python package,
//! systemd's notify protocol and the reload status socket. Lifecycle state is changed only by the event loop. It names no subsystem above it
//! (edge, admin, cluster, deploy, scheduler, boot): what it needs from them (loading the
//! deployed modules, a hook at stop) boot hands it as a trait object or a closure.

pub mod connection;
pub mod handshake;
pub mod ops;
pub mod pool;
pub mod process;
pub mod python;
pub mod reload;
pub mod sdnotify;
pub mod supervisor;
