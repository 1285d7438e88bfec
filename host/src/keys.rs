//! Interning of keys (symbols) to dense `u32` ids.
//!
//! Names cross the WebAssembly boundary once per key and instance, ids
//! with every sample. Ids are dense from 0, so plugins index vectors with
//! them.

use rustc_hash::FxHashMap;

/// A key's id.
pub type KeyId = u32;

/// Names to ids and back.
#[derive(Clone, Debug, Default)]
pub struct KeyTable {
    ids: FxHashMap<String, KeyId>,
    names: Vec<String>,
}

impl KeyTable {
    /// The id of `name`, assigning the next one on first sight.
    pub fn intern(&mut self, name: &str) -> KeyId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = KeyId::try_from(self.names.len()).expect("fewer than 2^32 keys");
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        id
    }

    /// The name of `id`. Panics on an id this table never gave out.
    pub fn name(&self, id: KeyId) -> &str {
        &self.names[id as usize]
    }

    /// The id of `name`, if interned.
    pub fn get(&self, name: &str) -> Option<KeyId> {
        self.ids.get(name).copied()
    }

    /// How many keys are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no key is interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_stable() {
        let mut t = KeyTable::default();
        assert_eq!((t.intern("AAPL"), t.intern("MSFT"), t.intern("AAPL")), (0, 1, 0));
        assert_eq!(t.name(1), "MSFT");
        assert_eq!(t.get("TSLA"), None);
    }
}
