//! The filter's token keys, and how they reach it. Whoever holds them can mint L402 tokens and
//! leases, so they are never in the plugin configuration (which `tollway envoy` renders into
//! `envoy.yaml`, Envoy shows in `/config_dump` and Istio keeps in a `WasmPlugin`): the filter
//! reads them from its VM's environment ([`ENV_FILTER_KEYS`], which Envoy's
//! `vm_config.environment_variables` fills from the proxy's own environment, and Istio's
//! `vmConfig.env` from a Kubernetes Secret).
//!
//! Rotation: every token names the key it was minted with (its key id, [`KeyId`]); a key set
//! holds the current key, which mints, and previous keys, each accepted until a set time.
//!
//! Wire form of the variable: entries separated by `,`, each
//! `<kind>:<key hex>` (the current key of that kind) or `<kind>:<key hex>:<until>` (a previous
//! key, accepted until that unix time); `kind` is `l402` or `lease`. Key ids are derived from
//! the keys, so nothing else needs to agree on them.

use std::fmt;

use crate::hmac::sha256;
use crate::l402::FilterKey;
use crate::lease::LeaseKey;

/// The environment variable holding the filter's keys.
pub const ENV_FILTER_KEYS: &str = "TOLLWAY_FILTER_KEYS";

/// Names a key without revealing it: the first 4 bytes of its SHA-256, as 8 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 4]);

impl KeyId {
    pub fn of(key: &[u8; 32]) -> KeyId {
        let digest = sha256(key);
        KeyId([digest[0], digest[1], digest[2], digest[3]])
    }

    pub fn as_bytes(&self) -> [u8; 4] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 4]) -> KeyId {
        KeyId(bytes)
    }

    pub fn parse(s: &str) -> Option<KeyId> {
        let mut out = [0u8; 4];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyId(out))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A key the set can hold.
pub trait TokenKey: Clone {
    fn bytes(&self) -> &[u8; 32];
}

impl TokenKey for FilterKey {
    fn bytes(&self) -> &[u8; 32] {
        self.as_bytes()
    }
}

impl TokenKey for LeaseKey {
    fn bytes(&self) -> &[u8; 32] {
        self.as_bytes()
    }
}

/// The current key (mints and verifies) and previous keys (verify until their time is up).
#[derive(Clone, PartialEq, Eq)]
pub struct KeySet<K> {
    current: (KeyId, K),
    previous: Vec<(KeyId, K, u64)>,
}

impl<K: TokenKey> KeySet<K> {
    pub fn new(current: K) -> Self {
        KeySet {
            current: (KeyId::of(current.bytes()), current),
            previous: Vec::new(),
        }
    }

    /// Also accepts `key` until `until` (unix seconds).
    pub fn with_previous(mut self, key: K, until: u64) -> Self {
        self.previous.push((KeyId::of(key.bytes()), key, until));
        self
    }

    /// The key that mints, and its id.
    pub fn current(&self) -> (KeyId, &K) {
        (self.current.0, &self.current.1)
    }

    /// The key named `id` if it may verify at `now`, and until when (`u64::MAX` for the
    /// current key): a token is valid until its own expiry or its key's, whichever is first.
    /// `None` for `id` (a token from before key ids): the current key.
    pub fn get(&self, id: Option<KeyId>, now: u64) -> Option<(&K, u64)> {
        let Some(id) = id else {
            return Some((&self.current.1, u64::MAX));
        };
        if id == self.current.0 {
            return Some((&self.current.1, u64::MAX));
        }
        self.previous
            .iter()
            .find(|(pid, _, until)| *pid == id && now < *until)
            .map(|(_, k, until)| (k, *until))
    }

    fn entries(&self, kind: &str, out: &mut Vec<String>) {
        out.push(format!("{kind}:{}", hex::encode(self.current.1.bytes())));
        for (_, k, until) in &self.previous {
            out.push(format!("{kind}:{}:{until}", hex::encode(k.bytes())));
        }
    }
}

impl<K> fmt::Debug for KeySet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<String> = self
            .previous
            .iter()
            .map(|(id, _, until)| format!("{id} until {until}"))
            .collect();
        write!(
            f,
            "KeySet(current {}, previous {previous:?})",
            self.current.0
        )
    }
}

/// Everything the filter verifies and mints tokens with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterKeys {
    pub l402: Option<KeySet<FilterKey>>,
    pub lease: Option<KeySet<LeaseKey>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("{ENV_FILTER_KEYS} entry {0}: expected <l402|lease>:<64 hex>[:<until unix seconds>]")]
    Malformed(usize),
    #[error("{ENV_FILTER_KEYS}: more than one current {0} key (previous keys carry an :<until>)")]
    TwoCurrent(&'static str),
    #[error("{ENV_FILTER_KEYS}: a previous {0} key but no current one")]
    NoCurrent(&'static str),
}

impl FilterKeys {
    /// Reads the wire form (see the module docs).
    pub fn parse(text: &str) -> Result<FilterKeys, KeysError> {
        let mut current: [Option<[u8; 32]>; 2] = [None, None];
        let mut previous: [Vec<([u8; 32], u64)>; 2] = [Vec::new(), Vec::new()];
        const KINDS: [&str; 2] = ["l402", "lease"];
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.split(':');
            let kind = parts
                .next()
                .and_then(|k| KINDS.iter().position(|x| *x == k));
            let mut key = [0u8; 32];
            let key_ok = parts
                .next()
                .is_some_and(|h| h.len() == 64 && hex::decode_to_slice(h, &mut key).is_ok());
            let until = parts.next().map(str::parse::<u64>);
            let (Some(kind), true, None) = (kind, key_ok, parts.next()) else {
                return Err(KeysError::Malformed(i));
            };
            match until {
                None if current[kind].is_some() => return Err(KeysError::TwoCurrent(KINDS[kind])),
                None => current[kind] = Some(key),
                Some(Ok(until)) => previous[kind].push((key, until)),
                Some(Err(_)) => return Err(KeysError::Malformed(i)),
            }
        }
        let [l402_prev, lease_prev] = previous;
        let l402 = match (current[0], l402_prev.is_empty()) {
            (Some(k), _) => Some(
                l402_prev
                    .into_iter()
                    .fold(KeySet::new(FilterKey::from_bytes(k)), |set, (k, until)| {
                        set.with_previous(FilterKey::from_bytes(k), until)
                    }),
            ),
            (None, true) => None,
            (None, false) => return Err(KeysError::NoCurrent("l402")),
        };
        let lease = match (current[1], lease_prev.is_empty()) {
            (Some(k), _) => Some(
                lease_prev
                    .into_iter()
                    .fold(KeySet::new(LeaseKey::from_bytes(k)), |set, (k, until)| {
                        set.with_previous(LeaseKey::from_bytes(k), until)
                    }),
            ),
            (None, true) => None,
            (None, false) => return Err(KeysError::NoCurrent("lease")),
        };
        Ok(FilterKeys { l402, lease })
    }

    /// The wire form (the value to put in [`ENV_FILTER_KEYS`]).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Some(set) = &self.l402 {
            set.entries("l402", &mut out);
        }
        if let Some(set) = &self.lease {
            set.entries("lease", &mut out);
        }
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back_and_picks_keys_by_id_within_their_window() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let keys = FilterKeys {
            l402: Some(
                KeySet::new(FilterKey::from_bytes(a)).with_previous(FilterKey::from_bytes(b), 1000),
            ),
            lease: Some(KeySet::new(LeaseKey::from_bytes(c))),
        };
        let text = keys.render();
        assert!(text.starts_with(&format!("l402:{}", hex::encode(a))));
        let back = FilterKeys::parse(&text).unwrap();
        assert_eq!(back, keys);
        let l402 = back.l402.unwrap();
        let (id_a, _) = l402.current();
        assert_eq!(id_a, KeyId::of(&a));
        assert_eq!(
            l402.get(Some(KeyId::of(&b)), 999)
                .map(|(k, until)| (*k.as_bytes(), until)),
            Some((b, 1000))
        );
        assert!(
            l402.get(Some(KeyId::of(&b)), 1000).is_none(),
            "past its window"
        );
        assert!(
            l402.get(Some(KeyId::of(&c)), 0).is_none(),
            "another kind's key"
        );
        assert_eq!(
            l402.get(None, 5000)
                .map(|(k, until)| (*k.as_bytes(), until)),
            Some((a, u64::MAX))
        );
        assert_eq!(KeyId::parse(&id_a.to_string()), Some(id_a));
        assert_eq!(FilterKeys::parse("").unwrap(), FilterKeys::default());
    }

    #[test]
    fn malformed_values_are_refused() {
        let k = "ab".repeat(32);
        for (text, want) in [
            ("x:00".to_owned(), KeysError::Malformed(0)),
            (format!("l402:{}", &k[2..]), KeysError::Malformed(0)),
            (format!("l402:{k},lease:{k}:soon"), KeysError::Malformed(1)),
            (format!("l402:{k}:1:2"), KeysError::Malformed(0)),
            (format!("l402:{k},l402:{k}"), KeysError::TwoCurrent("l402")),
            (format!("lease:{k}:100"), KeysError::NoCurrent("lease")),
        ] {
            assert_eq!(FilterKeys::parse(&text), Err(want), "{text}");
        }
    }
}
