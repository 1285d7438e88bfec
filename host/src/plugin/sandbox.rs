//! The sandbox one plugin instance runs in: the data of its `Store`.
//!
//! What a plugin can reach, decided here and nowhere else:
//! - WASI, because every language's standard library imports it, but
//!   empty: no preopened directories, no environment or arguments, no
//!   network (every socket address is refused, name lookup is off), a wall
//!   and monotonic clock frozen at zero (time comes from the data, and a
//!   replay must compute the same thing), and a fixed random seed (so
//!   `HashMap` iteration order, say, cannot make two runs differ).
//! - Standard output and error go to the host's log, rate-limited, and the
//!   last few KiB are kept to explain a trap (a Rust panic prints there).
//! - `tickfold:plugin/log`, rate-limited the same way.
//! - Linear memory up to a limit; growing past it traps with a message
//!   that names the limit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::tickfold::plugin::log::{self as wit_log, Level};
use super::limits::SandboxLimits;

/// How much of the guest's recent output is kept for trap reports.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Every instance's randomness comes from this seed, so that two runs over
/// the same data compute the same thing. Plugins have no use for secrets.
const RANDOM_SEED: u64 = 0x71c6_f01d;

/// The data of one plugin instance's `Store`.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_limit_bytes: usize,
    /// Set when the limiter refused a memory growth, to classify the trap.
    pub(crate) memory_refused: bool,
    pub(crate) log: Arc<Mutex<PluginLog>>,
}

impl Sandbox {
    /// A sandbox for one instance of plugin `plugin` (its name, for logs).
    pub fn new(plugin: &str, limits: &SandboxLimits) -> Self {
        let log = Arc::new(Mutex::new(PluginLog::new(plugin, limits.log_lines_per_second)));
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput { log: log.clone(), level: Level::Info })
            .stderr(GuestOutput { log: log.clone(), level: Level::Warn })
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(StdRng::seed_from_u64(RANDOM_SEED))
            .insecure_random(StdRng::seed_from_u64(RANDOM_SEED))
            .insecure_random_seed(u128::from(RANDOM_SEED))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            memory_limit_bytes: limits.memory_bytes,
            memory_refused: false,
            log,
        }
    }

    /// The last lines the guest printed (a panic message, typically).
    pub fn output_tail(&self) -> String {
        self.log.lock().expect("plugin log lock").tail()
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime::ResourceLimiter for Sandbox {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit_bytes {
            self.memory_refused = true;
            // An error (not `Ok(false)`) traps at once, rather than handing
            // the guest a failed allocation it would abort on anyway.
            return Err(wasmtime::format_err!(
                "plugin memory limit of {} MiB reached (it has {} MiB and asked for {} MiB)",
                self.memory_limit_bytes >> 20,
                current >> 20,
                desired >> 20
            ));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// `types` declares only types; its host trait has nothing to implement.
impl super::bindings::tickfold::plugin::types::Host for Sandbox {}

impl wit_log::Host for Sandbox {
    fn log(&mut self, level: Level, message: String) {
        self.log.lock().expect("plugin log lock").line(level, &message);
    }
}

/// A plugin instance's log: a token bucket of lines per second, a count of
/// what it suppressed, and the tail of its standard output and error.
pub struct PluginLog {
    plugin: String,
    per_second: f64,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    /// Lines suppressed over the instance's life.
    pub(crate) suppressed_total: u64,
    partial: Vec<u8>,
    partial_level: Option<Level>,
    tail: VecDeque<u8>,
}

impl PluginLog {
    fn new(plugin: &str, per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        PluginLog {
            plugin: plugin.to_string(),
            per_second,
            tokens: per_second,
            refilled: Instant::now(),
            suppressed: 0,
            suppressed_total: 0,
            partial: Vec::new(),
            partial_level: None,
            tail: VecDeque::with_capacity(OUTPUT_TAIL_BYTES),
        }
    }

    /// Logs one line, unless over the rate; the next line that gets through
    /// says how many were suppressed.
    pub fn line(&mut self, level: Level, message: &str) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            self.suppressed_total += 1;
            return;
        }
        self.tokens -= 1.0;
        let suppressed = std::mem::take(&mut self.suppressed);
        let plugin = self.plugin.as_str();
        let message = message.trim_end();
        match level {
            Level::Trace => tracing::trace!(plugin, suppressed, "{message}"),
            Level::Debug => tracing::debug!(plugin, suppressed, "{message}"),
            Level::Info => tracing::info!(plugin, suppressed, "{message}"),
            Level::Warn => tracing::warn!(plugin, suppressed, "{message}"),
            Level::Error => tracing::error!(plugin, suppressed, "{message}"),
        }
    }

    /// Takes raw guest output: keeps its tail, and logs complete lines.
    fn output(&mut self, level: Level, bytes: &[u8]) {
        for &b in bytes {
            if self.tail.len() == OUTPUT_TAIL_BYTES {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
        }
        if self.partial_level.is_some_and(|l| l != level) {
            self.flush_partial();
        }
        self.partial_level = Some(level);
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.line(level, &String::from_utf8_lossy(&line));
        }
        if self.partial.len() > OUTPUT_TAIL_BYTES {
            self.flush_partial();
        }
    }

    fn flush_partial(&mut self) {
        if let Some(level) = self.partial_level
            && !self.partial.is_empty()
        {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(level, &line);
        }
    }

    fn tail(&self) -> String {
        let bytes: Vec<u8> = self.tail.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// The guest's standard output or error, fed into its [`PluginLog`].
struct GuestOutput {
    log: Arc<Mutex<PluginLog>>,
    level: Level,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestOutput { log: self.log.clone(), level: self.level })
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.log.lock().expect("plugin log lock").output(self.level, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A clock stopped at zero: plugins get time from the data only.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_rate_are_counted_not_printed() {
        let mut log = PluginLog::new("chatty", 10);
        for i in 0..100 {
            log.line(Level::Info, &format!("line {i}"));
        }
        // A burst of 10 gets through at once; the rest wait for tokens.
        assert!((88..=90).contains(&log.suppressed_total), "{}", log.suppressed_total);
    }

    #[test]
    fn guest_output_keeps_a_tail_and_splits_lines() {
        let mut log = PluginLog::new("p", 1000);
        log.output(Level::Warn, b"thread 'main' panicked at src/lib.rs:3:5:\nboom\n");
        log.output(Level::Warn, &vec![b'x'; 2 * OUTPUT_TAIL_BYTES]);
        assert_eq!(log.tail().len(), OUTPUT_TAIL_BYTES);
        let mut log = PluginLog::new("p", 1000);
        log.output(Level::Warn, b"panicked: boom\n");
        assert_eq!(log.tail(), "panicked: boom");
    }
}
