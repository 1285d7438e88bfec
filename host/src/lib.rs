//! Tickfold: a stream-processing host for market data.
//!
//! Follow one trade through the modules in the order it travels:
//!
//! 1. [`source`] reads samples (Kafka partitions; files for replay and
//!    `tickfold exec`).
//! 2. [`keys`] interns each symbol to a dense `u32`.
//! 3. [`dataflow`] runs the timely dataflow: a source that decides lateness
//!    and sends chunks at its watermark, an exchange by key, and each
//!    worker's plugin chain advancing with the frontier.
//! 4. [`exec`] is one plugin chain: batches in, watermarks, outputs routed
//!    from stage to stage (also `tickfold exec`, single-threaded).
//! 5. [`plugin`] runs WebAssembly stream functions over columnar batches in
//!    a sandbox.
//! 6. [`cli`] is the `tickfold` command.
//!
//! [`synthetic`] makes seeded market data for demos, tests and benchmarks.

pub mod cli;
pub mod dataflow;
pub mod exec;
pub mod keys;
pub mod plugin;
pub mod source;
pub mod synthetic;
