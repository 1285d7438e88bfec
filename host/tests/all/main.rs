//! The host's integration tests, one binary (see STYLE.md).
//!
//! | module | what it checks |
//! | --- | --- |
//! | `runtime` | loading components, rejecting bad ones, the sandbox, traps, deadlines, memory, snapshot/restore through WebAssembly |
//! | `conformance` | every first-party plugin, built to WebAssembly, against an independent reference on seeded data |
//! | `cli` | `tickfold check` and `tickfold exec` as a user runs them |
//! | `author` | a plugin author's workflow: `cargo component new`, the SDK, build, check, exec |
//! | `kafka` | against a real broker (tansu): `tickfold produce`, read back partition by partition |
//! | `end_to_end` | `tickfold run` against tansu, InfluxDB 1.x and the Parquet archive: what InfluxDB and the archive hold, against the references; dead letters |
//! | `influx` | the InfluxDB sink against real servers (InfluxDB 1.6 over v1, VictoriaMetrics over v2): every value read back, a late server, rewrites |
//! | `metrics` | `tickfold run`'s `/metrics` scraped by a real Prometheus: records read and dead letters as Prometheus's query API sees them, then SIGTERM |
//! | `pipeline` | the streaming host over a real broker: partitions on 2 workers, watermarks, dead letters, the DAG against the references |
//! | `deploy` | plugins deployed, upgraded and removed through the admin API while `tickfold run` reads a live topic; rejections; a restart |
//! | `dashboards` | every query of the market dashboard against a real InfluxDB; the compose stack's configuration |
//! | `recovery` | SIGKILL at random moments and a damaged checkpoint: InfluxDB and the archive equal an uninterrupted run's |
//! | `faults` | a full archive disk, a broker crash, an InfluxDB outage and a SIGTERM in one run: nothing lost or doubled |
//!
//! `support` builds the plugins once per run (scripts/build-plugins.sh),
//! generates seeded data, and starts real services (tansu, influxd,
//! victoria-metrics, prometheus) on free loopback ports.

mod author;
mod cli;
mod conformance;
mod dashboards;
mod deploy;
mod end_to_end;
mod faults;
mod influx;
mod kafka;
mod metrics;
mod pipeline;
mod recovery;
mod runtime;
mod support;
