//! The `tickfold` command: argument parsing, and the edge where errors
//! become messages and exit codes.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exec::{Chain, CsvWriter, JsonlWriter, OutputWriter, StageSpec, assign_params};
use crate::plugin::{Descriptor, LoadedPlugin, PluginRuntime, SandboxLimits, SeriesDecl};
use crate::source::file::FileSource;

/// Tickfold: stream processing for market data, with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "tickfold", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks a plugin component and prints what it says about itself.
    Check(CheckArgs),
    /// Runs a plugin (or a chain of plugins) over a file of trades or bars.
    Exec(ExecArgs),
    /// Writes a seeded synthetic market (trades) to a CSV or JSONL file.
    Generate(GenerateArgs),
    /// Produces a seeded synthetic market into a Kafka topic.
    Produce(ProduceArgs),
    /// Runs the host: Kafka → plugins → InfluxDB and Parquet, as a config
    /// file says (see examples/tickfold.toml).
    Run(RunArgs),
    /// Measures the host: Kafka drain rate, pipeline throughput and CPU
    /// split, end-to-end latency (scripts/bench.sh runs them all).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Runs a plugin chain over a file on the streaming dataflow: worker
    /// threads, rows exchanged by key, the frontier as the watermark.
    Replay(ReplayArgs),
    /// Deploys a plugin into a running host, or upgrades the deployed
    /// plugin of that name (its state carries over when the new version
    /// can restore it).
    Deploy(DeployArgs),
    /// Lists the running host's plugins with their counts.
    Plugins(PluginsArgs),
    /// Removes a deployed plugin from the running host.
    Remove(RemoveArgs),
}

/// Where the running host's admin API is.
#[derive(Debug, Args)]
struct AdminArgs {
    /// The admin API (`[admin] listen` of the host's config).
    #[arg(long, env = "TICKFOLD_ADMIN_URL", default_value = "http://127.0.0.1:9465")]
    admin: String,
    /// The bearer token (`[admin] token` of the host's config).
    #[arg(long, env = "TICKFOLD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The plugin component (`.wasm`, from `cargo component build
    /// --release`).
    wasm: PathBuf,
    /// The plugin's name in the host; its output series are called NAME
    /// (one output) or NAME_OUTPUT (several).
    #[arg(long)]
    name: String,
    /// The series each declared input reads, `SERIES` or `SERIES.FIELD`
    /// (for a one-field input), in the plugin's order; unset: the newest
    /// series with the fields it declares.
    #[arg(long)]
    input: Vec<String>,
    /// A parameter, `key=value` (repeat it).
    #[arg(long = "param", short = 'p')]
    params: Vec<String>,
    /// An output series' name, `OUTPUT=SERIES` (repeat it).
    #[arg(long)]
    rename: Vec<String>,
    /// Answer once accepted, without waiting for it to take effect.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
struct PluginsArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
struct RemoveArgs {
    /// The deployed plugin's name.
    name: String,
    /// Answer once accepted, without waiting for it to take effect.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Brokers, `host:port[,host:port…]`.
    #[arg(long, env = "TICKFOLD_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic (it must exist).
    #[arg(long, default_value = "trades")]
    topic: String,
    /// Symbols, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "AAPL,MSFT,NVDA,BTC-USD,ETH-USD")]
    symbols: Vec<String>,
    /// Trades per second (of event time; of wall time too unless
    /// --as-fast-as-possible).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How many trades [default: 1000000 synthetic, the whole file].
    #[arg(long)]
    trades: Option<u64>,
    /// Do not pace to the wall clock: preload as fast as the broker takes it.
    #[arg(long)]
    as_fast_as_possible: bool,
    /// Replay this file of trades (.csv, .jsonl or .parquet with symbol,
    /// ts, price, size) instead of the synthetic market, paced as recorded.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Forward Finnhub's live trades for --symbols instead (API key in
    /// FINNHUB_API_KEY).
    #[arg(long, conflicts_with = "input")]
    finnhub: bool,
    /// Finnhub's websocket.
    #[arg(long, default_value = "wss://ws.finnhub.io")]
    finnhub_url: String,
    /// Paced file replay runs this many times faster than recorded.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Event time of the first trade, ms since the Unix epoch (default: now).
    #[arg(long)]
    start_ms: Option<i64>,
    /// The seed: the same seed produces the same trades.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// A bare rdkafka consumer reading every partition of a topic.
    Drain {
        #[arg(long, env = "TICKFOLD_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "trades")]
        topic: String,
        /// Stop after this many records (the topic's size).
        #[arg(long)]
        expect: u64,
    },
    /// The host over a config's topic (or `--input` file) until it is
    /// drained: rate and CPU split. Set `kafka.stop_when_idle_ms`.
    Pipeline {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Latency from a trade to the InfluxDB write carrying its VWAP, at a
    /// steady rate, through the config's (empty) topic.
    Latency {
        #[arg(long, short)]
        config: PathBuf,
        /// Trades per second.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        /// How long to feed.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The config file (TOML). Every key can be overridden from the
    /// environment: `TICKFOLD__KAFKA__BROKERS=host:9092`.
    #[arg(long, short, env = "TICKFOLD_CONFIG", default_value = "tickfold.toml")]
    config: PathBuf,
    /// Load the plugins and wire the DAG, then exit without running.
    #[arg(long)]
    check: bool,
    /// Read this file of trades (.csv, .jsonl, .parquet) instead of Kafka:
    /// the same DAG and sinks over history.
    #[arg(long)]
    input: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    run: ExecArgs,
    /// Worker threads.
    #[arg(long, short, default_value_t = 2)]
    workers: usize,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Where to write: `.csv` or `.jsonl`.
    #[arg(long, short)]
    output: PathBuf,
    /// Symbols, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "AAPL,MSFT,NVDA,BTC-USD,ETH-USD")]
    symbols: Vec<String>,
    /// How many trades.
    #[arg(long, default_value_t = 100_000)]
    trades: usize,
    /// Trades per second of event time, all symbols together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Event time of the start, ms since the Unix epoch (default: 2026-01-05 14:30 UTC).
    #[arg(long, default_value_t = 1_767_623_400_000)]
    start_ms: i64,
    /// The seed: the same seed writes the same trades.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The plugin's `.wasm` component.
    plugin: PathBuf,
    /// Also open an instance with these parameters (`name=value`), to check
    /// them and show the series they produce.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Print the description as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// The plugin components, in chain order: each reads what the one before
    /// it writes.
    #[arg(required = true)]
    plugins: Vec<PathBuf>,
    /// The input: .csv, .jsonl or .parquet with columns `symbol`, `ts`
    /// (ms) and numeric fields (`price`, `size` for trades).
    #[arg(long, short)]
    input: PathBuf,
    /// A parameter: `name=value` for every plugin that declares `name`, or
    /// `plugin.name=value` for one plugin.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// How far behind the newest event time the watermark trails, in ms:
    /// rows older than the watermark when they arrive are late and left out.
    #[arg(long, default_value_t = 0)]
    watermark_lag_ms: i64,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Output format; by default from the output file's extension, else CSV.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Report every stage's outputs, not only the last stage's.
    #[arg(long)]
    all_stages: bool,
    /// Input rows per batch handed to the first plugin.
    #[arg(long, default_value_t = 8192)]
    batch_rows: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Csv,
    Jsonl,
}

/// The sandbox's limits, for commands that run plugins.
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Memory one plugin instance may use, in MiB.
    #[arg(long, default_value_t = 256)]
    plugin_memory_mib: usize,
    /// Wall time one call into a plugin may take, in ms.
    #[arg(long, default_value_t = 2000)]
    plugin_timeout_ms: u64,
    /// Cache compiled plugins in this directory.
    #[arg(long, env = "TICKFOLD_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
}

impl RuntimeArgs {
    fn runtime(&self) -> Result<PluginRuntime> {
        let limits = SandboxLimits {
            memory_bytes: self.plugin_memory_mib << 20,
            call_timeout_ms: self.plugin_timeout_ms,
            ..SandboxLimits::default()
        };
        PluginRuntime::new(limits, self.compile_cache.clone())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("starting the WebAssembly runtime")
    }
}

fn parse_param(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_string(), value.to_string())),
        _ => Err(format!("`{raw}` is not NAME=VALUE")),
    }
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic in one dataflow worker would leave the others waiting for its
    // progress for ever: report it and end the process instead.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("tickfold: a thread panicked (a bug; please report it); stopping");
        std::process::exit(101);
    }));
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tickfold: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TICKFOLD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check(args) => check(args),
        Command::Exec(args) => exec(args),
        Command::Generate(args) => generate(args),
        Command::Replay(args) => replay(args),
        Command::Run(args) => run_host(args),
        Command::Bench(command) => bench(command),
        Command::Produce(args) => produce(args),
        Command::Deploy(args) => deploy(args),
        Command::Plugins(args) => plugins(args),
        Command::Remove(args) => remove(args),
    }
}

fn check(args: CheckArgs) -> Result<()> {
    let runtime = args.runtime.runtime()?;
    let plugin = runtime.load_file(&args.plugin)?;
    let d = plugin.descriptor();
    let resolved = if args.params.is_empty() {
        None
    } else {
        let params = assign_params(std::slice::from_ref(&plugin), &args.params)?.remove(0);
        let instance = plugin.open(&params)?;
        Some((instance.inputs().to_vec(), instance.outputs().to_vec()))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &descriptor_json(d, resolved.as_ref()))?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{} {} ({}) implements {}", d.name, d.version, args.plugin.display(), crate::plugin::CONTRACT)?;
    if !d.doc.is_empty() {
        writeln!(out, "  {}", d.doc)?;
    }
    writeln!(out, "parameters:")?;
    if d.params.is_empty() {
        writeln!(out, "  (none)")?;
    }
    let width = d.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &d.params {
        let default = p.default.as_deref().map_or("required".to_string(), |v| format!("default {v}"));
        writeln!(out, "  {:width$}  {:18}  {}", p.name, default, p.doc)?;
    }
    let (inputs, outputs, with) = match &resolved {
        Some((i, o)) => (i, o, "with the given parameters"),
        None => (&d.inputs, &d.outputs, "with default parameters"),
    };
    writeln!(out, "inputs ({with}):")?;
    print_series(&mut out, inputs)?;
    writeln!(out, "outputs ({with}):")?;
    print_series(&mut out, outputs)?;
    writeln!(out, "state format version: {}", d.state_format_version)?;
    Ok(())
}

fn print_series(out: &mut impl Write, series: &[SeriesDecl]) -> Result<()> {
    if series.is_empty() {
        writeln!(out, "  (none: a parameter has no default)")?;
    }
    for s in series {
        writeln!(
            out,
            "  {}: {}{}",
            s.name,
            s.fields.join(", "),
            if s.doc.is_empty() { String::new() } else { format!("  ({})", s.doc) }
        )?;
    }
    Ok(())
}

fn descriptor_json(d: &Descriptor, resolved: Option<&(Vec<SeriesDecl>, Vec<SeriesDecl>)>) -> serde_json::Value {
    let series = |s: &[SeriesDecl]| -> serde_json::Value {
        s.iter().map(|s| serde_json::json!({"name": s.name, "fields": s.fields, "doc": s.doc})).collect()
    };
    let (inputs, outputs) = match resolved {
        Some((i, o)) => (series(i), series(o)),
        None => (series(&d.inputs), series(&d.outputs)),
    };
    serde_json::json!({
        "name": d.name,
        "version": d.version,
        "doc": d.doc,
        "contract": crate::plugin::CONTRACT,
        "params": d.params.iter().map(|p| serde_json::json!({"name": p.name, "default": p.default, "doc": p.doc})).collect::<Vec<_>>(),
        "inputs": inputs,
        "outputs": outputs,
        "state_format_version": d.state_format_version,
    })
}

fn exec(args: ExecArgs) -> Result<()> {
    let started = Instant::now();
    let (plugins, params) = load_chain(&args)?;
    let mut source = FileSource::open(&args.input, args.batch_rows)?;
    let mut chain = Chain::open(&plugins, &params, source.fields(), args.watermark_lag_ms, args.all_stages)?;
    let mut writer = output_writer(&args, chain.reported_series())?;
    while let Some(chunk) = source.next_chunk()? {
        chain.push(&chunk, writer.as_mut())?;
    }
    chain.finish(writer.as_mut())?;
    writer.finish()?;
    let s = chain.stats();
    summary(&args.input, s.rows_in, s.late, s.samples_out, started)
}

fn replay(args: ReplayArgs) -> Result<()> {
    let started = Instant::now();
    let run = &args.run;
    let (plugins, params) = load_chain(run)?;
    // A chain opened here only to name the reported series for the header.
    let fields = FileSource::open(&run.input, 1)?.fields().to_vec();
    let writer = {
        let chain = Chain::open(&plugins, &params, &fields, run.watermark_lag_ms, run.all_stages)?;
        output_writer(run, chain.reported_series())?
    };
    let out: crate::dataflow::SharedOutput = std::sync::Arc::new(std::sync::Mutex::new(writer));
    let options = crate::dataflow::ReplayOptions {
        workers: args.workers,
        watermark_lag_ms: run.watermark_lag_ms,
        batch_rows: run.batch_rows,
        report_all: run.all_stages,
    };
    let stages: Vec<StageSpec> =
        plugins.into_iter().zip(params).map(|(plugin, params)| StageSpec::new(plugin, params)).collect();
    let s = crate::dataflow::replay(&run.input, &stages, &options, out.clone())?;
    out.lock().map_err(|_| anyhow::anyhow!("a worker panicked while writing"))?.finish()?;
    summary(&run.input, s.rows_in, s.late, s.samples_out, started)
}

fn run_host(args: RunArgs) -> Result<()> {
    let config = crate::config::Config::load(&args.config)?;
    if args.check {
        let stages = crate::host::stages(&config, &crate::host::runtime(&config)?)?;
        let chain = crate::host::wire(&stages)?;
        println!("{}: the plugin DAG wires; it writes:", args.config.display());
        for (name, fields) in chain.reported_series() {
            println!("  {name} ({})", fields.join(", "));
        }
        return Ok(());
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal stops the host cleanly; a second one exits at
        // once (say, while InfluxDB is down and the last points wait).
        signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone())
            .context("installing the signal handlers")?;
        signal_hook::flag::register(signal, interrupted.clone()).context("installing the signal handlers")?;
    }
    let s = crate::host::run(&config, args.input.as_deref(), interrupted.clone())?;
    let r = &s.run;
    let mut out = std::io::stderr().lock();
    writeln!(
        out,
        "tickfold: {} records from {} partitions in {:.1} s: {} trades, {} malformed, {} late, {} dead-lettered, {} outputs",
        r.records,
        r.partitions,
        s.elapsed.as_secs_f64(),
        r.trades,
        r.malformed,
        r.late,
        r.dead_lettered,
        r.samples_out
    )?;
    if let Some(i) = &s.influx {
        writeln!(
            out,
            "tickfold: InfluxDB: {} points written in {} requests, {} retries, {} rejected",
            i.points_written, i.batches_written, i.retries, i.points_rejected
        )?;
    }
    if let Some(a) = &s.archive {
        writeln!(out, "tickfold: archive: {} rows in {} files", a.rows_written, a.files_written)?;
    }
    if interrupted.load(Ordering::Relaxed) {
        match r.checkpoint_at_stop {
            Some(id) => writeln!(
                out,
                "tickfold: stopped by a signal; checkpoint {id} holds where it stopped, open windows included: the next run resumes there"
            )?,
            None => {
                writeln!(out, "tickfold: stopped by a signal; open windows were not written (they were not final)")?
            }
        }
    }
    if r.dead_letters_failed > 0 {
        bail!("{} dead letters were not acknowledged by the broker", r.dead_letters_failed);
    }
    Ok(())
}

fn bench(command: BenchCommand) -> Result<()> {
    use crate::bench;
    match command {
        BenchCommand::Drain { brokers, topic, expect } => {
            for (label, settings) in
                [("librdkafka defaults", &[][..]), ("the host's consumer settings", &bench::HOST_CONSUMER_SETTINGS[..])]
            {
                let d = bench::drain(&brokers, &topic, expect, settings)?;
                println!(
                    "drain ({label}): {} records, {:.1} MB in {:.2} s: {:.0} records/s",
                    d.records,
                    d.bytes as f64 / 1e6,
                    d.elapsed.as_secs_f64(),
                    d.rate()
                );
            }
        }
        BenchCommand::Pipeline { config, input } => {
            let config = crate::config::Config::load(&config)?;
            let f = bench::pipeline(&config, input.as_deref())?;
            println!(
                "pipeline ({} workers, {}): {} records, {} outputs in {:.2} s: {:.0} records/s",
                config.workers,
                input.as_ref().map_or_else(|| format!("topic {}", config.kafka.topic), |p| p.display().to_string()),
                f.records,
                f.outputs,
                f.elapsed.as_secs_f64(),
                f.records as f64 / f.elapsed.as_secs_f64().max(1e-9)
            );
            let total: f64 = f.cpu.iter().map(|(_, s)| s).sum();
            println!(
                "CPU: {total:.2} s in all; workers waited {:.2} s on full sink buffers (back-pressure)",
                f.waited_on_sinks.as_secs_f64()
            );
            for (what, secs) in &f.cpu {
                println!("  {:5.1} %  {secs:7.2} s  {what}", 100.0 * secs / total.max(1e-9));
            }
        }
        BenchCommand::Latency { config, rate, seconds } => {
            let config = crate::config::Config::load(&config)?;
            let l = bench::latency(&config, rate, seconds, Duration::from_secs(2))?;
            println!(
                "latency at {rate:.0} trades/s (feed achieved {:.0}/s, {} trades; {} trades in {} VWAP points after a 2 s warm-up, {} without a point), per trade: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                l.produced_rate, l.produced, l.samples, l.points, l.unmeasured, l.p50, l.p90, l.p99, l.max
            );
            for (secs, trades, p50, p99, max) in &l.windows {
                println!("  from {secs:4.0} s: {trades:7} trades, p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms");
            }
        }
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<()> {
    let symbols: Vec<String> = args.symbols.into_iter().filter(|s| !s.is_empty()).collect();
    if symbols.is_empty() {
        bail!("--symbols is empty; name at least one symbol");
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number, got {}", args.speed);
    }
    let trades = args.trades.unwrap_or(if args.input.is_some() || args.finnhub { u64::MAX } else { 1_000_000 });
    let feed = match args.input {
        Some(path) => crate::produce::Feed::File { path, speed: args.speed },
        None if args.finnhub => crate::produce::Feed::Finnhub {
            url: args.finnhub_url,
            token: std::env::var("FINNHUB_API_KEY")
                .context("--finnhub needs the API key in FINNHUB_API_KEY (free at finnhub.io)")?,
            symbols,
        },
        None => crate::produce::Feed::Synthetic {
            symbols,
            rate: args.rate,
            start_ms: args.start_ms.unwrap_or(now_ms),
            seed: args.seed,
        },
    };
    let options = crate::produce::ProduceOptions {
        brokers: args.brokers,
        topic: args.topic,
        feed,
        trades,
        paced: !args.as_fast_as_possible,
    };
    let stats = crate::produce::produce(&options, |sent, elapsed| {
        eprintln!(
            "tickfold: produced {sent} trades to `{}` ({:.0}/s)",
            options.topic,
            sent as f64 / elapsed.as_secs_f64().max(1e-9)
        );
    })?;
    if stats.failed > 0 {
        bail!(
            "{} of {} trades were not acknowledged (first error: {})",
            stats.failed,
            stats.sent,
            stats.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

fn load_chain(args: &ExecArgs) -> Result<(Vec<LoadedPlugin>, Vec<Vec<crate::plugin::Param>>)> {
    let runtime = args.runtime.runtime()?;
    let plugins: Vec<LoadedPlugin> = args.plugins.iter().map(|p| runtime.load_file(p)).collect::<Result<_, _>>()?;
    let params = assign_params(&plugins, &args.params)?;
    Ok((plugins, params))
}

/// The writer `--output` and `--format` ask for.
fn output_writer<'a>(
    args: &ExecArgs,
    series: impl Iterator<Item = (&'a str, &'a [String])>,
) -> Result<Box<dyn OutputWriter + Send>> {
    let format = match (args.format, &args.output) {
        (Some(f), _) => f,
        (None, Some(p)) if has_ext(p, &["jsonl", "ndjson", "json"]) => Format::Jsonl,
        _ => Format::Csv,
    };
    let sink: Box<dyn Write + Send> = match &args.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout()),
    };
    let sink = BufWriter::with_capacity(1 << 16, sink);
    Ok(match format {
        Format::Jsonl => Box::new(JsonlWriter(sink)),
        Format::Csv => Box::new(CsvWriter::new(sink, series)?),
    })
}

fn summary(input: &Path, rows_in: u64, late: u64, samples_out: u64, started: Instant) -> Result<()> {
    if rows_in == 0 {
        bail!("{}: no rows (is it empty?)", input.display());
    }
    eprintln!(
        "tickfold: {rows_in} rows in, {late} late (below the watermark on arrival, left out), {samples_out} samples out, {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let symbols: Vec<&str> = args.symbols.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
    if symbols.is_empty() {
        bail!("--symbols is empty; name at least one symbol");
    }
    let jsonl = has_ext(&args.output, &["jsonl", "ndjson", "json"]);
    let file = std::fs::File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    if !jsonl {
        writeln!(out, "symbol,ts,price,size")?;
    }
    let market = crate::synthetic::Market::new(args.seed, &symbols, args.start_ms, args.rate);
    for t in market.take(args.trades) {
        let symbol = symbols[t.symbol];
        // `{:?}` is the shortest form that reads back to the same f64.
        if jsonl {
            writeln!(out, r#"{{"symbol":"{symbol}","ts":{},"price":{:?},"size":{:?}}}"#, t.ts, t.price, t.size)?;
        } else {
            writeln!(out, "{symbol},{},{:?},{:?}", t.ts, t.price, t.size)?;
        }
    }
    out.flush()?;
    eprintln!("tickfold: wrote {} trades of {} symbols to {}", args.trades, symbols.len(), args.output.display());
    Ok(())
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn admin_client(args: &AdminArgs) -> Result<crate::client::AdminClient> {
    crate::client::AdminClient::new(&args.admin, args.token.clone())
}

fn print_change(status: &crate::deploy::ChangeStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
    } else {
        println!("{}", crate::client::describe_change(status));
    }
    Ok(())
}

fn deploy(args: DeployArgs) -> Result<()> {
    let request = crate::client::Deploy {
        name: args.name,
        inputs: args.input,
        params: args.params,
        rename: args.rename,
        wait_ms: args.no_wait.then_some(0),
    };
    let status = admin_client(&args.admin)?.deploy(&args.wasm, &request)?;
    print_change(&status, args.admin.json)
}

fn plugins(args: PluginsArgs) -> Result<()> {
    let list = admin_client(&args.admin)?.plugins()?;
    if args.admin.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!("{}", crate::client::plugins_table(&list));
    }
    Ok(())
}

fn remove(args: RemoveArgs) -> Result<()> {
    let status = admin_client(&args.admin)?.remove(&args.name, args.no_wait.then_some(0))?;
    print_change(&status, args.admin.json)
}
