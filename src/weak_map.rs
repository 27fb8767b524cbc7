//! A map of per-key shared values made on demand and forgotten once nobody
//! holds them: per-tenant gates and call slots exist only for tenants in use,
//! so a server that has seen a million tenants does not keep a million
//! entries.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

pub struct WeakMap<K, V> {
    map: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    values: HashMap<K, Weak<V>>,
    /// Dead entries are swept when the map grows past this.
    sweep_at: usize,
}

impl<K: Eq + Hash + Copy, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            map: Mutex::new(Entries {
                values: HashMap::new(),
                sweep_at: 0,
            }),
        }
    }
}

impl<K: Eq + Hash + Copy, V> WeakMap<K, V> {
    /// The value of `key`: the one somebody still holds, or a new one.
    pub fn get_or_make(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self
            .map
            .lock()
            .expect("the weak map lock is never poisoned");
        if let Some(value) = map.values.get(&key).and_then(Weak::upgrade) {
            return value;
        }
        if map.values.len() >= map.sweep_at {
            map.values.retain(|_, value| value.strong_count() > 0);
            map.sweep_at = (map.values.len() * 2).max(64);
        }
        let value = Arc::new(make());
        map.values.insert(key, Arc::downgrade(&value));
        value
    }

    /// The value of `key`, if somebody still holds it.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.map
            .lock()
            .expect("the weak map lock is never poisoned")
            .values
            .get(key)
            .and_then(Weak::upgrade)
    }

    /// The values somebody still holds.
    pub fn values(&self) -> Vec<Arc<V>> {
        self.map
            .lock()
            .expect("the weak map lock is never poisoned")
            .values
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Entries, dead ones included until the next sweep.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .expect("the weak map lock is never poisoned")
            .values
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_held_and_forgotten_after() {
        let map = WeakMap::<u32, ()>::default();
        let first = map.get_or_make(7, || ());
        assert!(Arc::ptr_eq(&first, &map.get_or_make(7, || ())));
        drop(first);
        for key in 0..200 {
            drop(map.get_or_make(1000 + key, || ()));
        }
        assert!(map.len() < 200, "dead entries are swept: {}", map.len());
    }
}
