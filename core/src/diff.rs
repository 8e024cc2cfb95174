//! The plan of `table_diff`'s descent: where two nodes' copies of a table differ, found by
//! comparing bucket hashes level by level and listing rows only where buckets are small.
//!
//! Each row lies in a bucket of its key's hash (level `bits`: the hash's top `bits` bits; level 0
//! is one bucket that holds every row), and a bucket's hash is the sum of its rows' hashes (a
//! row's hash covers its key, its content and its version stamps). Two sides compare the buckets
//! of a level; a bucket that differs is either listed (at most [`LEAF_ROWS`] rows on either side,
//! or the deepest level) or split into its 256 children at the next level. Written against
//! [`Sides`]: PostgreSQL reads this node's buckets and a peer's over dblink (`src/verify/`), the
//! property test two in-memory tables.

use std::collections::BTreeMap;

use crate::version::Version;

/// Bits added per level (256 children per bucket).
pub const LEVEL_BITS: i32 = 8;
/// The deepest level (2^56 buckets).
pub const MAX_BITS: i32 = 56;
/// A differing bucket with at most this many rows on either side is listed, not split.
pub const LEAF_ROWS: i64 = 64;

/// A bucket of one side: its number at its level, its rows and the sum of their hashes (read
/// from a peer as a JSON array in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Bucket {
    pub bucket: i64,
    pub rows: i64,
    pub hash: i64,
}

/// One side's row, as listed: its hash and its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowState {
    pub hash: i64,
    pub version: Version,
}

/// A key whose rows differ: each side's row (`None`: no row there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Differing {
    pub key: Vec<u8>,
    pub local: Option<RowState>,
    pub peer: Option<RowState>,
}

/// What to do after comparing a level: the buckets to split at the next level, and those whose
/// rows to list now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Level {
    pub split: Vec<i64>,
    pub list: Vec<i64>,
    /// Buckets held by either side.
    pub compared: usize,
}

/// Compares the two sides' buckets of level `bits`.
pub fn compare_level(bits: i32, local: &[Bucket], peer: &[Bucket]) -> Level {
    let mut joined: BTreeMap<i64, (Option<&Bucket>, Option<&Bucket>)> = BTreeMap::new();
    for b in local {
        joined.entry(b.bucket).or_default().0 = Some(b);
    }
    for b in peer {
        joined.entry(b.bucket).or_default().1 = Some(b);
    }
    let mut level = Level {
        compared: joined.len(),
        ..Level::default()
    };
    for (bucket, (l, p)) in joined {
        let same = matches!((l, p), (Some(l), Some(p)) if l.rows == p.rows && l.hash == p.hash);
        if same {
            continue;
        }
        let rows = l.map_or(0, |b| b.rows).max(p.map_or(0, |b| b.rows));
        if rows <= LEAF_ROWS || bits >= MAX_BITS {
            level.list.push(bucket);
        } else {
            level.split.push(bucket);
        }
    }
    level
}

/// The rows of two sides' listings that differ (by hash), in key order.
pub fn differing_rows(
    local: Vec<(Vec<u8>, RowState)>,
    peer: Vec<(Vec<u8>, RowState)>,
) -> Vec<Differing> {
    let mut joined: BTreeMap<Vec<u8>, (Option<RowState>, Option<RowState>)> = BTreeMap::new();
    for (key, row) in local {
        joined.entry(key).or_default().0 = Some(row);
    }
    for (key, row) in peer {
        joined.entry(key).or_default().1 = Some(row);
    }
    joined
        .into_iter()
        .filter(|(_, (l, p))| l.map(|r| r.hash) != p.map(|r| r.hash))
        .map(|(key, (local, peer))| Differing { key, local, peer })
        .collect()
}

/// The two sides of a comparison.
pub trait Sides {
    type Error;

    /// Both sides' buckets of level `bits` that hold rows: all of them at level 0, else the
    /// children of `parents` (buckets of the level above).
    fn buckets(
        &mut self,
        bits: i32,
        parents: &[i64],
    ) -> Result<(Vec<Bucket>, Vec<Bucket>), Self::Error>;
    /// Both sides' rows in `buckets` of level `bits`.
    #[allow(clippy::type_complexity)]
    fn rows(
        &mut self,
        bits: i32,
        buckets: &[i64],
    ) -> Result<(Vec<(Vec<u8>, RowState)>, Vec<(Vec<u8>, RowState)>), Self::Error>;
    /// Called after each level with the buckets compared and the differing rows found so far.
    fn progress(&mut self, _buckets: usize, _rows: usize) {}
}

/// The keys whose rows differ between the two sides, level by level.
pub fn descend<S: Sides>(sides: &mut S) -> Result<Vec<Differing>, S::Error> {
    let mut found = Vec::new();
    let mut bits = 0;
    let mut parents: Vec<i64> = Vec::new();
    let mut compared = 0;
    loop {
        let (local, peer) = sides.buckets(bits, &parents)?;
        let level = compare_level(bits, &local, &peer);
        compared += level.compared;
        if !level.list.is_empty() {
            let (l, p) = sides.rows(bits, &level.list)?;
            found.extend(differing_rows(l, p));
        }
        sides.progress(compared, found.len());
        if level.split.is_empty() {
            return Ok(found);
        }
        bits += LEVEL_BITS;
        parents = level.split;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bucket: i64, rows: i64, hash: i64) -> Bucket {
        Bucket { bucket, rows, hash }
    }

    #[test]
    fn a_level_lists_small_buckets_and_splits_large_ones() {
        let local = [b(1, 10, 5), b(2, 100, 7), b(3, 3, 3), b(5, 1, 1)];
        let peer = [b(1, 10, 5), b(2, 100, 8), b(3, 4, 3), b(4, 65, 1)];
        assert_eq!(
            compare_level(8, &local, &peer),
            Level {
                split: vec![2, 4],
                list: vec![3, 5],
                compared: 5
            }
        );
        // At the deepest level everything that differs is listed.
        assert_eq!(
            compare_level(MAX_BITS, &local, &peer).split,
            Vec::<i64>::new()
        );
    }

    #[test]
    fn rows_differ_by_hash_or_presence() {
        let v = Version {
            criterion: Some(1),
            stattime: Some(1),
            node: Some(1),
        };
        let r = |hash| RowState { hash, version: v };
        let d = differing_rows(
            vec![(vec![1], r(1)), (vec![2], r(2)), (vec![3], r(3))],
            vec![(vec![2], r(2)), (vec![3], r(4)), (vec![4], r(4))],
        );
        let keys: Vec<(Vec<u8>, bool, bool)> = d
            .iter()
            .map(|d| (d.key.clone(), d.local.is_some(), d.peer.is_some()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (vec![1], true, false),
                (vec![3], true, true),
                (vec![4], false, true)
            ]
        );
    }
}
