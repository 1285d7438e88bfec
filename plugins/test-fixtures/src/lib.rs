//! A plugin that misbehaves on request, for the host's sandbox tests.
//!
//! Its `mode` parameter picks what `process` does: `echo` (behave: emit
//! each sample), `trap` (panic, which is a WebAssembly trap), `loop` (never
//! return), `grow` (allocate without bound), `error` (return an error
//! value), `log` (log one line per sample), `sink` (consume and emit
//! nothing: what the crossing alone costs), `stray-key` (emit each sample
//! under a key id the host never gave it, which breaks the contract), or
//! `probe` (try to reach
//! outside the sandbox and report, per sample, on output `probe`, what it
//! found: 1.0 where a directory listing, an environment variable or a TCP
//! connection worked, and the wall clock in ms).

use tickfold_sdk::prelude::*;

/// See the crate docs.
pub struct Misbehave {
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    Trap,
    Loop,
    Grow,
    Error,
    Log,
    Probe,
    Sink,
    StrayKey,
}

impl StreamFunction for Misbehave {
    type State = u64;

    fn info() -> Info {
        Info::new("misbehave", env!("CARGO_PKG_VERSION"))
            .doc("Misbehaves on request, to test the host's sandbox.")
            .param("mode", Some("echo"), "echo, trap, loop, grow, error, log, probe, sink or stray-key")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let mode = match params.raw("mode") {
            "echo" => Mode::Echo,
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "grow" => Mode::Grow,
            "error" => Mode::Error,
            "log" => Mode::Log,
            "probe" => Mode::Probe,
            "sink" => Mode::Sink,
            "stray-key" => Mode::StrayKey,
            other => {
                return Err(params.bad(
                    "mode",
                    other,
                    "one of echo, trap, loop, grow, error, log, probe, sink, stray-key",
                ));
            }
        };
        io.input("input", &["value"], "any series");
        io.output("echo", &["value", "count"], "the input, with a running count per key");
        io.output("probe", &["fs", "env", "net", "clock_ms"], "what `probe` reached outside the sandbox");
        Ok(Misbehave { mode })
    }

    fn process(&mut self, input: &Batch, state: &mut KeyedState<u64>, out: &mut Output) -> Result<(), PluginError> {
        match self.mode {
            Mode::Trap => panic!("misbehave: asked to trap"),
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Grow => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Error => return Err(PluginError::Failed("misbehave: asked to fail".into())),
            Mode::Probe => {
                let fs = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
                let env = std::env::vars().next().is_some();
                let net = std::net::TcpStream::connect("127.0.0.1:1").is_ok();
                let clock_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(-1.0, |d| d.as_millis() as f64);
                for row in input.rows() {
                    out.emit(
                        1,
                        row.key,
                        row.ts,
                        &[f64::from(u8::from(fs)), f64::from(u8::from(env)), f64::from(u8::from(net)), clock_ms],
                    );
                }
                return Ok(());
            }
            Mode::Sink => return Ok(()),
            Mode::StrayKey => {
                for row in input.rows() {
                    out.emit(0, row.key + 1_000_000, row.ts, &[row.field(0), 0.0]);
                }
                return Ok(());
            }
            Mode::Echo | Mode::Log => {}
        }
        for row in input.rows() {
            let count = state.get_mut(row.key);
            *count += 1;
            if self.mode == Mode::Log {
                tickfold_sdk::log::info(&format!("sample {} of key {}", count, row.key));
            }
            out.emit(0, row.key, row.ts, &[row.field(0), *count as f64]);
        }
        Ok(())
    }
}

tickfold_sdk::export!(Misbehave);
