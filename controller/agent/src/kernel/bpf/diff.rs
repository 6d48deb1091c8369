//! The one way a map is made to hold what the agent wants: write the
//! entries it lacks or holds otherwise, then (separately, so a caller can
//! put every removal after every write) remove the entries nobody wants.
//! Only differences reach the kernel, so an entry in use is never removed
//! and re-added, and a restarted agent diffs against what is pinned
//! instead of flushing.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, MapError};
use ipnet::Ipv4Net;
use sluice_common::{ipcache::Ipv4Prefix, policy::PolicyKey};

use super::{map_error, DataplaneError, SyncStats};

/// A kernel map as the diff-writer sees it: keys and values of the
/// agent's own types.
pub trait KernelMap {
    type Key: Ord + Clone;
    type Value: PartialEq;

    fn name(&self) -> &'static str;
    fn lookup(&self, key: &Self::Key) -> Option<Self::Value>;
    fn put(&mut self, key: &Self::Key, value: &Self::Value) -> Result<(), MapError>;
    fn delete(&mut self, key: &Self::Key) -> Result<(), MapError>;
    fn all_keys(&self) -> Result<Vec<Self::Key>, MapError>;
}

/// Writes every desired entry the map lacks or holds otherwise. A failed
/// write (a full map) stops nothing: the other entries are still tried,
/// and the first error is returned beside the count of entries written.
pub fn write<'a, M: KernelMap>(
    map: &mut M,
    desired: impl IntoIterator<Item = (&'a M::Key, &'a M::Value)>,
) -> (usize, Option<DataplaneError>)
where
    M::Key: 'a,
    M::Value: 'a,
{
    let mut written = 0;
    let mut first_error = None;
    for (key, value) in desired {
        if map.lookup(key).as_ref() == Some(value) {
            continue;
        }
        match map.put(key, value) {
            Ok(()) => written += 1,
            Err(e) => {
                first_error.get_or_insert(map_error(map.name())(e));
            }
        }
    }
    (written, first_error)
}

/// Every entry the map holds.
pub fn contents<M: KernelMap>(map: &M) -> Result<BTreeMap<M::Key, M::Value>, DataplaneError> {
    Ok(map
        .all_keys()
        .map_err(map_error(map.name()))?
        .into_iter()
        .filter_map(|key| Some((key.clone(), map.lookup(&key)?)))
        .collect())
}

/// Removes every entry `keep` refuses; returns how many.
pub fn remove_stale<M: KernelMap>(
    map: &mut M,
    keep: impl Fn(&M::Key) -> bool,
) -> Result<usize, DataplaneError> {
    let stale: Vec<M::Key> = map
        .all_keys()
        .map_err(map_error(map.name()))?
        .into_iter()
        .filter(|k| !keep(k))
        .collect();
    for key in &stale {
        match map.delete(key) {
            // Gone already (an LRU eviction, a concurrent writer): the
            // goal holds.
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_error(map.name())(e)),
        }
    }
    Ok(stale.len())
}

/// Makes the map hold exactly `desired`: every write first, then the
/// removals; the first failure is returned once both are done.
pub fn sync<M: KernelMap>(
    map: &mut M,
    desired: &BTreeMap<M::Key, M::Value>,
) -> Result<SyncStats, DataplaneError> {
    let (written, error) = write(map, desired);
    let removed = remove_stale(map, |k| desired.contains_key(k))?;
    match error {
        Some(e) => Err(e),
        None => Ok(SyncStats { written, removed }),
    }
}

/// A hash map (or array-like hash) of the object.
pub struct Hash<K, V> {
    pub name: &'static str,
    pub map: HashMap<MapData, K, V>,
}

impl<K: aya::Pod + Ord, V: aya::Pod + PartialEq> KernelMap for Hash<K, V> {
    type Key = K;
    type Value = V;

    fn name(&self) -> &'static str {
        self.name
    }

    fn lookup(&self, key: &K) -> Option<V> {
        self.map.get(key, 0).ok()
    }

    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.map.insert(key, value, 0)
    }

    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        self.map.remove(key)
    }

    fn all_keys(&self) -> Result<Vec<K>, MapError> {
        self.map.keys().collect()
    }
}

/// How the agent names an LPM trie's keys.
pub trait TrieKey: Ord + Clone {
    type Data: aya::Pod;
    fn to_key(&self) -> Key<Self::Data>;
    /// `None` for a key of no prefix the agent can name; the kernel
    /// bounds prefix lengths by the key's size, so none such exist.
    fn from_key(key: &Key<Self::Data>) -> Option<Self>;
}

/// ipcache-style tries: an IPv4 prefix.
impl TrieKey for Ipv4Net {
    type Data = Ipv4Prefix;

    fn to_key(&self) -> Key<Ipv4Prefix> {
        Key::new(
            u32::from(self.prefix_len()),
            Ipv4Prefix {
                addr: self.addr().octets(),
            },
        )
    }

    fn from_key(key: &Key<Ipv4Prefix>) -> Option<Self> {
        Ipv4Net::new(key.data().addr.into(), u8::try_from(key.prefix_len()).ok()?).ok()
    }
}

/// The port-range trie: a policy key and its prefix length.
impl TrieKey for (PolicyKey, u32) {
    type Data = PolicyKey;

    fn to_key(&self) -> Key<PolicyKey> {
        Key::new(self.1, self.0)
    }

    fn from_key(key: &Key<PolicyKey>) -> Option<Self> {
        Some((key.data(), key.prefix_len()))
    }
}

/// An LPM trie of the object.
pub struct Trie<K: TrieKey, V> {
    pub name: &'static str,
    pub map: LpmTrie<MapData, K::Data, V>,
}

impl<K: TrieKey, V: aya::Pod + PartialEq> KernelMap for Trie<K, V> {
    type Key = K;
    type Value = V;

    fn name(&self) -> &'static str {
        self.name
    }

    fn lookup(&self, key: &K) -> Option<V> {
        self.map.get(&key.to_key(), 0).ok()
    }

    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.map.insert(&key.to_key(), value, 0)
    }

    fn delete(&mut self, key: &K) -> Result<(), MapError> {
        self.map.remove(&key.to_key())
    }

    fn all_keys(&self) -> Result<Vec<K>, MapError> {
        self.map
            .keys()
            .filter_map(|k| k.map(|k| K::from_key(&k)).transpose())
            .collect()
    }
}
