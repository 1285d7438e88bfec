//! The host's integration tests, one binary (see STYLE.md).
//!
//! | module | what it checks |
//! | --- | --- |
//! | `runtime` | loading components, rejecting bad ones, the sandbox, traps, deadlines, memory, snapshot/restore through WebAssembly |
//! | `conformance` | every first-party plugin, built to WebAssembly, against an independent reference on seeded data |
//! | `cli` | `tickfold check` and `tickfold exec` as a user runs them |
//! | `author` | a plugin author's workflow: `cargo component new`, the SDK, build, check, exec |
//! | `kafka` | against a real broker (tansu): `tickfold produce`, read back partition by partition |
//! | `pipeline` | the streaming host over a real broker: partitions on 2 workers, watermarks, dead letters, the DAG against the references |
//!
//! `support` builds the plugins once per run (scripts/build-plugins.sh) and
//! generates seeded data.

mod author;
mod cli;
mod conformance;
mod kafka;
mod pipeline;
mod runtime;
mod support;
