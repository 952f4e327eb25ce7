//! textkv: a durable key-value server whose database is a plain text file.
//!
//! - [`store`]: the engine — in-memory index, append-only `database.txt`, one writer thread
//!   with group commit, recovery and compaction.
//! - [`protocol`]: the wire protocols that front the engine.
//! - [`server`]: listeners, connection threads, limits and graceful shutdown.
//! - [`client`]: a small blocking client for the line protocol (used by `kvclient`, tests).
//! - [`bench`]: the engine of `kvbench`, the load generator (line, memcached and RESP).
//! - [`auth`] and [`tls`]: users, roles and logins (`--users`); TLS on every listener.

pub mod auth;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod escape;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;
