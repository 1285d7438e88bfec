//! Hot deploys against a running host, as a user does them: `tickfold run`
//! consumes a live topic (fed by `tickfold produce` at a steady rate), and
//! `tickfold deploy`, `tickfold plugins` and `tickfold remove` talk to its
//! admin API.
//!
//! The plugin deployed is the `misbehave` fixture in its `echo` mode: per
//! sample it writes the sample's value and a running count per key, so the
//! outputs show, per trade, which version handled it (v1 reads the price,
//! v2 the size) and whether the count carried over the upgrade.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tickfold::deploy::{ChangeStatus, PluginInfo};
use tickfold::sink::archive::read_series;

use crate::support::{Tansu, TempDir, free_port, plugin_wasm};

const TOKEN: &str = "deploy-test-token";

fn tickfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tickfold"))
}

/// `tickfold produce`: a live synthetic market at `rate` trades/s.
struct Producer(Child);

impl Producer {
    fn start(broker: &Tansu, rate: u32, trades: u32, seed: u32) -> Self {
        let child = tickfold()
            .args(["produce", "--brokers", &broker.bootstrap(), "--topic", "trades"])
            .args(["--rate", &rate.to_string(), "--trades", &trades.to_string(), "--seed", &seed.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Producer(child)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tickfold run` with an admin API, killed when dropped.
struct Host {
    child: Option<Child>,
    log: PathBuf,
    admin: String,
}

impl Host {
    fn start(config: &Path, log: PathBuf, admin_port: u16) -> Self {
        let child = tickfold()
            .args(["run", "--config"])
            .arg(config)
            .env("TICKFOLD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let host = Host { child: Some(child), log, admin: format!("http://127.0.0.1:{admin_port}") };
        // Up once the API answers.
        host.wait_for("the admin API to answer", Duration::from_secs(60), || host.try_plugins().is_some());
        host
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `tickfold` client command aimed at this host.
    fn client(&self, args: &[&str]) -> Output {
        tickfold().args(args).args(["--admin", &self.admin, "--token", TOKEN]).output().unwrap()
    }

    fn try_plugins(&self) -> Option<Vec<PluginInfo>> {
        let out = self.client(&["plugins", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn plugins(&self) -> Vec<PluginInfo> {
        self.try_plugins().unwrap_or_else(|| panic!("tickfold plugins failed; the host's log:\n{}", self.log()))
    }

    fn plugin(&self, name: &str) -> Option<PluginInfo> {
        self.plugins().into_iter().find(|p| p.name == name)
    }

    /// Runs a change command (`deploy`/`remove` … `--json`) that must
    /// succeed and take effect on every worker.
    fn change(&self, args: &[&str]) -> ChangeStatus {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "tickfold {args:?} failed: {}\nthe host's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let status: ChangeStatus = serde_json::from_slice(&out.stdout).unwrap();
        assert!(status.complete(), "{status:?}");
        status
    }

    /// Runs a deploy that must be refused; returns its message.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            !out.status.success(),
            "tickfold {args:?} should have been refused: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn wait_for(&self, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the host's log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the host to end by itself (the input went idle).
    fn wait_exit(&mut self, within: Duration) {
        crate::support::wait_success(self.child.as_mut().unwrap(), &self.log, within);
        self.child = None;
    }

    /// SIGTERM, then waits for the host to end.
    fn stop(&mut self) {
        let id = self.child.as_ref().unwrap().id().to_string();
        Command::new("kill").args(["-TERM", &id]).status().unwrap();
        self.wait_exit(Duration::from_secs(60));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A config: 2 workers over topic `trades`, vwap from the config file,
/// the archive (trades too), and the admin API on `admin_port`.
fn config(dir: &Path, broker: &Tansu, admin_port: u16, extra_admin: &str, stop_when_idle: bool) -> PathBuf {
    let stop = if stop_when_idle { "stop_when_idle_ms = 3000" } else { "" };
    let text = format!(
        r#"
workers = 2
[kafka]
brokers = "{brokers}"
topic = "trades"
start = "committed"
group = "deploy-test"
allowed_lateness_ms = 500
idle_timeout_ms = 1000
max_batch = 500
{stop}

[[plugin]]
wasm = "{vwap}"

[sinks]
archive_trades = true

[sinks.archive]
dir = "archive"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
state_dir = "state"
deploy_lead_ms = 200
{extra_admin}
"#,
        brokers = broker.bootstrap(),
        vwap = plugin_wasm("vwap").display(),
    );
    let path = dir.join("tickfold.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn live_broker() -> Tansu {
    let broker = Tansu::start();
    broker.create_topic("trades", 4);
    broker
}

#[test]
fn a_plugin_deployed_upgraded_and_removed_on_a_live_topic_sees_every_sample_exactly_once() {
    let broker = live_broker();
    let dir = TempDir::new("deploy-live");
    let port = free_port();
    let config = config(dir.path(), &broker, port, "", true);
    // 1000 trades/s for 14 s; the host stops 3 s after they end.
    let _producer = Producer::start(&broker, 1_000, 14_000, 5);
    let mut host = Host::start(&config, dir.path().join("tickfold.log"), port);
    host.wait_for("vwap to see trades", Duration::from_secs(30), || {
        host.plugin("vwap").is_some_and(|p| p.samples_in > 0)
    });

    let wasm = plugin_wasm("tickfold-test-fixtures");
    let wasm = wasm.to_str().unwrap();
    let deploy = |input: &str| {
        host.change(&["deploy", wasm, "--name", "tally", "--input", input, "--rename", "echo=tally", "--json"])
    };
    let deployed = deploy("trades.price");
    assert_eq!(
        (deployed.change.as_str(), deployed.outputs.clone()),
        ("deploy", vec!["tally".into(), "tally_probe".into()])
    );
    std::thread::sleep(Duration::from_millis(1500));
    let upgraded = deploy("trades.size");
    assert_eq!(upgraded.change, "upgrade");
    assert!(upgraded.state.as_deref().unwrap_or("").starts_with("carried over"), "{upgraded:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let listed = host.plugin("tally").expect("tally is listed");
    assert_eq!((listed.origin.as_str(), listed.instances, listed.status.as_str()), ("deployed", 2, "running"));
    assert!(listed.samples_in > 0 && listed.samples_out > 0, "{listed:?}");
    assert_eq!(listed.inputs, vec!["trades".to_string()]);
    let removed = host.change(&["remove", "tally", "--json"]);
    assert!(host.plugin("tally").is_none());
    host.wait_exit(Duration::from_secs(90));

    let (t0, t1, t2) = (deployed.at.unwrap(), upgraded.at.unwrap(), removed.at.unwrap());
    assert!(t0 < t1 && t1 < t2, "{t0} {t1} {t2}");
    let archive = dir.path().join("archive");
    let trades = read_series(&archive, "trades").unwrap();
    let outputs = read_series(&archive, "tally").unwrap();
    let vwap = read_series(&archive, "vwap").unwrap();
    // The config's plugin saw every trade, before, during and after.
    assert_eq!(vwap.len(), trades.len());

    // What the deployed plugin should have seen: every trade from T0 to
    // T2, through v1 (price) before T1 and v2 (size) from T1 on.
    let mut want: BTreeMap<&str, Vec<(i64, u64)>> = BTreeMap::new();
    let (mut before, mut after) = (0, 0);
    for t in &trades {
        if t.ts >= t0 && t.ts < t2 {
            let value = if t.ts < t1 { t.values[0] } else { t.values[1] };
            want.entry(&t.symbol).or_default().push((t.ts, value.to_bits()));
            if t.ts < t1 { before += 1 } else { after += 1 }
        }
    }
    assert!(before > 100 && after > 100, "trades on each side of the upgrade: {before} and {after}");
    let mut got: BTreeMap<&str, Vec<(i64, u64)>> = BTreeMap::new();
    let mut counts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for o in &outputs {
        got.entry(&o.symbol).or_default().push((o.ts, o.values[0].to_bits()));
        counts.entry(&o.symbol).or_default().push(o.values[1] as u64);
    }
    for v in want.values_mut().chain(got.values_mut()) {
        v.sort_unstable();
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (symbol, want) in &want {
        let got = &got[symbol];
        assert_eq!(got.len(), want.len(), "{symbol}: {} outputs for {} trades", got.len(), want.len());
        assert!(got == want, "{symbol}: the outputs are not the trades from T0 to T2, each once, by the right version");
        // The running count went on across the upgrade: 1..=n, each once.
        let mut c = counts[symbol].clone();
        c.sort_unstable();
        assert_eq!(c, (1..=want.len() as u64).collect::<Vec<_>>(), "{symbol}: counts lost or repeated");
    }
}

#[test]
fn rejected_deploys_say_why_and_disturb_nothing_and_deployed_plugins_survive_a_restart() {
    let broker = live_broker();
    let dir = TempDir::new("deploy-rejected");
    let port = free_port();
    let fixture = plugin_wasm("tickfold-test-fixtures");
    let size = std::fs::metadata(&fixture).unwrap().len();
    let config = config(dir.path(), &broker, port, &format!("max_plugin_bytes = {}", size + 100), false);
    let _producer = Producer::start(&broker, 500, 60_000, 9);
    let mut host = Host::start(&config, dir.path().join("tickfold.log"), port);
    let vwap_out = |host: &Host| host.plugin("vwap").map_or(0, |p| p.samples_out);
    host.wait_for("vwap to write", Duration::from_secs(30), || vwap_out(&host) > 0);

    let files = TempDir::new("deploy-rejected-files");
    let file = |name: &str, bytes: &[u8]| {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let garbage = file("garbage.wasm", b"this is not webassembly at all");
    let core = file("core.wasm", b"\0asm\x01\0\0\0");
    let future = file("future.wasm", &crate::support::future_contract_component());
    let mut big = std::fs::read(&fixture).unwrap();
    big.resize(big.len() + 1_000, 0);
    let big = file("big.wasm", &big);
    let good = fixture.to_str().unwrap();

    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("not wasm", vec!["deploy", &garbage, "--name", "x"], vec!["not a WebAssembly file", "HTTP 422"]),
        ("a core module", vec!["deploy", &core, "--name", "x"], vec!["core WebAssembly module"]),
        (
            "another contract version",
            vec!["deploy", &future, "--name", "x"],
            vec!["tickfold:plugin@0.2.0", "tickfold:plugin@0.1.0"],
        ),
        ("bad parameters", vec!["deploy", good, "--name", "x", "--param", "mode=sideways"], vec!["sideways", "mode"]),
        (
            "an input that does not exist",
            vec!["deploy", good, "--name", "x", "--input", "quotes"],
            vec!["`quotes`", "nothing before it writes"],
        ),
        (
            "a field that does not exist",
            vec!["deploy", good, "--name", "x", "--input", "trades.bid"],
            vec!["no field `bid`", "price, size"],
        ),
        (
            "the name of a config plugin",
            vec!["deploy", good, "--name", "vwap"],
            vec!["plugin of the config file", "HTTP 409"],
        ),
        (
            "an output name taken",
            vec!["deploy", good, "--name", "x", "--input", "trades.price", "--rename", "echo=vwap"],
            vec!["`vwap`", "already called", "HTTP 409"],
        ),
        (
            "a file over the size limit",
            vec!["deploy", &big, "--name", "x"],
            vec!["over the limit", "max_plugin_bytes", "HTTP 413"],
        ),
        ("a bad name", vec!["deploy", good, "--name", "9 lives"], vec!["not a usable plugin name"]),
        ("removing what is not deployed", vec!["remove", "x"], vec!["no deployed plugin is called `x`", "HTTP 404"]),
    ];
    for (what, args, says) in cases {
        let before = vwap_out(&host);
        let message = host.refused(&args);
        for s in says {
            assert!(message.contains(s), "{what}: the message should say `{s}`:\n{message}");
        }
        // Nothing was added, and the running plugin keeps writing.
        let names: Vec<String> = host.plugins().into_iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["vwap".to_string()], "{what}");
        host.wait_for("vwap to keep writing", Duration::from_secs(20), || vwap_out(&host) > before);
    }
    // A wrong token is refused before anything is looked at.
    let out = tickfold().args(["plugins", "--admin", &host.admin, "--token", "guess"]).output().unwrap();
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && message.contains("bearer token") && message.contains("401"), "{message}");

    // A good deploy is persisted, and a restarted host runs it again.
    let deployed = host.change(&["deploy", good, "--name", "tally", "--input", "trades.price", "--json"]);
    assert_eq!(deployed.outputs, vec!["tally_echo".to_string(), "tally_probe".into()]);
    host.stop();
    let mut host = Host::start(&config, dir.path().join("tickfold-2.log"), port);
    host.wait_for("the deployed plugin to run again", Duration::from_secs(30), || {
        host.plugin("tally").is_some_and(|p| p.origin == "deployed" && p.samples_in > 0)
    });
    let again = host.plugin("tally").unwrap();
    assert_eq!(again.params.get("mode"), None, "no parameters were given");
    assert_eq!(again.outputs, vec!["tally_echo".to_string(), "tally_probe".into()]);
    assert!(host.log().contains("running the plugins deployed earlier: tally"), "{}", host.log());
    host.stop();
}
