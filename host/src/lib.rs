//! Tickfold: a stream-processing host for market data.
//!
//! Follow one trade through the modules in the order it travels:
//!
//! 1. [`source`] reads samples: files today (`tickfold exec`, `replay`),
//!    Kafka partitions next.
//! 2. [`decode`] turns a record's JSON (Finnhub's shape or flat) into
//!    trades, or into a reason for the dead-letter topic.
//! 3. [`keys`] interns each symbol to a dense `u32`.
//! 4. [`dataflow`] runs the timely dataflow: a source that decides lateness
//!    and sends chunks at its watermark, an exchange by key, and each
//!    worker's plugin chain advancing with the frontier.
//! 5. [`exec`] is one plugin chain: batches in, watermarks, outputs routed
//!    from stage to stage (also `tickfold exec`, single-threaded).
//! 6. [`plugin`] runs WebAssembly stream functions over columnar batches in
//!    a sandbox.
//! 7. [`sink`] writes the outputs to InfluxDB and the Parquet archive.
//! 8. [`metrics`] serves the run's counters to Prometheus (`[metrics]`).
//! 9. [`cli`] is the `tickfold` command.
//!
//! [`synthetic`] makes seeded market data for demos, tests and benchmarks.

pub mod api;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod client;
pub mod config;
pub mod dataflow;
pub mod decode;
pub mod deploy;
pub mod exec;
pub mod host;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod plugin;
pub mod produce;
pub mod sink;
pub mod source;
pub mod synthetic;
