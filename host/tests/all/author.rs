//! A plugin author's workflow, as the README tells it: `cargo component new`,
//! add the SDK, write a plugin, build it, `tickfold check` and `tickfold
//! exec` it.

use std::path::Path;
use std::process::Command;

use crate::support::{TempDir, root};

/// The plugin a user writes: the price range per key over tumbling
/// windows, closed by the watermark.
const USER_PLUGIN: &str = r#"
use tickfold_sdk::prelude::*;

/// High minus low per key and window.
pub struct Range {
    spec: WindowSpec,
    out: usize,
}

impl StreamFunction for Range {
    type State = Windows<Option<(f64, f64)>>;

    fn info() -> Info {
        Info::new("range", env!("CARGO_PKG_VERSION"))
            .doc("Price range (high - low) per key and window.")
            .param("window", Some("1m"), "window length")
    }

    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
        let spec = WindowSpec::tumbling(params.duration_ms("window")?);
        io.input("trades", &["price"], "trades");
        let out = io.output("range", &["range"], "high - low");
        Ok(Range { spec, out })
    }

    fn process(&mut self, input: &Batch, state: &mut KeyedState<Self::State>, _: &mut Output) -> Result<(), PluginError> {
        let watermark = state.watermark();
        for row in input.rows() {
            let p = row.field(0);
            state.get_mut(row.key).add(&self.spec, row.ts, watermark, |_, acc| {
                let (hi, lo) = acc.get_or_insert((p, p));
                (*hi, *lo) = (hi.max(p), lo.min(p));
            });
        }
        Ok(())
    }

    fn on_watermark(&mut self, wm: Millis, state: &mut KeyedState<Self::State>, out: &mut Output) -> Result<(), PluginError> {
        for (key, windows) in state.iter_mut() {
            windows.close(&self.spec, wm, |start, acc| {
                if let Some((hi, lo)) = acc {
                    out.emit(self.out, key, start, &[hi - lo]);
                }
            });
        }
        Ok(())
    }
}

tickfold_sdk::export!(Range);
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cargo_component_new_then_sdk_then_check_and_exec() {
    let dir = TempDir::new("author");
    let has_cargo_component =
        Command::new("cargo").args(["component", "--version"]).output().is_ok_and(|o| o.status.success());
    assert!(has_cargo_component, "cargo-component is missing: run scripts/install-plugin-toolchain.sh");

    run(Command::new("cargo").args(["component", "new", "--lib", "range"]).current_dir(dir.path()));
    let krate = dir.path().join("range");

    // What the README says to change: depend on the SDK instead of the
    // generated bindings, and let the SDK provide the world.
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    let manifest = manifest
        .split("\n[package.metadata.component")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("wit-bindgen-rt"))
        .collect::<Vec<_>>()
        .join("\n");
    let sdk = root().join("plugins/sdk");
    let manifest = manifest.replace(
        "[dependencies]",
        &format!("[dependencies]\ntickfold-sdk = {{ path = {:?} }}", sdk.display().to_string()),
    );
    std::fs::write(krate.join("Cargo.toml"), format!("{manifest}\n\n[workspace]\n")).unwrap();
    std::fs::remove_file(krate.join("src/bindings.rs")).unwrap();
    std::fs::remove_dir_all(krate.join("wit")).unwrap();
    std::fs::write(krate.join("src/lib.rs"), USER_PLUGIN).unwrap();
    assert!(USER_PLUGIN.lines().filter(|l| !l.trim().is_empty()).count() <= 50, "a user plugin stays short");

    run(Command::new("cargo")
        .args(["component", "build", "--release"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", krate.join("target")));
    let wasm = krate.join("target/wasm32-wasip1/release/range.wasm");
    assert!(wasm.exists(), "{} missing", wasm.display());

    let tickfold = env!("CARGO_BIN_EXE_tickfold");
    let check = run(Command::new(tickfold).arg("check").arg(&wasm));
    assert!(check.contains("range 0.1.0") && check.contains("range: range"), "{check}");

    let csv = dir.path().join("trades.csv");
    std::fs::write(&csv, "symbol,ts,price,size\nAAPL,1000,10,1\nAAPL,2000,13,1\nMSFT,3000,5,1\nAAPL,61000,7,1\n")
        .unwrap();
    let out = run(Command::new(tickfold).arg("exec").arg(&wasm).args(["--format", "jsonl", "--input"]).arg(p(&csv)));
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<(String, i64, f64)> = rows
        .iter()
        .map(|r| (r["symbol"].as_str().unwrap().to_string(), r["ts"].as_i64().unwrap(), r["range"].as_f64().unwrap()))
        .collect();
    assert_eq!(got, vec![("AAPL".into(), 0, 3.0), ("MSFT".into(), 0, 0.0), ("AAPL".into(), 60_000, 0.0)]);
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
