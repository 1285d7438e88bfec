//! Loading a plugin: from bytes to a checked, compiled component whose
//! `describe` has been read.

use std::path::Path;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::bindings::{Plugin, PluginPre};
use super::error::Error;
use super::instance::{PluginInstance, classify};
use super::sandbox::Sandbox;
use crate::keys::KeyTable;

use super::{CONTRACT, Descriptor, EXPORT_NAME, LOG_IMPORT_NAME, Param, SandboxLimits, Snapshot, TYPES_IMPORT_NAME};

/// The engine, the linker with the sandbox's imports, and the limits:
/// made once per process and shared by every plugin.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<Sandbox>,
    limits: SandboxLimits,
}

impl PluginRuntime {
    /// Builds the runtime. `cache_dir` caches compiled components on disk.
    pub fn new(limits: SandboxLimits, cache_dir: Option<std::path::PathBuf>) -> wasmtime::Result<Self> {
        let engine = super::limits::engine(cache_dir)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |sandbox| sandbox)?;
        Ok(PluginRuntime { engine, linker, limits })
    }

    /// The limits every instance runs under.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Reads, checks and compiles the component at `path`.
    pub fn load_file(&self, path: &Path) -> Result<LoadedPlugin, Error> {
        let what = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|source| Error::Read { path: what.clone(), source })?.len();
        // Checked before reading, so a huge file is never loaded.
        if size > self.limits.max_component_bytes as u64 {
            return Err(Error::TooLarge { what, size: size as usize, limit: self.limits.max_component_bytes });
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Read { path: what.clone(), source })?;
        self.load(&what, &bytes)
    }

    /// Checks and compiles a component; `what` names it in messages.
    pub fn load(&self, what: &str, bytes: &[u8]) -> Result<LoadedPlugin, Error> {
        let what = what.to_string();
        if bytes.len() > self.limits.max_component_bytes {
            return Err(Error::TooLarge { what, size: bytes.len(), limit: self.limits.max_component_bytes });
        }
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', _, _, 0, 0]) => return Err(Error::CoreModule { what }),
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
            _ => return Err(Error::NotWasm { what }),
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| Error::Invalid { what: what.clone(), reason: format!("{e:#}") })?;
        self.check_world(&what, &component)?;
        let wrong_world =
            |e: wasmtime::Error| Error::WrongWorld { what: what.clone(), contract: CONTRACT, reason: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = PluginPre::new(pre).map_err(wrong_world)?;
        let descriptor = describe(&pre, &what, &self.limits)?;
        Ok(LoadedPlugin { pre, descriptor, limits: self.limits.clone(), source: what })
    }

    /// Names what is missing or foreign, before wasmtime's own, terser
    /// type check runs.
    fn check_world(&self, what: &str, component: &Component) -> Result<(), Error> {
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        if !exports.iter().any(|e| e == EXPORT_NAME) {
            let family = EXPORT_NAME.split('@').next().unwrap_or(EXPORT_NAME);
            if let Some(other) = exports.iter().find(|e| e.split('@').next() == Some(family)) {
                let found = format!("tickfold:plugin@{}", other.rsplit('@').next().unwrap_or("?"));
                return Err(Error::WrongVersion { what: what.into(), found, expected: CONTRACT });
            }
            let listed = if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
            return Err(Error::WrongWorld {
                what: what.into(),
                contract: CONTRACT,
                reason: format!(
                    "it exports {listed}, but a plugin must export `{EXPORT_NAME}` (implement StreamFunction and call tickfold_sdk::export!)"
                ),
            });
        }
        for (name, _) in ty.imports(&self.engine) {
            if name != LOG_IMPORT_NAME && name != TYPES_IMPORT_NAME && !name.starts_with("wasi:") {
                return Err(Error::WrongWorld {
                    what: what.into(),
                    contract: CONTRACT,
                    reason: format!(
                        "it imports `{name}`, which the sandbox does not provide; a plugin may import only `{LOG_IMPORT_NAME}` and WASI"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A checked, compiled plugin: clone it freely, open an instance per worker.
#[derive(Clone)]
pub struct LoadedPlugin {
    pre: PluginPre<Sandbox>,
    descriptor: Descriptor,
    limits: SandboxLimits,
    source: String,
}

impl LoadedPlugin {
    /// What the plugin said about itself.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// `name@version`, as in logs and errors.
    pub fn label(&self) -> String {
        format!("{}@{}", self.descriptor.name, self.descriptor.version)
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Opens an instance with `params`.
    pub fn open(&self, params: &[Param]) -> Result<PluginInstance, Error> {
        PluginInstance::open(self.new_store(), &self.pre, self.label(), &self.limits, params, None)
    }

    /// Opens an instance from a snapshot, and names every key the snapshot
    /// holds (interning them in `keys`): a restored instance owns exactly
    /// those keys, and a key that never sees another sample must still have
    /// its windows closed by the watermark. To move keys between instances,
    /// split the snapshot's key states first; they are independent.
    pub fn restore(&self, params: &[Param], snapshot: &Snapshot, keys: &mut KeyTable) -> Result<PluginInstance, Error> {
        let mut instance =
            PluginInstance::open(self.new_store(), &self.pre, self.label(), &self.limits, params, Some(snapshot))?;
        let ids: Vec<_> = snapshot.keys.iter().map(|k| keys.intern(&k.key)).collect();
        instance.name_keys(&ids, keys)?;
        Ok(instance)
    }

    fn new_store(&self) -> Store<Sandbox> {
        new_store(self.pre.engine(), &self.descriptor.name, &self.limits)
    }
}

pub(super) fn new_store(engine: &Engine, plugin: &str, limits: &SandboxLimits) -> Store<Sandbox> {
    let mut store = Store::new(engine, Sandbox::new(plugin, limits));
    store.limiter(|sandbox| sandbox);
    store.set_epoch_deadline(limits.deadline_ticks());
    store
}

/// Instantiates once in a scratch store to read `describe`.
fn describe(pre: &PluginPre<Sandbox>, what: &str, limits: &SandboxLimits) -> Result<Descriptor, Error> {
    let mut store = new_store(pre.engine(), what, limits);
    let plugin = pre
        .instantiate(&mut store)
        .map_err(|e| Error::Host { plugin: what.to_string(), reason: format!("cannot instantiate: {e:#}") })?;
    plugin
        .tickfold_plugin_stream_function()
        .call_describe(&mut store)
        .map_err(|e| classify(what, "describe", e, &store, limits))
}
