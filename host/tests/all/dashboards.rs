//! The compose stack and its Grafana dashboards (deploy/): every InfluxQL
//! query of every panel, annotation and variable of the market dashboard
//! runs against a real InfluxDB after a run of the standard plugin set and
//! returns data; the stack's files validate and fit together. The host
//! dashboard's Prometheus queries are checked against a real Prometheus in
//! `metrics`.

use std::path::Path;
use std::process::Command;

use crate::support::{Influxd, TempDir, plugin_wasm, root};

fn dashboard(name: &str) -> serde_json::Value {
    let path = root().join("deploy/grafana/dashboards").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every (where, query) of a dashboard: panel targets (InfluxQL `query` or
/// PromQL `expr`), annotations and template variables.
pub fn queries(dashboard: &serde_json::Value, key: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            if let Some(q) = target[key].as_str() {
                out.push((format!("panel `{}`", panel["title"].as_str().unwrap()), q.to_string()));
            }
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(q) = a[key].as_str() {
            out.push((format!("annotation `{}`", a["name"].as_str().unwrap()), q.to_string()));
        }
    }
    out
}

/// The plugin DAG of deploy/tickfold.toml itself (the stack the dashboards
/// ship with), its WebAssembly paths pointed at this build's plugins, into
/// InfluxDB `url` (v1), over a file.
fn config(dir: &Path, url: &str) -> std::path::PathBuf {
    let deployed: toml::Table = std::fs::read_to_string(root().join("deploy/tickfold.toml")).unwrap().parse().unwrap();
    let mut plugins = deployed["plugin"].as_array().expect("[[plugin]] tables in deploy/tickfold.toml").clone();
    for plugin in &mut plugins {
        let plugin = plugin.as_table_mut().unwrap();
        let path = plugin["wasm"].as_str().unwrap().to_string();
        let name =
            path.strip_prefix("/opt/tickfold/plugins/").and_then(|p| p.strip_suffix(".wasm")).unwrap_or_else(|| {
                panic!(
                    "deploy/tickfold.toml: `{path}` is not one of the image's plugins (/opt/tickfold/plugins/NAME.wasm)"
                )
            });
        plugin.insert("wasm".into(), plugin_wasm(name).display().to_string().into());
        if name == "anomaly" {
            // A lower threshold than the stack's, so that an hour of
            // synthetic trades has alerts for the annotation to find.
            let params = plugin["params"].as_table_mut().unwrap();
            params.insert("window".into(), 50.into());
            params.insert("threshold".into(), 2.5.into());
        }
    }
    let mut config: toml::Table = format!(
        r#"
workers = 2
[kafka]
brokers = "127.0.0.1:1"
topic = "trades"
allowed_lateness_ms = 2000

[sinks.influx]
url = "{url}"
api = "v1"
database = "tickfold"
flush_interval_ms = 100
"#
    )
    .parse()
    .unwrap();
    config.insert("plugin".into(), plugins.into());
    let path = dir.join("tickfold.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

#[test]
fn every_market_dashboard_query_returns_data_after_a_run() {
    let influx = Influxd::start();
    influx.create_database("tickfold");
    let dir = TempDir::new("dashboards");
    let trades = dir.path().join("trades.csv");
    // An hour of five symbols: enough bars for MACD(12, 26, 9).
    let start_ms: i64 = 1_767_623_400_000;
    let status = Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["generate", "--trades", "54000", "--rate", "15", "--seed", "3", "--start-ms", &start_ms.to_string()])
        .arg("--output")
        .arg(&trades)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["run", "--config"])
        .arg(config(dir.path(), &influx.url()))
        .arg("--input")
        .arg(&trades)
        .output()
        .unwrap();
    assert!(out.status.success(), "tickfold run failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let market = dashboard("market.json");
    // The symbol variable first: its values feed `$symbol`.
    let variables = market["templating"]["list"].as_array().unwrap();
    let symbol_query = variables.iter().find(|v| v["name"] == "symbol").expect("a symbol variable")["query"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = influx.query("tickfold", &symbol_query);
    let symbols: Vec<String> = answer["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("variable `symbol` ({symbol_query}) returned nothing: {answer}"))
        .iter()
        .map(|v| v[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(symbols, ["AAPL", "BTC-USD", "ETH-USD", "MSFT", "NVDA"]);

    let all = queries(&market, "query");
    assert!(all.len() >= 10, "{all:?}");
    let time_filter = format!("time >= {start_ms}ms AND time <= {}ms", start_ms + 2 * 3_600_000);
    for symbol in ["AAPL", "BTC-USD"] {
        for (place, query) in &all {
            let q = query.replace("$symbol", symbol).replace("$timeFilter", &time_filter).replace("$__interval", "1m");
            let unknown = q
                .match_indices('$')
                .any(|(i, _)| q[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
            assert!(!unknown, "{place}: a variable the test does not know: {q}");
            let answer = influx.query("tickfold", &q);
            let rows: usize = answer["results"][0]["series"]
                .as_array()
                .map_or(0, |s| s.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum());
            assert!(
                rows > 0,
                "market dashboard, {place}, symbol {symbol}: no data for\n  {q}\nInfluxDB said: {answer}"
            );
        }
    }
}

#[test]
fn the_compose_stack_validates_and_its_files_fit_together() {
    let deploy = root().join("deploy");
    let compose = deploy.join("docker-compose.yml");
    // Debian's docker-compose (installed by scripts/install-services.sh);
    // `docker compose` where the plugin is there instead.
    let validate = |program: &str, pre: &[&str]| {
        Command::new(program)
            .args(pre)
            .arg("-f")
            .arg(&compose)
            .args(["config"])
            .output()
            .ok()
            .filter(|o| o.status.success() || !o.stderr.is_empty())
    };
    let out = validate("docker-compose", &[])
        .or_else(|| validate("docker", &["compose"]))
        .expect("no compose CLI: run scripts/install-services.sh (it installs Debian's docker-compose)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "compose config failed:\n{}", String::from_utf8_lossy(&out.stderr));
    for service in ["kafka", "kafka-init", "influxdb", "tickfold", "producer", "prometheus", "grafana"] {
        assert!(text.contains(&format!("\n  {service}:\n")), "service {service} missing:\n{text}");
    }
    // Every file the stack mounts exists (compose does not check).
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("- ").or_else(|| line.trim().strip_prefix("source: ")) else {
            continue;
        };
        let host = rest.split(':').next().unwrap();
        if host.starts_with('/') && host.contains("/deploy/") {
            assert!(Path::new(host).exists(), "the stack mounts {host}, which does not exist");
        }
    }
    assert!(deploy.join("Dockerfile").exists());

    // The dashboards use the provisioned datasources' uids.
    let provisioned = std::fs::read_to_string(deploy.join("grafana/provisioning/datasources/tickfold.yml")).unwrap();
    for name in ["market.json", "host.json"] {
        let text = std::fs::read_to_string(deploy.join("grafana/dashboards").join(name)).unwrap();
        for uid in ["tickfold-influx", "tickfold-prometheus"] {
            if text.contains(uid) {
                assert!(provisioned.contains(&format!("uid: {uid}")), "{name} uses datasource {uid}, not provisioned");
            }
        }
    }

    // The stack's tickfold config is a valid config (its secrets come from
    // the environment).
    let path = deploy.join("tickfold.toml");
    let env = [("TICKFOLD__SINKS__INFLUX__TOKEN".to_string(), "t".to_string())];
    let config = tickfold::config::Config::parse(&std::fs::read_to_string(&path).unwrap(), &path, env).unwrap();
    assert_eq!(config.plugins.len(), 7);
    assert!(config.admin.is_some() && config.metrics.is_some() && config.checkpoint.is_some());
}
