//! Outgoing AMQP connections (docs/CONNECTORS.md) and the connect step shared with the
//! AMQP channels.

pub mod connect;
