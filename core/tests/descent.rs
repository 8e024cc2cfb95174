//! Property test of `table_diff`'s descent (`mm_conflict_core::diff`): two in-memory copies of a
//! table, bucketed as PostgreSQL buckets them (the top bits of a 64-bit hash of the key), differ in
//! a few keys; the descent finds exactly those, whatever the table's size, however the keys
//! crowd into buckets.

use std::collections::BTreeMap;

use mm_conflict_core::diff::{descend, Bucket, RowState, Sides, LEVEL_BITS, MAX_BITS};
use mm_conflict_core::Version;
use proptest::prelude::*;

type Table = BTreeMap<Vec<u8>, i64>;

/// A 64-bit mix of the key (the production side uses xxh3; any good mix will do here). `crowd`
/// keeps only the lowest bits of the key's number, so that many keys share deep buckets.
fn key_hash(key: &[u8], crowd: bool) -> u64 {
    let mut x = key.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b));
    if crowd {
        x &= 0x3;
    }
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Two {
    local: Table,
    peer: Table,
    crowd: bool,
}

impl Two {
    fn bucket(&self, key: &[u8], bits: i32) -> i64 {
        if bits == 0 {
            0
        } else {
            (key_hash(key, self.crowd) >> (64 - bits.min(MAX_BITS))) as i64
        }
    }

    fn summary(&self, t: &Table, bits: i32, parents: &[i64]) -> Vec<Bucket> {
        let mut out: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for (key, &hash) in t {
            let b = self.bucket(key, bits);
            if bits > 0 && !parents.contains(&(b >> LEVEL_BITS)) {
                continue;
            }
            let e = out.entry(b).or_default();
            e.0 += 1;
            e.1 = e.1.wrapping_add(hash);
        }
        out.into_iter()
            .map(|(bucket, (rows, hash))| Bucket { bucket, rows, hash })
            .collect()
    }

    fn list(&self, t: &Table, bits: i32, buckets: &[i64]) -> Vec<(Vec<u8>, RowState)> {
        t.iter()
            .filter(|(key, _)| buckets.contains(&self.bucket(key, bits)))
            .map(|(key, &hash)| {
                let version = Version {
                    criterion: Some(hash),
                    stattime: None,
                    node: None,
                };
                (key.clone(), RowState { hash, version })
            })
            .collect()
    }
}

impl Sides for Two {
    type Error = std::convert::Infallible;

    fn buckets(
        &mut self,
        bits: i32,
        parents: &[i64],
    ) -> Result<(Vec<Bucket>, Vec<Bucket>), Self::Error> {
        Ok((
            self.summary(&self.local, bits, parents),
            self.summary(&self.peer, bits, parents),
        ))
    }

    #[allow(clippy::type_complexity)]
    fn rows(
        &mut self,
        bits: i32,
        buckets: &[i64],
    ) -> Result<(Vec<(Vec<u8>, RowState)>, Vec<(Vec<u8>, RowState)>), Self::Error> {
        Ok((
            self.list(&self.local, bits, buckets),
            self.list(&self.peer, bits, buckets),
        ))
    }
}

#[derive(Clone, Debug)]
enum Change {
    /// The peer lacks the key.
    Missing(u16),
    /// The peer has a key the local side lacks.
    Extra(u16),
    /// The peer's row differs.
    Other(u16, i64),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_descent_finds_exactly_the_differing_keys(
        size in 0u16..3000,
        changes in proptest::collection::vec(
            prop_oneof![
                (0u16..4000).prop_map(Change::Missing),
                (0u16..4000).prop_map(Change::Extra),
                ((0u16..4000), any::<i64>()).prop_map(|(k, h)| Change::Other(k, h)),
            ],
            0..40,
        ),
        crowd in any::<bool>(),
    ) {
        let key = |k: u16| k.to_be_bytes().to_vec();
        let local: Table = (0..size).map(|k| (key(k), i64::from(k) * 7919)).collect();
        let mut peer = local.clone();
        for change in changes {
            match change {
                Change::Missing(k) => { peer.remove(&key(k)); }
                Change::Extra(k) => { peer.entry(key(k)).or_insert(-1); }
                Change::Other(k, h) => { peer.insert(key(k), h); }
            }
        }
        let expected: Vec<Vec<u8>> = local.keys().chain(peer.keys())
            .filter(|k| local.get(*k) != peer.get(*k))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut two = Two { local, peer, crowd };
        let found = match descend(&mut two) { Ok(f) => f, Err(never) => match never {} };
        let mut keys: Vec<Vec<u8>> = found.iter().map(|d| d.key.clone()).collect();
        keys.sort();
        prop_assert_eq!(keys, expected);
        for d in &found {
            prop_assert_eq!(d.local.map(|r| r.hash), two.local.get(&d.key).copied());
            prop_assert_eq!(d.peer.map(|r| r.hash), two.peer.get(&d.key).copied());
        }
    }
}
