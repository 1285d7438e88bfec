//! Shared fixtures: built plugins, a runtime, seeded data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tickfold::plugin::{PluginRuntime, SandboxLimits};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is inside the workspace").to_path_buf()
}

/// The target directory scripts/build-plugins.sh builds into (both
/// variants: wasm32-wasip2, and cargo-component's wasm32-wasip1).
pub fn plugin_target_dir() -> &'static Path {
    plugin_target()
}

fn plugin_target() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = root().join("scripts/build-plugins.sh");
        let out =
            Command::new("bash").arg(&script).arg("--component").output().expect("running scripts/build-plugins.sh");
        assert!(
            out.status.success(),
            "scripts/build-plugins.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The wasm32-wasip2 component of plugin crate `name`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = plugin_target().join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A runtime with default limits, except as `adjust` says.
pub fn runtime_with(adjust: impl FnOnce(&mut SandboxLimits)) -> PluginRuntime {
    let mut limits = SandboxLimits::default();
    adjust(&mut limits);
    PluginRuntime::new(limits, None).expect("the runtime starts")
}

/// A runtime with default limits.
pub fn runtime() -> PluginRuntime {
    runtime_with(|_| {})
}

pub use tickfold::synthetic::Rng;

/// One generated trade: the same type the decoder produces.
pub use tickfold::decode::Trade;

/// Seeded trades for `symbols`, starting at `start_ms`, in arrival order:
/// a random walk per symbol, gaps of several minutes with no trades, ties
/// in time, and every `shuffle_every`-th trade swapped with its
/// predecessor (out of order by up to a few seconds). Prices start at
/// `price_scale`.
pub fn trades(seed: u64, symbols: &[&str], n: usize, start_ms: i64, price_scale: f64) -> Vec<Trade> {
    let mut rng = Rng::new(seed);
    let mut price: Vec<f64> = symbols.iter().map(|_| price_scale * (1.0 + rng.unit())).collect();
    let mut t = start_ms;
    let mut out: Vec<Trade> = Vec::with_capacity(n);
    for i in 0..n {
        // Mostly sub-second steps, sometimes a silent gap of minutes.
        t += if rng.unit() < 0.01 { rng.range(120_000, 600_000) } else { rng.range(0, 700) };
        let s = rng.range(0, symbols.len() as i64) as usize;
        price[s] *= (0.0005 * rng.normal()).exp();
        let size = (1.0 + 100.0 * rng.unit()).round();
        out.push(Trade { symbol: symbols[s].into(), ts: t, price: price[s], size });
        if i > 0 && i % 17 == 0 {
            out.swap(i, i - 1);
        }
    }
    out
}

/// Writes trades as CSV with the columns `symbol,ts,price,size`.
pub fn write_trades_csv(path: &Path, trades: &[Trade]) {
    let mut text = String::from("symbol,ts,price,size\n");
    for t in trades {
        // `{:?}` prints the shortest representation that reads back exactly.
        text.push_str(&format!("{},{},{:?},{:?}\n", t.symbol, t.ts, t.price, t.size));
    }
    std::fs::write(path, text).unwrap();
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tickfold-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Kafka-protocol broker (tansu) on a free loopback port, stopped
/// when dropped: in memory, or durable in a SQLite file (libsql) and then
/// restartable with what it held. Installed by scripts/install-services.sh.
pub struct Tansu {
    child: std::process::Child,
    pub port: u16,
    /// The durable engine's directory (the broker runs there).
    durable: Option<PathBuf>,
}

impl Tansu {
    pub fn start() -> Self {
        Self::spawn(free_port(), None)
    }

    /// Storing in `dir/tansu.db`, which outlives a [`restart`](Self::restart).
    pub fn start_durable(dir: &Path) -> Self {
        Self::spawn(free_port(), Some(dir.to_path_buf()))
    }

    fn spawn(port: u16, durable: Option<PathBuf>) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new("tansu");
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine"]);
        match &durable {
            // The SQLite path is relative to the broker's directory.
            Some(dir) => command.arg("sqlite://tansu.db").current_dir(dir),
            None => command.arg("memory://tansu/"),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu is missing: run scripts/install-services.sh");
        let broker = Tansu { child, port, durable };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen on {port} within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        broker
    }

    /// Kills the broker (SIGKILL: a crash, not a clean stop), waits `down`,
    /// and starts it again on the same port with the same storage.
    pub fn restart(&mut self, down: std::time::Duration) {
        let durable = self.durable.clone().expect("only a durable broker keeps its topics over a restart");
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let again = Self::spawn(self.port, Some(durable));
        *self = again;
    }

    /// `host:port`, for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A plain consumer of group `group` (nothing committed on its own),
    /// for a test to assign partitions to and read back.
    pub fn consumer(&self, group: &str) -> rdkafka::consumer::BaseConsumer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("creating a consumer")
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new("tansu")
            .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .expect("running tansu topic create");
        assert!(out.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small tmpfs mounted on a directory, unmounted when dropped: a disk
/// that fills up. Needs root (as the test machines run).
pub struct SmallDisk {
    pub dir: PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {bytes}-byte tmpfs on {} (the disk-full test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir: dir.to_path_buf() }
    }

    /// Bytes still free.
    pub fn free(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(&self.dir).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A loopback port nothing listens on (as of now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `url` answers with a success status, or panics after 30 s
/// with the service's log.
fn wait_until_up(service: &str, url: &str, log: &Path) {
    let client = reqwest::blocking::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !client.get(url).send().is_ok_and(|r| r.status().is_success()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{service} did not answer {url} within 30 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A real InfluxDB 1.x (Debian's `influxd`, v1 API only) on a loopback
/// port, with its data in a temporary directory, stopped when dropped.
/// Installed by scripts/install-services.sh.
pub struct Influxd {
    child: std::process::Child,
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Influxd {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// On `port`, e.g. one a client is already trying to reach.
    pub fn start_on(port: u16) -> Self {
        let dir = TempDir::new("influxd");
        let d = dir.path().display();
        // Only what differs from the defaults: loopback ports (the RPC one
        // for backups too), data under the temp dir, no phoning home, no
        // self-monitoring database, quiet logs.
        let config = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[logging]
  level = "error"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#,
            rpc = free_port()
        );
        let config_path = dir.path().join("influxdb.conf");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("influxd.log");
        let child = Self::spawn(&config_path, &log_path);
        let server = Influxd { child, port, config: config_path, log: log_path, _dir: dir };
        wait_until_up("influxd", &format!("{}/ping", server.url()), &server.log);
        server
    }

    fn spawn(config: &Path, log: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new("/usr/bin/influxd")
            .arg("-config")
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/influxd is missing: run scripts/install-services.sh")
    }

    /// Stops the server (cleanly: its data stays); clients find nothing
    /// listening until [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.config, &self.log);
        wait_until_up("influxd", &format!("{}/ping", self.url()), &self.log);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an InfluxQL statement, returning the JSON answer.
    pub fn query(&self, database: &str, q: &str) -> serde_json::Value {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/query", self.url()))
            .form(&[("db", database), ("q", q), ("epoch", "ms")])
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{q}: {}", response.status());
        let answer: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        assert!(answer["results"][0].get("error").is_none(), "{q}: {answer}");
        answer
    }

    pub fn create_database(&self, name: &str) {
        self.query(name, &format!("CREATE DATABASE \"{name}\""));
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real VictoriaMetrics (Debian's `victoria-metrics`), which accepts
/// InfluxDB's v2 writes, on a loopback port, with its data in a temporary
/// directory, stopped when dropped. Installed by scripts/install-services.sh.
pub struct VictoriaMetrics {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

impl VictoriaMetrics {
    pub fn start() -> Self {
        let dir = TempDir::new("victoria-metrics");
        let port = free_port();
        let log_path = dir.path().join("victoria-metrics.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("/usr/bin/victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            // Test data is historic: the default retention (1 month) would
            // refuse it.
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/victoria-metrics is missing: run scripts/install-services.sh");
        let server = VictoriaMetrics { child, port, _dir: dir };
        wait_until_up("victoria-metrics", &format!("{}/health", server.url()), &log_path);
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every raw sample of the series `selector` matches (one JSON object
    /// per series), after making recent writes searchable.
    pub fn export(&self, selector: &str) -> Vec<serde_json::Value> {
        let client = reqwest::blocking::Client::new();
        let flushed = client.get(format!("{}/internal/force_flush", self.url())).send().unwrap();
        assert!(flushed.status().is_success(), "force_flush: {}", flushed.status());
        let response =
            client.get(format!("{}/api/v1/export", self.url())).query(&[("match[]", selector)]).send().unwrap();
        assert!(response.status().is_success(), "export {selector}: {}", response.status());
        response.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus (Debian's `prometheus` 2.42) on a loopback port,
/// scraping one target every second, with its data in a temporary
/// directory, stopped when dropped. Installed by scripts/install-services.sh.
pub struct Prometheus {
    child: std::process::Child,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `http://{target}/metrics` (`host:port`), job `tickfold`.
    pub fn start(target: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tickfold
    static_configs:
      - targets: ["{target}"]
"#
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/prometheus is missing: run scripts/install-services.sh");
        let server = Prometheus { child, port, _dir: dir };
        wait_until_up("prometheus", &format!("{}/-/ready", server.url()), &log_path);
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of each series an instant PromQL query returns, by its
    /// labels (as JSON text).
    pub fn query(&self, promql: &str) -> Vec<(String, f64)> {
        let response = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{promql}: {}", response.status());
        let answer: serde_json::Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let series = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        series
            .iter()
            .map(|s| (s["metric"].to_string(), s["value"][1].as_str().unwrap().parse::<f64>().unwrap()))
            .collect()
    }

    /// The single value `promql` has, if it has one.
    pub fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component that exports the plugin interface of contract version
/// 0.2.0, which this host does not implement.
pub fn future_contract_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $api (export "describe" (func $f)))
            (export "tickfold:plugin/stream-function@0.2.0" (instance $api)))"#,
    )
    .unwrap()
}

/// The `[[plugin]]` tables of the tests' standard DAG, as configs write
/// it: ohlcv over the trades (bars renamed `bars_1m`), RSI(14) over the
/// bars (renamed `rsi_14`), and VWAP over the trades.
pub fn bars_rsi_vwap_toml() -> String {
    format!(
        r#"
[[plugin]]
wasm = "{ohlcv}"
input = "trades"
params = {{ window = "1m" }}
rename = {{ bars = "bars_1m" }}

[[plugin]]
wasm = "{rsi}"
input = "bars_1m"
params = {{ period = 14 }}
rename = {{ rsi = "rsi_14" }}

[[plugin]]
wasm = "{vwap}"
input = "trades"
"#,
        ohlcv = plugin_wasm("ohlcv").display(),
        rsi = plugin_wasm("rsi").display(),
        vwap = plugin_wasm("vwap").display(),
    )
}

/// Waits for `tickfold run` (`child`, logging to `log`) to end by itself,
/// failing with its log on a non-zero exit, or after `within` (killing it:
/// a hung host fails the test instead of hanging CI).
pub fn wait_success(child: &mut std::process::Child, log: &Path, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "tickfold run failed ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tickfold run did not end within {within:?}:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
