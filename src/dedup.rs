//! Dedup memory: which (kind, id, version) a data type already delivered, kept in KV
//! for as long as its window can return it again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Upper bound on remembered records per data type; past it the oldest are forgotten.
/// Each costs about 30 bytes of KV.
pub const MAX_ENTRIES: usize = 500_000;

/// Records are remembered by a 64-bit FNV-1a hash of (kind, id, version) and the
/// window-field time (unix seconds) that decides when they can be forgotten. A
/// collision would drop one event; at 500,000 entries the chance is about 1 in 10^8.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dedup {
    #[serde(rename = "e", with = "hex_keys")]
    entries: HashMap<u64, i64>,
}

impl Dedup {
    pub fn key(stream: &str) -> String {
        format!("dedup:{stream}")
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("the dedup memory in KV is corrupt: {e}"))
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("dedup always serializes")
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers the record and says whether it is new.
    pub fn insert(&mut self, kind: &str, id: &str, version: &str, window_secs: i64) -> bool {
        let h = fnv1a(&[kind, id, version]);
        match self.entries.get_mut(&h) {
            Some(t) => {
                *t = (*t).max(window_secs);
                false
            }
            None => {
                self.entries.insert(h, window_secs);
                true
            }
        }
    }

    /// Forgets records the window can no longer return (window time before `from_secs`),
    /// then the oldest beyond [`MAX_ENTRIES`].
    pub fn prune(&mut self, from_secs: i64) {
        self.entries.retain(|_, t| *t >= from_secs);
        if self.entries.len() > MAX_ENTRIES {
            let mut times: Vec<i64> = self.entries.values().copied().collect();
            let cut = times.len() - MAX_ENTRIES;
            let (_, nth, _) = times.select_nth_unstable(cut);
            let threshold = *nth;
            self.entries.retain(|_, t| *t >= threshold);
        }
    }
}

/// A 32-bit hash of a record's id and version, for counting distinct records in a cursor.
pub fn short_hash(id: &str, version: &str) -> u32 {
    let h = fnv1a(&[id, version]);
    (h ^ (h >> 32)) as u32
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        // A separator byte that cannot occur in UTF-8 keeps ("ab","c") apart from ("a","bc").
        let sep: &[u8] = if i == 0 { &[] } else { &[0xff] };
        for b in sep.iter().chain(part.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

mod hex_keys {
    use std::collections::HashMap;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(m: &HashMap<u64, i64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (format!("{k:016x}"), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<u64, i64>, D::Error> {
        let raw: HashMap<String, i64> = HashMap::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                u64::from_str_radix(&k, 16)
                    .map(|k| (k, v))
                    .map_err(D::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_version_once_newer_version_again() {
        let mut d = Dedup::default();
        assert!(d.insert("defender.alert", "a1", "2026-01-01T00:00:00Z", 100));
        assert!(!d.insert("defender.alert", "a1", "2026-01-01T00:00:00Z", 100));
        assert!(d.insert("defender.alert", "a1", "2026-01-02T00:00:00Z", 200));
        assert!(d.insert("defender.incident", "a1", "2026-01-01T00:00:00Z", 100));
        assert!(d.insert("k", "ab", "c", 1) && d.insert("k", "a", "bc", 1));
    }

    #[test]
    fn survives_encoding_and_prunes_by_window() {
        let mut d = Dedup::default();
        for i in 0..10 {
            d.insert("k", &format!("id{i}"), "", i);
        }
        let mut back = Dedup::decode(&d.encode()).unwrap();
        assert_eq!(back, d);
        back.prune(7);
        assert_eq!(back.len(), 3);
        assert!(!back.insert("k", "id9", "", 9));
        assert!(
            back.insert("k", "id1", "", 1),
            "pruned records are forgotten"
        );
        assert!(Dedup::decode("{\"e\":{\"zz\":1}}").is_err());
        assert!(Dedup::decode("nonsense").is_err());
    }

    #[test]
    fn stays_bounded() {
        let mut d = Dedup::default();
        for i in 0..(MAX_ENTRIES as i64 + 10) {
            d.insert("k", &i.to_string(), "", i);
        }
        d.prune(0);
        assert_eq!(d.len(), MAX_ENTRIES);
        assert!(
            !d.insert("k", &(MAX_ENTRIES as i64 + 9).to_string(), "", 0),
            "newest kept"
        );
    }
}
