//! The `/metrics` endpoint of `tickfold run`: the host's counters in the
//! Prometheus (OpenMetrics) text format, at the address `[metrics] listen`
//! names.
//!
//! Nothing here runs on the hot path. The workers keep counting into the
//! atomics they already have ([`RunCounters`], the InfluxDB sink's
//! counters, the archive writers' [`ArchiveStats`]); a scrape reads them
//! through [`HostCollector`] and encodes what it read. The server is axum
//! on a current-thread tokio runtime of its own, on a thread of its own,
//! so the dataflow never depends on tokio and a slow scraper never holds a
//! worker back.
//!
//! Per partition: position, high watermark and lag. Per plugin (stage of
//! the DAG): samples in and out, failed calls, and call times.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;

use crate::dataflow::RunCounters;
use crate::exec::{CALL_BUCKETS_US, StageStats};
use crate::sink::archive::ArchiveStats;
use crate::sink::influx::{InfluxSink, WRITE_BUCKETS_MS};

/// The default address of the endpoint (Prometheus's port registry gives
/// 9464 to OpenTelemetry-style exporters; it is free on most hosts).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The prefix of every metric's name.
pub const PREFIX: &str = "tickfold";

/// The `[metrics]` table: the endpoint is served only when it is present.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, `ip:port`. Use `0.0.0.0:9464` for a
    /// scraper on another host.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid default address")
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: default_listen() }
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is taken, not local, or not allowed.
    #[error(
        "cannot serve /metrics on {addr}: {source} (set another address in `[metrics] listen` of the config, \
         or TICKFOLD__METRICS__LISTEN)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The endpoint's thread or runtime could not start.
    #[error("cannot start the /metrics server: {0}")]
    Start(std::io::Error),
}

/// What a scrape reads: the run's counters, and each sink that is on.
#[derive(Clone)]
pub struct Sources {
    /// The dataflow's and the sources' counts.
    pub counters: Arc<RunCounters>,
    /// The InfluxDB sink, when configured.
    pub influx: Option<Arc<InfluxSink>>,
    /// Each archive writer's counts (one per worker), when configured.
    pub archive: Option<Arc<Mutex<Vec<ArchiveStats>>>>,
    /// Each stage of the plugin DAG: its name and its counts, read at
    /// scrape time (deploys change the list).
    pub plugins: PluginList,
}

/// Reads the DAG's stages and their counts.
pub type PluginList = Arc<dyn Fn() -> Vec<(String, Arc<StageStats>)> + Send + Sync>;

/// A fixed list of stages.
pub fn fixed_plugins(plugins: Vec<(String, Arc<StageStats>)>) -> PluginList {
    Arc::new(move || plugins.clone())
}

/// Reads [`Sources`] at scrape time and encodes every metric.
pub struct HostCollector {
    sources: Sources,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCollector")
            .field("influx", &self.sources.influx.is_some())
            .field("archive", &self.sources.archive.is_some())
            .finish()
    }
}

/// Encodes one unlabelled counter (the encoder adds `_total`).
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

/// Encodes one unlabelled gauge.
fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Sources { counters, influx, archive, plugins } = &self.sources;
        let plugins = plugins();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);

        let mut build =
            e.encode_descriptor("build_info", "The running tickfold's version.", None, MetricType::Gauge)?;
        ConstGauge::new(1i64).encode(build.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;

        let s = &counters.source;
        counter(&mut e, "records_read", "Kafka records read, over all partitions.", None, load(&s.records))?;
        counter(&mut e, "trades", "Trades decoded and sent on.", None, load(&s.trades))?;
        counter(&mut e, "records_malformed", "Records that could not be decoded.", None, load(&s.malformed))?;
        counter(&mut e, "trades_late", "Trades below their partition's watermark.", None, load(&s.late))?;
        counter(
            &mut e,
            "records_dead_lettered",
            "Records sent to the dead-letter topic (malformed, and late under the dead-letter policy).",
            None,
            load(&s.dead_lettered),
        )?;
        counter(&mut e, "samples_out", "Output samples written to the sinks.", None, load(&counters.samples_out))?;
        let partitions = s.partitions.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (name, help, value) in [
            (
                "partition_position",
                "The next offset the host will read, per partition.",
                (|p: &crate::source::kafka::PartitionProgress| p.position) as fn(&_) -> Option<i64>,
            ),
            (
                "partition_high_watermark",
                "The partition's end as the broker last reported it (every second).",
                |p: &crate::source::kafka::PartitionProgress| p.high_watermark,
            ),
            ("partition_lag", "Records in the partition the host has not read yet.", |p| p.lag()),
        ] {
            let known: Vec<(String, i64)> =
                partitions.iter().filter_map(|(id, p)| Some((id.to_string(), value(p)?))).collect();
            if known.is_empty() {
                continue;
            }
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (id, v) in known {
                ConstGauge::new(v).encode(family.encode_family(&[("partition", id.as_str())])?)?;
            }
        }
        gauge(
            &mut e,
            "rows_in_flight",
            "Rows sent by the sources and not yet through a plugin chain.",
            None,
            counters.in_flight.load(Ordering::Relaxed),
        )?;

        // The watermark is `i64::MIN` until every worker has one and
        // `i64::MAX` at the end of the input: neither is a time, so the
        // gauges are left out then (absent, not a made-up value).
        let watermark_ms = counters.watermark.load(Ordering::Relaxed);
        if watermark_ms != i64::MIN && watermark_ms != i64::MAX {
            let watermark = watermark_ms as f64 / 1e3;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            gauge(
                &mut e,
                "watermark_timestamp",
                "The lowest watermark any worker has reached, as Unix time.",
                Some(&Unit::Seconds),
                watermark,
            )?;
            gauge(
                &mut e,
                "watermark_age",
                "Wall-clock time now minus the watermark: how far event time lags behind.",
                Some(&Unit::Seconds),
                now - watermark,
            )?;
        }

        // Per stage of the DAG (label: the stage's name, unique in the DAG).
        if !plugins.is_empty() {
            for (name, help, get) in [
                (
                    "plugin_samples_in",
                    "Samples handed to the plugin.",
                    (|p: &StageStats| &p.samples_in) as fn(&StageStats) -> &std::sync::atomic::AtomicU64,
                ),
                ("plugin_samples_out", "Samples the plugin wrote.", |p: &StageStats| &p.samples_out),
                (
                    "plugin_failures",
                    "Calls into the plugin that failed (traps, deadlines, memory, errors).",
                    |p: &StageStats| &p.failures,
                ),
            ] {
                let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (plugin, stats) in &plugins {
                    let labels = [("plugin", plugin.as_str())];
                    ConstCounter::new(load(get(stats))).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = e.encode_descriptor(
                "plugin_call_duration",
                "Time per call into the plugin (process and on-watermark).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (plugin, stats) in &plugins {
                let labels = [("plugin", plugin.as_str())];
                // Per-bucket counts: the encoder makes them cumulative, and
                // reads f64::MAX as +Inf.
                let buckets: Vec<(f64, u64)> = stats
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(i, count)| (CALL_BUCKETS_US.get(i).map_or(f64::MAX, |&us| us as f64 / 1e6), load(count)))
                    .collect();
                let count = buckets.iter().map(|b| b.1).sum();
                let sum = load(&stats.call_ns) as f64 / 1e9;
                let mut metric = family.encode_family(&labels)?;
                metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        let c = &counters.checkpoints;
        let taken = load(&c.taken);
        if taken > 0 || load(&c.abandoned) > 0 {
            counter(&mut e, "checkpoints", "Checkpoints written.", None, taken)?;
            counter(
                &mut e,
                "checkpoints_abandoned",
                "Checkpoints given up (the workers did not reach the cut in time).",
                None,
                load(&c.abandoned),
            )?;
        }
        if taken > 0 {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            let last = load(&c.last_at_ms) as f64 / 1e3;
            gauge(
                &mut e,
                "checkpoint_last_timestamp",
                "When the last checkpoint was taken.",
                Some(&Unit::Seconds),
                last,
            )?;
            gauge(
                &mut e,
                "checkpoint_age",
                "Wall-clock time since the last checkpoint.",
                Some(&Unit::Seconds),
                now - last,
            )?;
            gauge(
                &mut e,
                "checkpoint_last_size",
                "The last checkpoint's file.",
                Some(&Unit::Bytes),
                load(&c.last_bytes),
            )?;
            gauge(
                &mut e,
                "checkpoint_last_pause",
                "How long the last checkpoint paused the sources.",
                Some(&Unit::Seconds),
                load(&c.last_pause_ns) as f64 / 1e9,
            )?;
            gauge(
                &mut e,
                "checkpoint_last_duration",
                "How long the last checkpoint took, sinks flushed and file written.",
                Some(&Unit::Seconds),
                load(&c.last_total_ns) as f64 / 1e9,
            )?;
        }

        let t = &counters.times;
        let mut stages = e.encode_descriptor(
            "worker",
            "Worker time per stage, summed over workers (sinks is part of process, sink_wait part of sinks).",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for (stage, ns) in [
            ("source", &t.source_ns),
            ("process", &t.process_ns),
            ("sinks", &t.sinks_ns),
            ("sink_wait", &t.sink_wait_ns),
        ] {
            ConstCounter::new(load(ns) as f64 / 1e9).encode(stages.encode_family(&[("stage", stage)])?)?;
        }

        if let Some(influx) = influx {
            let i = influx.stats();
            counter(&mut e, "influx_points_written", "Points InfluxDB accepted.", None, i.points_written)?;
            counter(&mut e, "influx_batches_written", "Write requests InfluxDB accepted.", None, i.batches_written)?;
            counter(
                &mut e,
                "influx_sent",
                "Request bodies sent to InfluxDB (after gzip), every answered attempt.",
                Some(&Unit::Bytes),
                i.bytes_sent,
            )?;
            counter(&mut e, "influx_retries", "Failed InfluxDB writes that were retried.", None, i.retries)?;
            counter(
                &mut e,
                "influx_points_rejected",
                "Points InfluxDB refused (400) or too large to send (413); not retried.",
                None,
                i.points_rejected,
            )?;
            let mut skipped = e.encode_descriptor(
                "influx_points_skipped",
                "Points left out: no finite field (non_finite), or names or time line protocol cannot carry \
                 (unwritable).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in
                [("non_finite", i.points_skipped_non_finite), ("unwritable", i.points_skipped_unwritable)]
            {
                ConstCounter::new(n).encode(skipped.encode_family(&[("reason", reason)])?)?;
            }
            counter(
                &mut e,
                "influx_points_coalesced",
                "Points not posted: merged into a later point of the same series, symbol and time, as InfluxDB would \
                 have overwritten them.",
                None,
                i.points_coalesced,
            )?;
            gauge(
                &mut e,
                "influx_points_buffered",
                "Points handed to the InfluxDB sink and not yet written or rejected.",
                None,
                i.buffered_points,
            )?;
            gauge(
                &mut e,
                "influx_buffer_capacity_points",
                "The most points the InfluxDB sink buffers before the workers wait (back-pressure).",
                None,
                i.buffer_capacity,
            )?;
            let buckets: Vec<(f64, u64)> = i
                .write_buckets
                .iter()
                .enumerate()
                .map(|(b, &n)| (WRITE_BUCKETS_MS.get(b).map_or(f64::MAX, |&ms| ms as f64 / 1e3), n))
                .collect();
            let count = buckets.iter().map(|b| b.1).sum();
            let mut family = e.encode_descriptor(
                "influx_write_duration",
                "Time per answered InfluxDB write request (retried attempts each count).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            family.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                i.write_ns as f64 / 1e9,
                count,
                &buckets,
                None,
            )?;
        }

        if let Some(archive) = archive {
            let a = sum_archive(&archive.lock().unwrap_or_else(PoisonError::into_inner));
            counter(&mut e, "archive_rows_written", "Rows in Parquet files renamed into place.", None, a.rows_written)?;
            counter(&mut e, "archive_files_written", "Parquet files renamed into place.", None, a.files_written)?;
            counter(&mut e, "archive_written", "Bytes of those files.", Some(&Unit::Bytes), a.bytes_written)?;
            counter(
                &mut e,
                "archive_write_failures",
                "Parquet file writes that failed (a full disk, say) and are retried; the rows stay buffered.",
                None,
                a.failed_writes,
            )?;
            gauge(
                &mut e,
                "archive_rows_buffered",
                "Rows held in buckets the watermark has not closed yet.",
                None,
                a.buffered_rows,
            )?;
        }
        Ok(())
    }
}

/// The archive's counts over all workers.
pub fn sum_archive(per_worker: &[ArchiveStats]) -> ArchiveStats {
    per_worker.iter().fold(ArchiveStats::default(), |a, s| ArchiveStats {
        rows_written: a.rows_written + s.rows_written,
        files_written: a.files_written + s.files_written,
        bytes_written: a.bytes_written + s.bytes_written,
        buffered_rows: a.buffered_rows + s.buffered_rows,
        failed_writes: a.failed_writes + s.failed_writes,
    })
}

/// A registry holding the host's collector, metric names prefixed
/// `tickfold_`.
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(HostCollector { sources }));
    registry
}

/// The registry in the OpenMetrics text format, as a scrape gets it.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// The content type of [`render`]'s text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running endpoint; [`MetricsServer::stop`] ends it.
pub struct MetricsServer {
    server: crate::http::Server,
}

impl MetricsServer {
    /// Binds `config.listen` (here, so a bad address is an error before the
    /// run starts) and serves `/metrics` from a thread of its own.
    pub fn start(config: &MetricsConfig, sources: Sources) -> Result<MetricsServer, MetricsError> {
        let registry = Arc::new(registry(sources));
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render(&registry)) }
            }),
        );
        let server = crate::http::Server::start(config.listen, "metrics", app).map_err(|e| match e {
            crate::http::StartError::Bind(source) => MetricsError::Bind { addr: config.listen, source },
            crate::http::StartError::Start(e) => MetricsError::Start(e),
        })?;
        tracing::info!("serving Prometheus metrics on http://{}/metrics", server.addr());
        Ok(MetricsServer { server })
    }

    /// The address it listens on (the bound port when `listen` said 0).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops serving and waits for the thread, which lets go of the
    /// sources (the InfluxDB sink must have no other owner to close).
    pub fn stop(self) {
        self.server.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn known_counters() -> Arc<RunCounters> {
        let c = RunCounters::default();
        c.source.records.store(1_000, Ordering::Relaxed);
        c.source.trades.store(950, Ordering::Relaxed);
        c.source.malformed.store(30, Ordering::Relaxed);
        c.source.late.store(20, Ordering::Relaxed);
        c.source.dead_lettered.store(50, Ordering::Relaxed);
        c.samples_out.store(123, Ordering::Relaxed);
        c.in_flight.store(7, Ordering::Relaxed);
        c.times.source_ns.store(1_500_000_000, Ordering::Relaxed);
        c.times.sink_wait_ns.store(250_000_000, Ordering::Relaxed);
        c.watermark.store(i64::MIN, Ordering::Relaxed);
        Arc::new(c)
    }

    #[test]
    fn metrics_text_has_the_counters_values() {
        let counters = known_counters();
        let archive = Arc::new(Mutex::new(vec![
            ArchiveStats { rows_written: 10, files_written: 1, bytes_written: 400, buffered_rows: 3, failed_writes: 0 },
            ArchiveStats { rows_written: 5, files_written: 2, bytes_written: 100, buffered_rows: 0, failed_writes: 4 },
        ]));
        let registry = registry(Sources {
            counters: counters.clone(),
            influx: None,
            archive: Some(archive),
            plugins: fixed_plugins(Vec::new()),
        });
        let text = render(&registry);
        let expect = [
            ("tickfold_records_read_total", 1_000.0),
            ("tickfold_trades_total", 950.0),
            ("tickfold_records_malformed_total", 30.0),
            ("tickfold_trades_late_total", 20.0),
            ("tickfold_records_dead_lettered_total", 50.0),
            ("tickfold_samples_out_total", 123.0),
            ("tickfold_rows_in_flight", 7.0),
            ("tickfold_worker_seconds_total{stage=\"source\"}", 1.5),
            ("tickfold_worker_seconds_total{stage=\"process\"}", 0.0),
            ("tickfold_worker_seconds_total{stage=\"sink_wait\"}", 0.25),
            ("tickfold_archive_rows_written_total", 15.0),
            ("tickfold_archive_files_written_total", 3.0),
            ("tickfold_archive_written_bytes_total", 500.0),
            ("tickfold_archive_rows_buffered", 3.0),
            ("tickfold_archive_write_failures_total", 4.0),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        }
        let version = format!("tickfold_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(sample(&text, &version), Some(1.0), "{text}");
        assert!(text.contains("# HELP tickfold_records_read Kafka records read"), "{text}");
        assert!(text.contains("# TYPE tickfold_worker_seconds counter"), "{text}");
        // No watermark yet: no watermark gauges; no InfluxDB: no influx_*.
        assert!(!text.contains("tickfold_watermark") && !text.contains("tickfold_influx"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");

        counters.watermark.store(1_700_000_000_500, Ordering::Relaxed);
        let text = render(&registry);
        assert_eq!(sample(&text, "tickfold_watermark_timestamp_seconds"), Some(1_700_000_000.5), "{text}");
        let age = sample(&text, "tickfold_watermark_age_seconds").expect("an age");
        assert!(age > 0.0, "{text}");
    }

    #[test]
    fn metrics_endpoint_serves_and_a_taken_address_is_named() {
        let config = MetricsConfig { listen: "127.0.0.1:0".parse().unwrap() };
        let server = MetricsServer::start(
            &config,
            Sources { counters: known_counters(), influx: None, archive: None, plugins: fixed_plugins(Vec::new()) },
        )
        .expect("starts on a free port");
        let body = reqwest::blocking::get(format!("http://{}/metrics", server.addr())).unwrap();
        assert!(body.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        let text = body.text().unwrap();
        assert_eq!(sample(&text, "tickfold_records_read_total"), Some(1_000.0), "{text}");

        let taken = MetricsConfig { listen: server.addr() };
        let e = MetricsServer::start(
            &taken,
            Sources { counters: known_counters(), influx: None, archive: None, plugins: fixed_plugins(Vec::new()) },
        )
        .err()
        .expect("the address is taken")
        .to_string();
        assert!(e.contains(&server.addr().to_string()) && e.contains("[metrics] listen"), "{e}");
        server.stop();
    }
}
