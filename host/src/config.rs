//! The host's configuration: one TOML file (see `examples/tickfold.toml`),
//! with environment overrides for every key.
//!
//! An override names the key's path in upper case, with `__` between the
//! parts and `TICKFOLD__` in front: `TICKFOLD__KAFKA__BROKERS=10.0.0.5:9092`
//! sets `[kafka] brokers`, `TICKFOLD__SINKS__INFLUX__TOKEN=…` the InfluxDB
//! token. A path ending in `_FILE` reads the value from that file instead
//! (`TICKFOLD__SINKS__INFLUX__TOKEN_FILE=/run/secrets/influx`), for secrets
//! kept out of the environment. Secrets are never logged.
//!
//! Relative paths in the file (plugins, the archive) are relative to the
//! file's directory, so a config works from wherever it is started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decode::{FieldNames, Shape};
use crate::metrics::MetricsConfig;
use crate::sink::archive::ArchiveConfig;
use crate::sink::influx::InfluxConfig;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "TICKFOLD__";

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML, or has keys or values we do not know.
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// An environment override could not be applied.
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads of the dataflow; Kafka partitions are spread over them.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Where trades come from.
    pub kafka: KafkaConfig,
    /// How records become trades.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// The plugin DAG, in order: each plugin reads series written by the
    /// source (`trades`) or by plugins before it.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Where series go.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// The plugin sandbox.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// The Prometheus endpoint (`/metrics`); served only when the
    /// `[metrics]` table is present (`listen` defaults to
    /// `127.0.0.1:9464`).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The admin API (deploys, `tickfold plugins`); served only when the
    /// `[admin]` table is present.
    #[serde(default)]
    pub admin: Option<crate::api::AdminConfig>,
    /// Checkpoints for crash recovery; taken only when the `[checkpoint]`
    /// table is present.
    #[serde(default)]
    pub checkpoint: Option<crate::checkpoint::CheckpointConfig>,
}

fn default_workers() -> usize {
    2
}

/// The Kafka source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic of trades; every partition is read.
    pub topic: String,
    /// The consumer group (offsets are committed to it only so that Kafka
    /// tooling shows the lag; partitions are assigned by the host).
    #[serde(default = "default_group")]
    pub group: String,
    /// Where to start in each partition.
    #[serde(default)]
    pub start: StartAt,
    /// The topic that receives records that cannot be decoded, and late
    /// trades under the `dead-letter` policy. Default: `<topic>.dead-letter`.
    pub dead_letter_topic: Option<String>,
    /// How far behind its partition's newest event time a trade may arrive
    /// and still count, in ms.
    #[serde(default = "default_lateness")]
    pub allowed_lateness_ms: i64,
    /// What happens to a trade later than that.
    #[serde(default)]
    pub late: LatePolicy,
    /// A partition read to its end with no trade for this long stops
    /// holding the watermark back, in ms.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
    /// Records taken from one partition before turning to the next, so
    /// partitions advance side by side.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Rows read and not yet through the plugins beyond which reading
    /// pauses (a slow sink holds the pipeline back): the memory bound of
    /// the backlog between the sources and the plugins.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u64,
    /// End the run once every partition has reached its end and stayed
    /// quiet this long, in ms (backfills, tests, benchmarks). Unset: run
    /// until stopped.
    pub stop_when_idle_ms: Option<u64>,
    /// End the run once this many records have been read over all
    /// partitions (benchmarks over a preloaded topic).
    pub stop_after_records: Option<u64>,
    /// librdkafka settings, over ours (`"fetch.max.bytes" = "…"`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_group() -> String {
    "tickfold".into()
}
fn default_lateness() -> i64 {
    2_000
}
fn default_max_in_flight() -> u64 {
    crate::dataflow::MAX_IN_FLIGHT as u64
}
fn default_idle() -> u64 {
    5_000
}
fn default_max_batch() -> usize {
    4_096
}

impl KafkaConfig {
    /// The dead-letter topic's name.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}.dead-letter", self.topic))
    }
}

/// Where a partition starts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StartAt {
    /// The oldest record still in the partition.
    #[default]
    Earliest,
    /// Only records appended from now on.
    Latest,
    /// The consumer group's committed offset (earliest where there is none).
    Committed,
}

/// What happens to a trade below its partition's watermark.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    /// Sent to the dead-letter topic with the reason, and counted.
    #[default]
    DeadLetter,
    /// Counted and dropped.
    Drop,
}

/// How records are decoded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// `flat` (`{"symbol","ts","price","size"}`) or `finnhub`.
    #[serde(default)]
    pub shape: Shape,
    /// Field names, if not the shape's own.
    pub fields: Option<FieldNames>,
}

/// One plugin of the DAG.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The stage's name in `tickfold plugins` and the metrics (default:
    /// the plugin's own name, with `-2`, `-3`… when several share it).
    #[serde(default)]
    pub name: Option<String>,
    /// The component (`.wasm`).
    pub wasm: PathBuf,
    /// The series each declared input reads, in the plugin's order (a
    /// single name for a one-input plugin). Unset: the newest series that
    /// has the fields the input declares.
    #[serde(default, deserialize_with = "one_or_many")]
    pub input: Option<Vec<String>>,
    /// Parameters: strings, numbers, booleans, or arrays of them (written
    /// comma-separated, as the plugin reads lists).
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// New names for output series (`bars = "bars_1m"`): measurement names
    /// in InfluxDB and series in the archive.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

impl PluginConfig {
    /// The parameters as the plugin reads them: `name=value` text.
    pub fn param_pairs(&self) -> Vec<(String, String)> {
        self.params.iter().map(|(k, v)| (k.clone(), param_text(v))).collect()
    }
}

fn param_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(param_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The sinks; each is off unless its table is present.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// InfluxDB (v1 or v2 write API).
    pub influx: Option<InfluxConfig>,
    /// The Parquet archive.
    pub archive: Option<ArchiveConfig>,
    /// Also archive the raw trades as series `trades` (with partition and
    /// offset), not only the plugins' outputs.
    #[serde(default = "yes")]
    pub archive_trades: bool,
    /// Series (by name) kept out of InfluxDB; the archive still gets them.
    #[serde(default)]
    pub influx_skip: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Limits of the plugin sandbox.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Memory per plugin instance, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: usize,
    /// Longest a single plugin call may run, ms.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_ms: u64,
    /// Where compiled plugins are cached between runs.
    pub compile_cache: Option<PathBuf>,
}

fn default_memory() -> usize {
    256
}
fn default_call_timeout() -> u64 {
    2_000
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { memory_mib: default_memory(), call_timeout_ms: default_call_timeout(), compile_cache: None }
    }
}

impl Config {
    /// Reads `path`, applies the environment's overrides, and resolves
    /// relative paths against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path, std::env::vars())
    }

    /// Parses `text` (read from `path`) with the overrides in `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        overrides.sort();
        for (var, value) in overrides {
            apply_override(&mut table, &var, value)?;
        }
        let mut config: Config = table.try_into().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut config.plugins {
            p.wasm = base.join(&p.wasm);
        }
        if let Some(archive) = &mut config.sinks.archive {
            archive.dir = base.join(&archive.dir);
        }
        if let Some(cache) = &mut config.sandbox.compile_cache {
            *cache = base.join(&*cache);
        }
        if let Some(admin) = &mut config.admin {
            admin.state_dir = base.join(&admin.state_dir);
        }
        if let Some(checkpoint) = &mut config.checkpoint {
            checkpoint.dir = base.join(&checkpoint.dir);
        }
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("`workers` must be at least 1".into());
        }
        if self.kafka.allowed_lateness_ms < 0 {
            return Err("`kafka.allowed_lateness_ms` cannot be negative".into());
        }
        if self.kafka.max_batch == 0 {
            return Err("`kafka.max_batch` must be at least 1".into());
        }
        if self.plugins.is_empty() && self.admin.is_none() {
            return Err(
                "no `[[plugin]]` and no `[admin]`: name at least one plugin to run, or enable the admin API to deploy plugins into the running host".into(),
            );
        }
        Ok(())
    }
}

/// Keys whose values are always text, whatever they look like (a password
/// of digits, a topic called `2024`).
const STRING_KEYS: [&str; 19] = [
    "brokers",
    "topic",
    "group",
    "dead_letter_topic",
    "url",
    "database",
    "retention_policy",
    "username",
    "password",
    "org",
    "bucket",
    "token",
    "dir",
    "wasm",
    "compile_cache",
    "input",
    "listen",
    "state_dir",
    "name",
];

/// Sets the key `var` names (see the module docs) to `value`.
fn apply_override(table: &mut toml::Table, var: &str, value: String) -> Result<(), ConfigError> {
    let fail = |message: String| ConfigError::Env { var: var.to_string(), message };
    let mut path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_lowercase).collect();
    if path.iter().any(String::is_empty) {
        return Err(fail("an empty part in the key path (use `__` only between parts)".into()));
    }
    let mut value = value;
    if let Some(key) = path.last().and_then(|k| k.strip_suffix("_file")) {
        let key = key.to_string();
        value = std::fs::read_to_string(&value)
            .map_err(|e| fail(format!("cannot read {value}: {e}")))?
            .trim_end_matches(['\n', '\r'])
            .to_string();
        *path.last_mut().expect("not empty") = key;
    }
    let (last, parents) = path.split_last().expect("not empty");
    let mut at = table;
    for part in parents {
        let entry = at.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| fail(format!("`{part}` is not a table in the config")))?;
    }
    // Keep strings strings (a token of digits is still a token), and so
    // are librdkafka's settings and every key that only takes text;
    // otherwise read the value as TOML (numbers, booleans, arrays), falling
    // back to a string.
    let text_only =
        path.len() >= 3 && path[0] == "kafka" && path[1] == "options" || STRING_KEYS.contains(&last.as_str());
    let parsed = match at.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value),
        _ if text_only => toml::Value::String(value),
        _ => toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value)),
    };
    at.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        topic = "trades"

        [[plugin]]
        wasm = "plugins/ohlcv.wasm"
        params = { window = "1m" }

        [[plugin]]
        wasm = "/abs/rsi.wasm"
        input = "bars"
        params = { period = 14, field = "close" }
        rename = { rsi = "rsi_14" }

        [[plugin]]
        wasm = "sma.wasm"
        params = { periods = [5, 15, 30] }
    "#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(text, Path::new("/etc/tickfold/tickfold.toml"), env)
    }

    #[test]
    fn defaults_relative_paths_and_params() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.kafka.group, "tickfold");
        assert_eq!(c.kafka.start, StartAt::Earliest);
        assert_eq!(c.kafka.late, LatePolicy::DeadLetter);
        assert_eq!(c.kafka.dead_letter_topic(), "trades.dead-letter");
        assert_eq!(c.plugins[0].wasm, Path::new("/etc/tickfold/plugins/ohlcv.wasm"));
        assert_eq!(c.plugins[1].wasm, Path::new("/abs/rsi.wasm"));
        assert_eq!(c.plugins[1].input, Some(vec!["bars".to_string()]));
        assert_eq!(c.plugins[0].input, None);
        assert_eq!(c.plugins[1].param_pairs(), vec![("field".into(), "close".into()), ("period".into(), "14".into())]);
        assert_eq!(c.plugins[2].param_pairs(), vec![("periods".into(), "5,15,30".into())]);
        assert!(c.sinks.influx.is_none() && c.sinks.archive.is_none());
    }

    #[test]
    fn environment_overrides_any_key_and_reads_secret_files() {
        let dir = std::env::temp_dir().join(format!("tickfold-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("broker");
        std::fs::write(&secret, "10.0.0.9:9093\n").unwrap();
        let c = parse(
            MINIMAL,
            &[
                ("TICKFOLD__KAFKA__TOPIC", "ticks"),
                ("TICKFOLD__WORKERS", "4"),
                ("TICKFOLD__KAFKA__ALLOWED_LATENESS_MS", "250"),
                ("TICKFOLD__KAFKA__BROKERS_FILE", secret.to_str().unwrap()),
                ("OTHER__KAFKA__TOPIC", "ignored"),
            ],
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.kafka.topic, "ticks");
        assert_eq!(c.kafka.brokers, "10.0.0.9:9093");
        assert_eq!(c.workers, 4);
        assert_eq!(c.kafka.allowed_lateness_ms, 250);
    }

    #[test]
    fn a_digit_only_secret_stays_a_string() {
        let text = format!("{MINIMAL}\n[kafka.options]\n\"sasl.password\" = \"x\"\n");
        let text = text.replace("topic = \"trades\"", "topic = \"trades\"\ngroup = \"g\"");
        let c = parse(&text, &[("TICKFOLD__KAFKA__GROUP", "12345")]).unwrap();
        assert_eq!(c.kafka.group, "12345");
    }

    #[test]
    fn librdkafka_settings_and_secrets_from_the_environment_stay_text() {
        let c = parse(
            MINIMAL,
            &[
                ("TICKFOLD__KAFKA__OPTIONS__FETCH.MAX.BYTES", "1000"),
                ("TICKFOLD__KAFKA__OPTIONS__ENABLE.IDEMPOTENCE", "true"),
                ("TICKFOLD__KAFKA__TOPIC", "2024"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.options["fetch.max.bytes"], "1000");
        assert_eq!(c.kafka.options["enable.idempotence"], "true");
        assert_eq!(c.kafka.topic, "2024");
    }

    #[test]
    fn metrics_table_turns_the_endpoint_on_with_a_default_address() {
        assert_eq!(parse(MINIMAL, &[]).unwrap().metrics, None);
        let c = parse(&format!("{MINIMAL}\n[metrics]\n"), &[]).unwrap();
        assert_eq!(c.metrics.unwrap().listen, "127.0.0.1:9464".parse().unwrap());
        let c = parse(MINIMAL, &[("TICKFOLD__METRICS__LISTEN", "0.0.0.0:9100")]).unwrap();
        assert_eq!(c.metrics.unwrap().listen, "0.0.0.0:9100".parse().unwrap());
        let e = parse(&format!("{MINIMAL}\n[metrics]\nlisten = \"localhost\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("listen") || e.contains("address"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[metrics]\nport = 1\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(&MINIMAL.replace("topic =", "topik ="), &[]).unwrap_err().to_string();
        assert!(e.contains("topik"), "{e}");
        let e = parse(&MINIMAL.replace("[kafka]", "workers = 0\n[kafka]"), &[]).unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
        let e = parse("[kafka]\nbrokers = \"b\"\ntopic = \"t\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("[[plugin]]"), "{e}");
        let e = parse(MINIMAL, &[("TICKFOLD__KAFKA__BROKERS__X", "1")]).unwrap_err().to_string();
        assert!(e.contains("TICKFOLD__KAFKA__BROKERS__X") && e.contains("not a table"), "{e}");
        let e = parse(MINIMAL, &[("TICKFOLD__KAFKA__START", "\"middle\"")]).unwrap_err().to_string();
        assert!(e.contains("middle"), "{e}");
    }
}
