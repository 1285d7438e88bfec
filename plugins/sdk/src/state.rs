//! Per-key state, indexed by key id and saved by key name.
//!
//! Key ids are the host's dense u32s, so state lives in a vector and a
//! lookup is an index. Ids are only meaningful inside one instance;
//! snapshots therefore save each key's state under its name, and a restored
//! state waits, by name, until the host names the key again with an id
//! (`add-keys`).

use std::collections::HashMap;

use crate::{KeyId, KeyName, KeyState, Millis, PluginError};

/// The per-key state of one plugin instance, plus the last watermark it
/// was given.
#[derive(Debug)]
pub struct KeyedState<S> {
    slots: Vec<Option<S>>,
    names: Vec<Option<String>>,
    /// Restored state of keys the host has not named again yet.
    pending: HashMap<String, S>,
    /// Ids whose restored state arrived since [`KeyedState::take_restored`].
    restored: Vec<KeyId>,
    watermark: Millis,
}

impl<S> Default for KeyedState<S> {
    fn default() -> Self {
        KeyedState {
            slots: Vec::new(),
            names: Vec::new(),
            pending: HashMap::new(),
            restored: Vec::new(),
            watermark: Millis::MIN,
        }
    }
}

impl<S: Default> KeyedState<S> {
    /// The state of `key`, created with `Default` on first use.
    #[inline]
    pub fn get_mut(&mut self, key: KeyId) -> &mut S {
        let i = key as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].get_or_insert_with(S::default)
    }
}

impl<S> KeyedState<S> {
    /// The state of `key`, if it has any.
    pub fn get(&self, key: KeyId) -> Option<&S> {
        self.slots.get(key as usize)?.as_ref()
    }

    /// Forgets the state of `key` (a finished session, say).
    pub fn remove(&mut self, key: KeyId) -> Option<S> {
        self.slots.get_mut(key as usize)?.take()
    }

    /// Every key with state, in id order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (KeyId, &mut S)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.as_mut().map(|s| (i as KeyId, s)))
    }

    /// The name of `key`, once the host has sent it.
    pub fn name(&self, key: KeyId) -> Option<&str> {
        self.names.get(key as usize)?.as_deref()
    }

    /// True when the host has named `key`.
    #[inline]
    pub fn is_known(&self, key: KeyId) -> bool {
        matches!(self.names.get(key as usize), Some(Some(_)))
    }

    /// The keys whose saved state has been restored since the last call.
    ///
    /// Restored state reaches a key when the host names it, which can be
    /// long after the restore. A plugin that caches something across keys
    /// (the earliest time any window closes, say) folds these keys in.
    pub fn take_restored(&mut self) -> std::vec::Drain<'_, KeyId> {
        self.restored.drain(..)
    }

    /// The last watermark this instance was given (`Millis::MIN` before the
    /// first). Samples derived from closed windows may be older.
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    pub(crate) fn set_watermark(&mut self, watermark: Millis) {
        self.watermark = self.watermark.max(watermark);
    }

    /// Records key names, and moves any restored state saved under a name
    /// to the key's id.
    pub(crate) fn add_keys(&mut self, keys: Vec<KeyName>) {
        for KeyName { id, name } in keys {
            let i = id as usize;
            if i >= self.names.len() {
                self.names.resize_with(i + 1, || None);
            }
            if let Some(state) = self.pending.remove(&name) {
                if i >= self.slots.len() {
                    self.slots.resize_with(i + 1, || None);
                }
                self.slots[i] = Some(state);
                self.restored.push(id);
            }
            self.names[i] = Some(name);
        }
    }
}

impl<S: serde::Serialize + serde::de::DeserializeOwned> KeyedState<S> {
    /// Saves every key's state under its name, and the watermark.
    pub(crate) fn save(&self) -> (Vec<u8>, Vec<KeyState>) {
        let mut keys = Vec::with_capacity(self.slots.len() + self.pending.len());
        for (i, slot) in self.slots.iter().enumerate() {
            if let (Some(state), Some(Some(name))) = (slot, self.names.get(i)) {
                keys.push(KeyState { key: name.clone(), state: encode(state) });
            }
        }
        // Restored keys not yet routed here again are carried over, so a
        // snapshot right after a restore loses nothing.
        let mut pending: Vec<_> = self.pending.iter().collect();
        pending.sort_by(|a, b| a.0.cmp(b.0));
        for (name, state) in pending {
            keys.push(KeyState { key: name.clone(), state: encode(state) });
        }
        (encode(&self.watermark), keys)
    }

    /// Rebuilds state from a snapshot; `decode` reads one key's bytes
    /// (directly, or through the plugin's migration).
    pub(crate) fn load(
        shared: &[u8],
        keys: Vec<KeyState>,
        decode: impl Fn(&[u8]) -> Result<S, PluginError>,
    ) -> Result<Self, PluginError> {
        let watermark = if shared.is_empty() {
            Millis::MIN
        } else {
            postcard::from_bytes(shared)
                .map_err(|e| PluginError::BadState(format!("the saved watermark cannot be read: {e}")))?
        };
        let mut pending = HashMap::with_capacity(keys.len());
        for KeyState { key, state } in keys {
            let value = decode(&state).map_err(|e| PluginError::BadState(format!("state of key `{key}`: {e}")))?;
            if pending.insert(key.clone(), value).is_some() {
                return Err(PluginError::BadState(format!("key `{key}` appears twice in the snapshot")));
            }
        }
        Ok(KeyedState { slots: Vec::new(), names: Vec::new(), pending, restored: Vec::new(), watermark })
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes any serde value into a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(id: u32, name: &str) -> KeyName {
        KeyName { id, name: name.into() }
    }

    #[test]
    fn state_moves_to_new_ids_by_name() {
        let mut a = KeyedState::<(u64, f64)>::default();
        a.add_keys(vec![name(0, "AAPL"), name(1, "MSFT")]);
        *a.get_mut(0) = (3, 1.5);
        *a.get_mut(1) = (7, 2.5);
        a.set_watermark(42);
        let (shared, keys) = a.save();

        let mut b = KeyedState::<(u64, f64)>::load(&shared, keys, |bytes| {
            postcard::from_bytes(bytes).map_err(|e| PluginError::BadState(e.to_string()))
        })
        .unwrap();
        assert_eq!(b.watermark(), 42);
        // MSFT now has id 0 and AAPL is not routed here yet.
        b.add_keys(vec![name(0, "MSFT")]);
        assert_eq!(b.get(0), Some(&(7, 2.5)));
        // A snapshot still carries AAPL, waiting by name.
        let (_, keys) = b.save();
        let saved: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(saved, vec!["MSFT", "AAPL"]);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_key() {
        let keys = vec![KeyState { key: "AAPL".into(), state: vec![0xff; 3] }];
        let err = KeyedState::<(u64, f64)>::load(&[], keys, |bytes| {
            postcard::from_bytes(bytes).map_err(|e| PluginError::BadState(e.to_string()))
        })
        .unwrap_err();
        assert!(err.message().contains("key `AAPL`"), "{err}");
    }
}
