//! A bounded memo of credentials already verified in this VM: a credential presented again
//! costs a hash lookup instead of its MAC check. Callers key it by the exact credential (plus
//! whatever the credential is bound to) and re-check expiry on every hit. A memo lives as long
//! as one configuration, so a rotated key never honours what the old one verified.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Entries kept before the memo starts over (bounded memory, no eviction bookkeeping).
pub const CAPACITY: usize = 4096;

pub struct Memo<K, V> {
    map: HashMap<K, V>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq, V> Memo<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.map.len() >= CAPACITY {
            self.map.clear();
        }
        self.map.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded() {
        let mut memo = Memo::default();
        for i in 0..CAPACITY + 10 {
            memo.insert(i.to_string(), i);
        }
        assert!(memo.len() <= CAPACITY);
        assert!(!memo.is_empty());
        assert_eq!(
            memo.get(&(CAPACITY + 9).to_string()[..]),
            Some(&(CAPACITY + 9))
        );
    }
}
