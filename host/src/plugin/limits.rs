//! The runtime's limits and the engine that enforces them, as a list of
//! decisions, each with its reason.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Limits on every plugin instance. Configured in `[plugins.limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Linear memory one instance may use, in bytes. Growing past it traps
    /// and stops the plugin. Default 256 MiB.
    pub memory_bytes: usize,
    /// Wall time one call into a plugin may take before it is interrupted
    /// and the plugin stopped. Generous by default (2 s): a call handles a
    /// batch of thousands of samples in well under a millisecond, so only a
    /// runaway loop gets near it.
    pub call_timeout_ms: u64,
    /// The largest component file accepted, in bytes. Default 64 MiB.
    pub max_component_bytes: usize,
    /// Log lines (its own and its stdout/stderr) one instance may print per
    /// second before lines are counted instead of printed.
    pub log_lines_per_second: u32,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 256 << 20,
            call_timeout_ms: 2_000,
            max_component_bytes: 64 << 20,
            log_lines_per_second: 10,
        }
    }
}

/// How often the engine's epoch advances. Deadlines are counted in these
/// ticks, so a call is interrupted between `timeout` and `timeout + TICK`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

impl SandboxLimits {
    /// The call deadline in epoch ticks (at least one).
    pub fn deadline_ticks(&self) -> u64 {
        (self.call_timeout_ms / EPOCH_TICK.as_millis() as u64).max(1)
    }
}

/// Builds the engine every plugin runs on.
///
/// `cache_dir`: where compiled components are cached on disk (wasmtime's
/// own cache, keyed by the component's bytes and the compiler's settings),
/// so a restart does not compile again. `None` compiles in memory only.
pub fn engine(cache_dir: Option<PathBuf>) -> wasmtime::Result<wasmtime::Engine> {
    let mut config = wasmtime::Config::new();
    // Plugins are components (the WIT contract), not core modules.
    config.wasm_component_model(true);
    // Runaway code is stopped by epochs rather than fuel: an epoch check is
    // a load and a compare at loop heads and function entries, far cheaper
    // than counting fuel on every block, and deadlines are wall time, which
    // is what an operator means by "a call may take at most N ms".
    config.epoch_interruption(true);
    // Traps carry the guest's function names, for the report.
    config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
    // A deep recursion traps as a stack overflow instead of growing without
    // bound; 1 MiB is plenty for stream functions.
    config.max_wasm_stack(1 << 20);
    // Cranelift's default optimisation level is `speed`; say so, because
    // the per-sample cost of plugins depends on it.
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if let Some(dir) = cache_dir {
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    let engine = wasmtime::Engine::new(&config)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a background
/// thread, which ends when the engine is dropped.
fn start_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tickfold-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
