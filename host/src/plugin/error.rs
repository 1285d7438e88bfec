//! Everything that can go wrong loading or running a plugin.
//!
//! Two tiers, kept apart: a plugin that *returns* an error (bad parameters,
//! a state it cannot read) is [`Error::Rejected`] and keeps running; a plugin
//! that traps, overruns its deadline or its memory, or returns outputs that
//! break the contract, is [`Error::Stopped`] and takes no more calls. Every message names the plugin and says what to do.

use super::GuestError;

/// A plugin could not be loaded, or a call into it failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: cannot read the plugin file: {source}")]
    Read { path: String, source: std::io::Error },

    /// The file is larger than the configured limit.
    #[error(
        "{what}: the file has {size} bytes, over the limit of {limit} (raise `max_component_bytes` in [plugins.limits] if it is genuine)"
    )]
    TooLarge { what: String, size: usize, limit: usize },

    /// Not WebAssembly at all.
    #[error(
        "{what}: not a WebAssembly file (it does not start with the bytes `\\0asm`); give the `.wasm` that `cargo component build --release` or `cargo build --release --target wasm32-wasip2` wrote"
    )]
    NotWasm { what: String },

    /// A core module where a component is needed.
    #[error(
        "{what}: a core WebAssembly module, not a component; build the plugin with `cargo build --release --target wasm32-wasip2` or `cargo component build --release`, which make components (wasm32-unknown-unknown and plain wasm32-wasip1 builds make core modules)"
    )]
    CoreModule { what: String },

    /// Wasmtime could not validate or compile it.
    #[error("{what}: not a valid WebAssembly component: {reason}")]
    Invalid { what: String, reason: String },

    /// A component, but not of the plugin world.
    #[error("{what}: does not implement the Tickfold plugin contract ({contract}): {reason}")]
    WrongWorld { what: String, contract: &'static str, reason: String },

    /// A plugin of another version of the contract.
    #[error(
        "{what}: built against contract {found}, but this host implements {expected}; rebuild the plugin with a tickfold-sdk for {expected}"
    )]
    WrongVersion { what: String, found: String, expected: &'static str },

    /// The plugin returned an error value (bad parameters, bad state, ...).
    #[error("plugin `{plugin}` refused {call}: {}", guest_message(.error))]
    Rejected { plugin: String, call: &'static str, error: GuestError },

    /// The plugin trapped, ran out of time or memory: it is stopped.
    #[error("plugin `{plugin}` stopped during {call}: {reason}{}", detail_suffix(.detail))]
    Stopped { plugin: String, call: &'static str, reason: StopReason, detail: String },

    /// A call to an instance that was stopped before.
    #[error("plugin `{plugin}` was stopped earlier ({reason}) and takes no more calls; fix and redeploy it")]
    AlreadyStopped { plugin: String, reason: String },

    /// Wasmtime failed for another reason (instantiation, say).
    #[error("plugin `{plugin}`: {reason}")]
    Host { plugin: String, reason: String },
}

/// Why a plugin was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A WebAssembly trap (a panic in Rust is an `unreachable` trap).
    Trap(String),
    /// A call ran past the deadline.
    Deadline { timeout_ms: u64 },
    /// It tried to grow its memory past the limit.
    Memory { limit_bytes: usize },
    /// It returned outputs the contract does not allow (an undeclared
    /// series, columns of different lengths, a key it was never given).
    BadOutput(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Trap(what) => write!(f, "it trapped ({what})"),
            StopReason::Deadline { timeout_ms } => write!(
                f,
                "a call ran longer than the {timeout_ms} ms deadline (an endless loop?; the limit is `call_timeout_ms` in [plugins.limits])"
            ),
            StopReason::Memory { limit_bytes } => write!(
                f,
                "it used more than its {} MiB of memory (the limit is `memory_bytes` in [plugins.limits])",
                limit_bytes >> 20
            ),
            StopReason::BadOutput(what) => {
                write!(f, "it broke the plugin contract (wit/plugin.wit), a bug in the plugin: it returned {what}")
            }
        }
    }
}

impl Error {
    /// True when the plugin (not the host or the file) is at fault and was
    /// stopped: the caller should take it out of service.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Error::Stopped { .. } | Error::AlreadyStopped { .. })
    }
}

fn guest_message(e: &GuestError) -> String {
    match e {
        GuestError::BadParams(m) => format!("bad parameters: {m}"),
        GuestError::BadState(m) => format!("bad state: {m}"),
        GuestError::BadInput(m) => format!("bad input: {m}"),
        GuestError::Failed(m) => format!("failed: {m}"),
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() { String::new() } else { format!("\n{detail}") }
}
