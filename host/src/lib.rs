//! Tickfold: a stream-processing host for market data.
//!
//! Follow one trade through the modules in the order it travels:
//!
//! 1. [`source`] reads samples (Kafka partitions; files for replay and
//!    `tickfold exec`).
//! 2. [`keys`] interns each symbol to a dense `u32`.
//! 3. [`plugin`] runs WebAssembly stream functions over columnar batches in
//!    a sandbox.
//! 4. [`exec`] drives a chain of plugins over a file, the way the dataflow
//!    will over a stream: batches in, watermarks, outputs out.
//! 5. [`cli`] is the `tickfold` command.
//!
//! [`synthetic`] makes seeded market data for demos, tests and benchmarks.

pub mod cli;
pub mod dataflow;
pub mod exec;
pub mod keys;
pub mod plugin;
pub mod source;
pub mod synthetic;
