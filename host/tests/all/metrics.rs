//! `tickfold run`'s `/metrics` as a real Prometheus scrapes it: the host
//! runs over a seeded topic (with InfluxDB 1.x as its sink) until told to
//! stop, and Prometheus's own query API must show every record read and
//! every dead letter.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::end_to_end::small_config;
use crate::pipeline::seeded_broker;
use crate::support::{Influxd, Prometheus, TempDir, free_port};

/// Polls `promql` until it equals `want`, failing with the last value and
/// the host's log after `deadline` or as soon as the host exits.
fn wait_for_value(
    prometheus: &Prometheus,
    promql: &str,
    want: f64,
    deadline: Instant,
    host: &mut std::process::Child,
    log: &std::path::Path,
) {
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = host.try_wait().unwrap() {
            panic!("tickfold run exited ({status}) early:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        last = prometheus.value(promql);
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{promql}: want {want}, Prometheus last had {last:?}; the host's log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn prometheus_scrapes_the_hosts_counters_while_it_runs() {
    let influx = Influxd::start();
    influx.create_database("tickfold");
    let (broker, scenario) = seeded_broker(11, 2_000);
    let records = scenario.partitions.iter().map(Vec::len).sum::<usize>() as f64;
    let dead = scenario.dead().len() as f64;

    let dir = TempDir::new("metrics");
    let listen = format!("127.0.0.1:{}", free_port());
    // No `stop_when_idle_ms`: the host runs until SIGTERM.
    let config = small_config(dir.path(), &broker, &influx.url(), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[metrics]\nlisten = \"{listen}\"\n\n[checkpoint]\ndir = \"checkpoints\"\ninterval_ms = 500\n\n[sinks.archive]\ndir = \"archive\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let prometheus = Prometheus::start(&listen);

    let log = dir.path().join("tickfold.log");
    let mut host = Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["run", "--config"])
        .arg(&config)
        .env("TICKFOLD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Stop the host whatever happens below.
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = KillOnDrop(&mut host);

    let deadline = Instant::now() + Duration::from_secs(60);
    wait_for_value(&prometheus, "tickfold_records_read_total", records, deadline, guard.0, &log);
    wait_for_value(&prometheus, "tickfold_records_dead_lettered_total", dead, deadline, guard.0, &log);
    // The scrape is the host's: its version, its stage times, its sink.
    assert_eq!(prometheus.value("count(tickfold_build_info)"), Some(1.0));
    assert_eq!(prometheus.query("tickfold_worker_seconds_total").len(), 4, "one series per stage");
    assert!(prometheus.value("tickfold_influx_points_buffered").is_some(), "the InfluxDB sink's metrics");
    // Per partition: the position is each partition's record count, once
    // everything is read; the lag shows once the broker reported an end.
    for (p, records) in scenario.partitions.iter().enumerate() {
        let promql = format!("tickfold_partition_position{{partition=\"{p}\"}}");
        wait_for_value(&prometheus, &promql, records.len() as f64, deadline, guard.0, &log);
    }
    // Per plugin (the config's one stage, vwap): every trade went in, one
    // VWAP per trade came out, and every call is in the histogram.
    let trades = scenario.good().len() as f64;
    wait_for_value(&prometheus, "tickfold_plugin_samples_in_total{plugin=\"vwap\"}", trades, deadline, guard.0, &log);
    wait_for_value(&prometheus, "tickfold_plugin_samples_out_total{plugin=\"vwap\"}", trades, deadline, guard.0, &log);
    assert_eq!(prometheus.value("tickfold_plugin_failures_total{plugin=\"vwap\"}"), Some(0.0));
    let calls = prometheus.value("tickfold_plugin_call_duration_seconds_count{plugin=\"vwap\"}").unwrap_or(0.0);
    let inf = prometheus.value("tickfold_plugin_call_duration_seconds_bucket{plugin=\"vwap\",le=\"+Inf\"}");
    assert!(calls > 0.0 && inf == Some(calls), "calls {calls}, +Inf bucket {inf:?}");
    // The InfluxDB sink: its buffer's size, and every answered write timed.
    assert!(prometheus.value("tickfold_influx_buffer_capacity_points").is_some_and(|c| c > 0.0));
    let deadline_writes = Instant::now() + Duration::from_secs(30);
    while prometheus.value("tickfold_influx_write_duration_seconds_count").unwrap_or(0.0) == 0.0 {
        assert!(Instant::now() < deadline_writes, "no InfluxDB write was timed");
        std::thread::sleep(Duration::from_millis(250));
    }
    // One query, so both come from the same scrape.
    let promql = "tickfold_influx_write_duration_seconds_count - ignoring(le) tickfold_influx_write_duration_seconds_bucket{le=\"+Inf\"}";
    assert_eq!(prometheus.value(promql), Some(0.0), "the +Inf bucket holds every write");
    assert!(prometheus.value("tickfold_influx_write_duration_seconds_sum").is_some_and(|s| s > 0.0));
    // Every metric the provisioned host dashboard queries is there.
    let host: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::support::root().join("deploy/grafana/dashboards/host.json")).unwrap(),
    )
    .unwrap();
    let exprs = crate::dashboards::queries(&host, "expr");
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (place, expr) in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("tickfold_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            let promql = format!("count({{__name__=\"{name}\"}})");
            let deadline = Instant::now() + Duration::from_secs(20);
            while prometheus.value(&promql).unwrap_or(0.0) == 0.0 {
                assert!(Instant::now() < deadline, "host dashboard, {place}: Prometheus has no `{name}` ({expr})");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    let promql = "count(tickfold_partition_lag)";
    wait_for_value(&prometheus, promql, scenario.partitions.len() as f64, deadline, guard.0, &log);
    let host_log = std::fs::read_to_string(&log).unwrap();
    assert!(host_log.contains(&format!("http://{listen}/metrics")), "the address is logged:\n{host_log}");

    // SIGTERM ends the host cleanly, and the endpoint with it.
    let id = guard.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &id]).status().unwrap().success());
    let stop_by = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < stop_by, "tickfold run did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let host_log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "tickfold run after SIGTERM: {status}\n{host_log}");
    assert!(host_log.contains(&format!("tickfold: {records} records")), "{host_log}");
    assert!(std::net::TcpStream::connect(&listen).is_err(), "/metrics is no longer served");
}
