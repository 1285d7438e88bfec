//! Write Tickfold stream-function plugins in ordinary Rust.
//!
//! A plugin is a WebAssembly component that implements the contract in
//! `wit/plugin.wit`. This crate hides that contract: you implement
//! [`StreamFunction`] on a struct that holds your parameters, name a type for
//! the state you keep per key, and call [`export!`]. The SDK keeps per-key
//! state in a vector indexed by the host's key ids, saves it under key names
//! for checkpoints and upgrades, parses and checks parameters, and turns the
//! host's columnar batches into slices you can loop over.
//!
//! A complete plugin, a running per-key maximum of one field:
//!
//! ```
//! use tickfold_sdk::prelude::*;
//!
//! /// Emits the highest value seen so far for each key.
//! pub struct RunningMax {
//!     out: usize,
//! }
//!
//! impl StreamFunction for RunningMax {
//!     type State = Option<f64>;
//!
//!     fn info() -> Info {
//!         Info::new("running-max", env!("CARGO_PKG_VERSION"))
//!             .doc("The highest `value` seen so far, per key.")
//!             .param("field", Some("price"), "input field to track")
//!     }
//!
//!     fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError> {
//!         let field: String = params.get("field")?;
//!         io.input("input", &[field.as_str()], "the series to track");
//!         let out = io.output("max", &["max"], "running maximum per key");
//!         Ok(RunningMax { out })
//!     }
//!
//!     fn process(
//!         &mut self,
//!         input: &Batch,
//!         state: &mut KeyedState<Self::State>,
//!         out: &mut Output,
//!     ) -> Result<(), PluginError> {
//!         for row in input.rows() {
//!             let max = state.get_mut(row.key);
//!             let value = row.field(0);
//!             if max.is_none_or(|m| value > m) {
//!                 *max = Some(value);
//!                 out.emit(self.out, row.key, row.ts, &[value]);
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! tickfold_sdk::export!(RunningMax);
//!
//! // The same plugin runs natively for unit tests:
//! let mut h = tickfold_sdk::testing::Harness::<RunningMax>::open(&[]).unwrap();
//! let rows = h.run(&[("AAPL", 1, vec![10.0]), ("AAPL", 2, vec![9.0]), ("AAPL", 3, vec![11.0])], None).unwrap();
//! assert_eq!(rows.iter().map(|r| r.values[0]).collect::<Vec<_>>(), vec![10.0, 11.0]);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (or
//! `cargo component build --release`) and check it with
//! `tickfold check target/wasm32-wasip2/release/NAME.wasm`.
//!
//! Module map:
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`params`] | parameter declarations, parsing, and the messages for bad ones |
//! | [`state`] | per-key state indexed by key id, saved by key name |
//! | [`window`] | event-time tumbling and sliding windows closed by the watermark |
//! | [`output`] | the columnar output batches a call returns |
//! | [`runtime`] | one plugin instance: validation, dispatch, snapshot and restore |
//! | [`testing`] | running a plugin natively over rows, for unit tests |
//! | [`log`] | logging to the host from inside the sandbox |
#![deny(missing_docs)]

pub mod log;
pub mod output;
pub mod params;
pub mod runtime;
pub mod state;
pub mod testing;
pub mod window;

mod batch;

pub use batch::{Row, Rows};
pub use output::Output;
pub use params::{Info, Io, Params};
pub use runtime::Instance;
pub use state::KeyedState;

/// The bindings generated from `wit/plugin.wit`. Used by [`export!`]; plugin
/// code rarely needs them directly.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        // The SDK defines the bindings once; `export!` in a plugin crate
        // points the generated export glue back here.
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        default_bindings_module: "tickfold_sdk::bindings",
        // Debug, PartialEq and Clone on records, for tests and the harness.
        additional_derives: [PartialEq, Clone],
    });
}

pub use bindings::tickfold::plugin::types::{
    Batch, Descriptor, KeyName, KeyState, Param, ParamDecl, PluginError, SeriesDecl, Snapshot,
};

/// A host-interned key (symbol) id. Dense and small: index vectors with it.
pub type KeyId = u32;
/// Event time in milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A stream function: what a plugin author implements.
///
/// `Self` holds what the parameters decide (periods, window lengths, output
/// indices); [`Self::State`] is what the plugin remembers per key. The SDK
/// creates one `State` per key on first use, keeps it in a vector indexed
/// by key id, and saves and restores it under the key's name, so a plugin
/// gets checkpoints, restarts and upgrades without writing any of that.
pub trait StreamFunction: Sized + 'static {
    /// Per-key state. Saved with `postcard`, so change its layout only
    /// together with [`Self::STATE_FORMAT_VERSION`].
    type State: Default + serde::Serialize + serde::de::DeserializeOwned;

    /// The version of `State`'s saved format. Bump it when `State` changes,
    /// and accept older formats in [`Self::migrate_state`] if you can.
    const STATE_FORMAT_VERSION: u32 = 1;

    /// The plugin's name, version, documentation and parameters.
    fn info() -> Info;

    /// Makes an instance from checked parameters and declares its input
    /// and output series on `io`. Return [`PluginError::BadParams`] for
    /// values that parse but make no sense (a period of 0, say).
    fn open(params: &Params, io: &mut Io) -> Result<Self, PluginError>;

    /// Consumes one batch of one input series (`input.series` is the index
    /// that [`Io::input`] returned). Emit whatever it completes.
    fn process(
        &mut self,
        input: &Batch,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError>;

    /// Called when the watermark advances to `watermark`: windows that end
    /// at or before it can close. The default does nothing.
    fn on_watermark(
        &mut self,
        watermark: Millis,
        state: &mut KeyedState<Self::State>,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let _ = (watermark, state, out);
        Ok(())
    }

    /// Reads one key's state saved in an older format. The default refuses
    /// with a message naming both versions.
    fn migrate_state(format_version: u32, bytes: &[u8]) -> Result<Self::State, PluginError> {
        let _ = bytes;
        Err(PluginError::BadState(format!(
            "{}: saved state has format version {format_version}, this version reads only \
             version {}; start the plugin from empty state instead",
            Self::info().name,
            Self::STATE_FORMAT_VERSION
        )))
    }
}

/// Everything a plugin file needs, in one import.
pub mod prelude {
    pub use crate::window::{Placed, WindowSpec, Windows};
    pub use crate::{Batch, Info, Io, KeyId, KeyedState, Millis, Output, Params, PluginError, Row, StreamFunction};
}

/// Exports a [`StreamFunction`] as the plugin's WebAssembly component.
///
/// Write it once, at the end of the plugin's `lib.rs`. On wasm32 it emits
/// the component's exports; on other targets it only checks the type, so
/// the plugin crate still builds and runs its unit tests natively, and
/// several plugins can be linked into one native binary (benchmarks).
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct TickfoldExport;
            impl $crate::bindings::exports::tickfold::plugin::stream_function::Guest for TickfoldExport {
                type Operator = $crate::runtime::Exported<$plugin>;
                fn describe() -> $crate::Descriptor {
                    $crate::runtime::describe::<$plugin>()
                }
            }
    $crate::bindings::__export_bindings!(TickfoldExport with_types_in $crate::bindings);
        };
        const _: fn() = || {
            fn is_a_stream_function<T: $crate::StreamFunction>() {}
            is_a_stream_function::<$plugin>();
        };
    };
}

impl PluginError {
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            PluginError::BadParams(m)
            | PluginError::BadState(m)
            | PluginError::BadInput(m)
            | PluginError::Failed(m) => m,
        }
    }
}
