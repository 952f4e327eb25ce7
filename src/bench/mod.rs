//! The engine of `kvbench`, the closed-loop load generator (see `src/bin/kvbench.rs` for the
//! command line and `bench/` for the scripts that drive it).
//!
//! - [`workload`]: key names, deterministic values (derived from seed, key and version so a
//!   reader can check them) and the random generator.
//! - [`protocol`]: GET/SET in the line protocol, memcached ASCII and Redis RESP; encoders into
//!   reused buffers and in-place reply parsers.
//! - [`runner`]: one thread per connection, pipelined batches, latency histograms
//!   (`hdrhistogram`), prefill and verification passes.

pub mod protocol;
pub mod runner;
pub mod workload;
