//! Where two nodes' copies of a replicated table differ (`mm_conflict.table_diff`), and the
//! winning versions written again (`mm_conflict.repair`). The SQL side (`sql/repair.sql`) carries
//! these functions' results between nodes; everything that reads rows, hashes them, orders
//! versions or writes is here.
//!
//! Comparing is Merkle-style, over buckets of the key's hash: a key's bucket at level `bits` is
//! the top `bits` bits of the xxh3 hash of its binary form (the form tombstones store, the same on
//! every node), so two nodes put a key in the same bucket whatever else they hold, and a bucket's
//! children at `bits + 8` are the buckets whose top `bits` bits are its number. A bucket's hash is
//! the sum of its rows' entry hashes (a row's key, user columns by name, and version stamps):
//! equal on both nodes ⇔ (with overwhelming probability) the same rows. Identical tables cost one
//! scan per node and one exchanged number; differing ones are narrowed down 256 buckets at a time,
//! and only the rows of small differing buckets are listed.
//!
//! Only rows are hashed. Tombstones differ from node to node by design (each node purges its own)
//! and matter only where one node has a row and the other has none: then the other node's
//! tombstone, if any, is the version the row is compared with.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::rc::Rc;

use mm_conflict_core::{
    repair_winner, Held, Micros, NodeId, Policy, RepairWinner, RowStamps, Version,
};
use pgrx::prelude::*;
use pgrx::PgRelation;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::checksum::{readable, row_hash, user_columns};
use crate::catalog::relinfo::{self, RelInfo};
use crate::catalog::tombstones;
use crate::error::MmError;
use crate::pg::datum::Typed;
use crate::pg::flag::RepairWrite;
use crate::pg::key::IndexKey;
use crate::pg::names::{identity, sql_ident, sql_qualified};
use crate::pg::partitions;
use crate::pg::relation::{self, Opened};
use crate::pg::scan;
use crate::pg::settings::{self, Input, Output};
use crate::pg::spi::CachedPlan;

pub use mm_conflict_core::diff::{LEVEL_BITS, MAX_BITS};

/// The bucket of `key` at level `bits` (0: the one bucket that holds every key).
fn bucket(key: &[u8], bits: i32) -> i64 {
    if bits <= 0 {
        0
    } else {
        (xxh3_64(key) >> (64 - bits.min(MAX_BITS))) as i64
    }
}

/// The hash of one row: its key, its user columns' hash, and its version stamps (`mm_islocal`,
/// which differs from node to node by design, is left out).
fn entry_hash(key: &[u8], content: u64, stamps: &RowStamps) -> u64 {
    let mut bytes = [0u8; 29];
    let time = |t: Option<Micros>| {
        t.map_or([0xFF; 9], |t| {
            let mut b = [0u8; 9];
            b[1..].copy_from_slice(&t.to_be_bytes());
            b
        })
    };
    bytes[..9].copy_from_slice(&time(stamps.xacttime));
    bytes[9..18].copy_from_slice(&time(stamps.stattime));
    bytes[18..21].copy_from_slice(&stamps.node.map_or([0xFF; 3], |n| {
        let b = n.to_be_bytes();
        [0, b[0], b[1]]
    }));
    bytes[21..29].copy_from_slice(&content.to_be_bytes());
    xxh3_64_with_seed(key, xxh3_64_with_seed(&bytes, 0))
}

/// A replicated table as diff reads it: the entry of its `mm_resolve` trigger (its own, or the
/// one of a leaf for a partitioned table: the policy and key are the same) and the tables that
/// hold its rows.
struct Tree {
    info: Option<Rc<RelInfo>>,
    identity: String,
    sql_name: String,
    leaves: Vec<pg_sys::Oid>,
}

fn tree(rel: &PgRelation, function: &str) -> Result<Tree, MmError> {
    let relkind = readable(rel, function)?;
    let (schema, name) = relation::names(rel);
    let identity = identity(&schema, &name);
    let not_replicated = || MmError::NotReplicated {
        table: identity.clone(),
    };
    if !relinfo::has_mm_resolve(rel) {
        return Err(not_replicated());
    }
    let leaves = if relkind == pg_sys::RELKIND_RELATION {
        vec![rel.oid()]
    } else {
        partitions::leaf_partitions(rel.oid())
    };
    let info = match leaves.first() {
        None => None,
        // The leaf is opened and locked for the call (the lock is kept to the end of the
        // transaction), as lookup_for_relation needs.
        Some(&leaf) => {
            let leaf = Opened::table(leaf, pg_sys::AccessShareLock);
            Some(relinfo::lookup_for(&leaf)?.ok_or_else(not_replicated)?)
        }
    };
    if let Some(info) = &info {
        if info.primary_key.is_none() {
            return Err(MmError::NoPrimaryKey {
                table: identity.clone(),
            });
        }
    }
    Ok(Tree {
        info,
        sql_name: sql_qualified(&schema, &name),
        identity,
        leaves,
    })
}

/// One row as a scan saw it.
struct Entry<'a> {
    key: &'a [u8],
    hash: u64,
    stamps: RowStamps,
}

/// Calls `each` with every row of the table.
fn for_each_row(tree: &Tree, mut each: impl FnMut(&Entry)) -> Result<(), MmError> {
    for &leaf in &tree.leaves {
        // The leaf is opened and locked here and closed after its scan (the lock is kept to the
        // end of the transaction).
        let leaf = Opened::table(leaf, pg_sys::AccessShareLock);
        let info = relinfo::lookup_for(&leaf)?.ok_or_else(|| MmError::NotReplicated {
            table: tree.identity.clone(),
        })?;
        let pk = info
            .primary_key
            .as_ref()
            .ok_or_else(|| MmError::NoPrimaryKey {
                table: tree.identity.clone(),
            })?;
        let columns = user_columns(&leaf);
        columns.hashing(|| {
            scan::each_row(&leaf, "mm_conflict table_diff", |row| {
                let tuple = row.tuple();
                let key = pk.encode_row(tuple);
                let content = row_hash(&columns, row);
                let stamps = info.stamps(tuple);
                each(&Entry {
                    key: &key,
                    hash: entry_hash(&key, content, &stamps),
                    stamps,
                });
            })
        });
    }
    Ok(())
}

/// The buckets of level `bits` (only the children of `parents`, buckets of level `bits - 8`,
/// when given) that hold rows: (bucket, rows, hash), in bucket order.
pub fn summary(
    rel: &PgRelation,
    bits: i32,
    parents: Option<Vec<i64>>,
) -> Result<Vec<(i64, i64, i64)>, MmError> {
    check_bits(bits)?;
    let tree = tree(rel, "table_diff")?;
    let parents: Option<HashSet<i64>> = parents.map(|p| p.into_iter().collect());
    let mut buckets: HashMap<i64, (i64, u64)> = HashMap::new();
    for_each_row(&tree, |entry| {
        let b = bucket(entry.key, bits);
        if let Some(parents) = &parents {
            if bits < LEVEL_BITS || !parents.contains(&(b >> LEVEL_BITS)) {
                return;
            }
        }
        let slot = buckets.entry(b).or_insert((0, 0));
        slot.0 += 1;
        slot.1 = slot.1.wrapping_add(entry.hash);
    })?;
    let mut out: Vec<(i64, i64, i64)> = buckets
        .into_iter()
        .map(|(b, (n, h))| (b, n, h as i64))
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn check_bits(bits: i32) -> Result<(), MmError> {
    if (0..=MAX_BITS).contains(&bits) && bits % LEVEL_BITS == 0 {
        Ok(())
    } else {
        Err(MmError::BadInternalArgument {
            function: "table_diff".into(),
            detail: format!("level {bits} is not a multiple of {LEVEL_BITS} up to {MAX_BITS}"),
        })
    }
}

/// A row of the table as `_diff_rows` lists it.
pub struct RowState {
    pub key: Vec<u8>,
    pub hash: i64,
    pub version: Version,
}

/// The rows in `buckets` of level `bits`, and the rows whose key is in `keys`.
pub fn rows(
    rel: &PgRelation,
    bits: i32,
    buckets: Vec<i64>,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<RowState>, MmError> {
    check_bits(bits)?;
    let tree = tree(rel, "table_diff")?;
    let Some(info) = tree.info.clone() else {
        return Ok(Vec::new());
    };
    let buckets: HashSet<i64> = buckets.into_iter().collect();
    let keys: HashSet<Vec<u8>> = keys.into_iter().collect();
    let mut out = Vec::new();
    for_each_row(&tree, |entry| {
        if keys.contains(entry.key) || buckets.contains(&bucket(entry.key, bits)) {
            out.push(RowState {
                key: entry.key.to_vec(),
                hash: entry.hash as i64,
                version: info.policy.version(&entry.stamps),
            });
        }
    })?;
    Ok(out)
}

/// The rows of `keys` as JSON objects of their columns by name, each column's value as its text
/// output (or `null`), printed under pinned settings ([`settings::pinned`]) so that it reads back
/// as the very value on any node and whatever the sessions' settings; found by primary key, keys
/// without a row are left out. What a repair sends ([`apply`] reads it).
pub fn contents(rel: &PgRelation, keys: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, String)>, MmError> {
    let tree = tree(rel, "repair")?;
    let (Some(info), Some(&leaf)) = (tree.info.clone(), tree.leaves.first()) else {
        return Ok(Vec::new());
    };
    let Some(pk) = info.primary_key.as_ref() else {
        return Ok(Vec::new());
    };
    let (names, types): (Vec<String>, Vec<pg_sys::Oid>) = key_columns(leaf, pk).into_iter().unzip();
    // Each key column matched by the key index's own equality operator (as the index matches).
    let predicate = names
        .iter()
        .zip(&pk.columns)
        .enumerate()
        .map(|(i, (name, column))| {
            format!(
                "t.{} {} ${}",
                sql_ident(name),
                column.eq_operator_sql,
                i + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let columns: Vec<(String, Output)> = relation::columns_of(rel)
        .into_iter()
        .map(|c| (c.name, Output::of(c.typid)))
        .collect();
    let select_list = columns
        .iter()
        .map(|(name, _)| format!("t.{}", sql_ident(name)))
        .collect::<Vec<_>>()
        .join(", ");
    let by_key = CachedPlan::new(
        format!(
            "SELECT {select_list} FROM {} t WHERE {predicate}",
            tree.sql_name
        ),
        types,
    );
    let mut rows = Vec::new();
    for key in keys {
        let Some(values) = pk.decode(&key) else {
            continue;
        };
        let params: Vec<Option<Typed>> = values.into_iter().map(Some).collect();
        if let Some(row) = by_key.execute_returning(&params, pg_sys::SPI_OK_SELECT) {
            rows.push((key, row));
        }
    }
    settings::pinned(|| {
        rows.into_iter()
            .map(|(key, row)| {
                let object = columns
                    .iter()
                    .zip(row)
                    .map(|((name, output), value)| {
                        let text = match value {
                            None => Value::Null,
                            // Each value is of its column's type (selected in column order),
                            // printed by that type's output function.
                            Some(v) => Value::String(output.string(v).ok_or_else(|| {
                                MmError::ValueNotUtf8 {
                                    table: tree.identity.clone(),
                                    column: name.clone(),
                                }
                            })?),
                        };
                        Ok((name.clone(), text))
                    })
                    .collect::<Result<Map<String, Value>, MmError>>()?;
                Ok((key, Value::Object(object).to_string()))
            })
            .collect()
    })
}

/// A stored tombstone as `tombstones` gives it: key, version, its row as JSON.
pub type StoredTombstone = (Vec<u8>, Version, Option<String>);

/// The stored tombstones of `keys` (keys without one are left out): (key, version, its row in
/// `mm_conflict.tombstone` as JSON when `content`).
pub fn tombstones(
    rel: &PgRelation,
    keys: Vec<Vec<u8>>,
    content: bool,
) -> Result<Vec<StoredTombstone>, MmError> {
    // The probe below reads the tombstone table's heap without a permission check: only roles
    // that may read that table see what it holds.
    may_read_tombstones("_diff_tombstones()")?;
    let tree = tree(rel, "table_diff")?;
    let table = tombstones::table()?;
    let as_json = CachedPlan::new(
        "SELECT pg_catalog.to_json(t)::pg_catalog.text FROM mm_conflict.tombstone t \
         WHERE t.table_name OPERATOR(pg_catalog.=) $1 AND t.pk OPERATOR(pg_catalog.=) $2"
            .into(),
        vec![pg_sys::TEXTOID, pg_sys::BYTEAOID],
    );
    let mut out = Vec::new();
    for key in keys {
        // A tombstone still being written by another transaction: its version is not known yet.
        let mm_conflict_core::Lookup::Found(found) = table.probe(tree.identity.as_bytes(), &key)
        else {
            continue;
        };
        let json = if content {
            as_json
                .execute_returning(
                    &[
                        Some(Typed::text(tree.identity.as_bytes())),
                        Some(Typed::bytea(&key)),
                    ],
                    pg_sys::SPI_OK_SELECT,
                )
                .and_then(|row| row.into_iter().next().flatten())
                .and_then(crate::pg::amount::text_string)
        } else {
            None
        };
        out.push((key, found.version, json));
    }
    Ok(out)
}

/// This node's state of `keys` as repair items, what [`apply`] reads on another node: a JSON
/// array of `{"row": <contents>}` for each key with a row, and `{"tombstone": <its row in
/// mm_conflict.tombstone>}` for each other key with a tombstone.
pub fn items(rel: &PgRelation, keys: Vec<Vec<u8>>) -> Result<String, MmError> {
    let rows = contents(rel, keys.clone())?;
    let with_row: HashSet<&[u8]> = rows.iter().map(|(key, _)| key.as_slice()).collect();
    let rest: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|key| !with_row.contains(key.as_slice()))
        .collect();
    let mut items: Vec<String> = rows
        .iter()
        .map(|(_, content)| format!("{{\"row\":{content}}}"))
        .collect();
    for (_, _, content) in tombstones(rel, rest, true)? {
        // None: removed since the probe saw it; nothing to send.
        if let Some(content) = content {
            items.push(format!("{{\"tombstone\":{content}}}"));
        }
    }
    Ok(format!("[{}]", items.join(",")))
}

/// Checks that this role may read `mm_conflict.tombstone` (its owner, the extension's owner, and
/// superusers; no other role unless that owner granted it), as `function` (named in the error)
/// shows what it holds.
fn may_read_tombstones(function: &str) -> Result<(), MmError> {
    let allowed = crate::pg::security::is_superuser()
        || relation::extension_table(c"tombstone").is_some_and(relation::may_select);
    if allowed {
        Ok(())
    } else {
        Err(MmError::TombstonesNotReadable {
            function: function.into(),
        })
    }
}

/// The key in binary form as a JSON object of its columns.
pub fn key_json(rel: &PgRelation, key: &[u8]) -> Result<Value, MmError> {
    let tree = tree(rel, "table_diff")?;
    let undecodable = || MmError::BadInternalArgument {
        function: "mm_conflict._diff_key".into(),
        detail: format!("the key is not a key of {}", tree.identity),
    };
    let info = tree.info.as_ref().ok_or_else(undecodable)?;
    let pk = info.primary_key.as_ref().ok_or_else(undecodable)?;
    let leaf = *tree.leaves.first().ok_or_else(undecodable)?;
    let values = pk.decode_json(key).ok_or_else(undecodable)?;
    let object: Map<String, Value> = key_columns(leaf, pk)
        .into_iter()
        .map(|(name, _)| name)
        .zip(values)
        .collect();
    Ok(Value::Object(object))
}

/// The names and types of `pk`'s columns in `leaf` (a leaf of the tree, whose key decodes the
/// binary form), in key order.
fn key_columns(leaf: pg_sys::Oid, pk: &IndexKey) -> Vec<(String, pg_sys::Oid)> {
    // The leaf is locked by `tree` (the lock kept to the end of the transaction); the key's
    // attnums are live columns of it.
    let columns = Opened::table(leaf, pg_sys::AccessShareLock).columns();
    pk.attnums()
        .filter_map(|attnum| columns.iter().find(|c| c.attnum == attnum))
        .map(|c| (c.name.clone(), c.typid))
        .collect()
}

/// A side's state as table_diff shows it (NULL: nothing).
fn describe(held: &Held, policy: &Policy) -> Option<String> {
    let column = policy.criterion_column();
    let version = |v: &Version| {
        if v.criterion.is_none() && v.stattime.is_none() && v.node.is_none() {
            "no version (written without mm_resolve)".to_string()
        } else {
            v.describe(column)
        }
    };
    match held {
        Held::Row(v) => Some(version(v)),
        Held::Tombstone(v) => Some(format!("deleted: {}", version(v))),
        Held::Nothing => None,
    }
}

/// How table_diff names a winner: `local`, `peer` or `equal` (see [`repair_winner`]).
pub fn winner_name(winner: RepairWinner) -> &'static str {
    match winner {
        RepairWinner::Local => "local",
        RepairWinner::Peer => "peer",
        RepairWinner::Equal => "equal",
    }
}

/// The policy of a replicated table (the one of its trigger, or of its leaves' triggers).
pub fn policy(rel: &PgRelation) -> Result<Policy, MmError> {
    let tree = tree(rel, "table_diff")?;
    let info = tree.info.ok_or_else(|| MmError::BadInternalArgument {
        function: "table_diff".into(),
        detail: format!("{} has no partitions to compare", tree.identity),
    })?;
    Ok(info.policy.clone())
}

/// `(local_version, peer_version, winner)` of a key whose sides differ, as table_diff shows them.
pub fn verdict(
    policy: &Policy,
    local: Held,
    peer: Held,
) -> (Option<String>, Option<String>, RepairWinner) {
    (
        describe(&local, policy),
        describe(&peer, policy),
        repair_winner(&policy.order(), local, peer),
    )
}

/// What a side holds, from its kind (`row`, `tombstone` or NULL) and version.
fn held(kind: Option<&str>, version: Version) -> Held {
    match kind {
        Some("row") => Held::Row(version),
        Some("tombstone") => Held::Tombstone(version),
        _ => Held::Nothing,
    }
}

/// `(local_version, peer_version, winner)` of a key, each side given by its kind and version
/// (`_diff_judge`: the verdict of [`verdict`] for SQL).
pub fn judge(
    rel: &PgRelation,
    local: (Option<&str>, Version),
    peer: (Option<&str>, Version),
) -> Result<(Option<String>, Option<String>, &'static str), MmError> {
    let (l, p, w) = verdict(&policy(rel)?, held(local.0, local.1), held(peer.0, peer.1));
    Ok((l, p, winner_name(w)))
}

/// A version from the SQL side's columns.
pub fn version(criterion: Option<i64>, stattime: Option<i64>, node: Option<i16>) -> Version {
    Version {
        criterion,
        stattime,
        node: node.map(|n| n as NodeId),
    }
}

/// Writes the winning versions `items` (a JSON array of `{"row": …}` and `{"tombstone": …}`, as
/// `contents`/`tombstones` give them) into the table, each resolved by the trigger exactly as a
/// replicated change (a row as a replicated INSERT, a tombstone as a replicated tombstone), so a
/// version that is not better than the one stored changes nothing. `same_version`: a row with the
/// stored row's very version is written too. Returns the number of items written.
pub fn apply(rel: &PgRelation, items: &str, same_version: bool) -> Result<i64, MmError> {
    crate::pg::security::require_superuser("repair()")?;
    let tree = tree(rel, "repair")?;
    // Each item's value as the exact text it came in (a re-serialized value would lose digits of
    // numbers and the spacing of json columns).
    let items: Vec<Item> =
        serde_json::from_str(items).map_err(|e| MmError::BadInternalArgument {
            function: "mm_conflict._repair_apply".into(),
            detail: format!("the items do not parse: {e}"),
        })?;
    // The columns a row is written with: every column but generated ones (computed again), each
    // read by its type's input function from its text in the row (see `contents`).
    let columns: Vec<(String, pg_sys::Oid, Input)> = relation::columns_of(rel)
        .into_iter()
        .filter(|c| !c.generated)
        .map(|c| {
            let input = Input::of(c.typid, c.typmod);
            (c.name, c.typid, input)
        })
        .collect();
    let insert_row = CachedPlan::new(
        format!(
            "INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE VALUES ({params})",
            table = tree.sql_name,
            names = columns
                .iter()
                .map(|(name, _, _)| sql_ident(name))
                .collect::<Vec<_>>()
                .join(", "),
            params = (1..=columns.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        columns.iter().map(|(_, typid, _)| *typid).collect(),
    )
    // As the table's owner, as PostgreSQL 16's apply workers write: a trigger of the owner's
    // never runs with the rights of the superuser who calls repair.
    .run_as(crate::pg::security::relation_owner(rel.oid()));
    let tombstone_table = tombstones::table()?;
    let insert_tombstone = CachedPlan::new(
        "INSERT INTO mm_conflict.tombstone SELECT * FROM \
         pg_catalog.json_populate_record(NULL::mm_conflict.tombstone, $1::pg_catalog.json)"
            .into(),
        vec![pg_sys::TEXTOID],
    )
    .run_as(crate::pg::security::relation_owner(tombstone_table.relid()));
    // Every row's values, read under the settings they were printed with; the writes run after,
    // under the session's own settings, as replicated writes do.
    let writes = settings::pinned(|| {
        items
            .into_iter()
            .filter_map(|item| match (item.row, item.tombstone) {
                (Some(row), _) => Some(row_values(&columns, row).map(Write::Row)),
                (None, Some(tombstone)) => Some(Ok(Write::Tombstone(tombstone))),
                _ => None,
            })
            .collect::<Result<Vec<_>, MmError>>()
    })?;
    let _repair = RepairWrite::start(same_version);
    let mut written = 0;
    for write in writes {
        match write {
            Write::Row(values) => insert_row.execute(&values, pg_sys::SPI_OK_INSERT),
            Write::Tombstone(value) => insert_tombstone.execute(
                &[Some(Typed::text(value.get().as_bytes()))],
                pg_sys::SPI_OK_INSERT,
            ),
        };
        written += 1;
    }
    Ok(written)
}

/// What [`apply`] writes for an item.
enum Write<'a> {
    Row(Vec<Option<Typed>>),
    Tombstone(&'a RawValue),
}

/// The values of `row` (a JSON object of columns by name, as [`contents`] gives it) for
/// `columns`: each read by its type's input function from its text (a JSON string; another
/// scalar, such as a number, is read from its JSON text); `null` or a column that is not there is
/// NULL. Runs under [`settings::pinned`].
fn row_values(
    columns: &[(String, pg_sys::Oid, Input)],
    row: &RawValue,
) -> Result<Vec<Option<Typed>>, MmError> {
    let bad = |what: String| MmError::BadInternalArgument {
        function: "mm_conflict._repair_apply".into(),
        detail: format!("a repair row {what}"),
    };
    let fields: HashMap<String, &RawValue> =
        serde_json::from_str(row.get()).map_err(|e| bad(format!("is not a JSON object: {e}")))?;
    columns
        .iter()
        .map(|(name, _, input)| {
            let text = match fields.get(name).map(|v| v.get()) {
                None | Some("null") => None,
                Some(raw) if raw.starts_with('"') => Some(
                    serde_json::from_str::<String>(raw)
                        .map_err(|e| bad(format!("has a bad string for \"{name}\": {e}")))?,
                ),
                Some(raw) => Some(raw.to_string()),
            };
            let text = text
                .map(CString::new)
                .transpose()
                .map_err(|_| bad(format!("has a NUL character in \"{name}\"")))?;
            // The input function raises on text that is not a value of the column's type.
            Ok(input.value(text.as_deref()))
        })
        .collect()
}

/// One repair item: a row (`contents`) or a tombstone (`tombstones`), as raw JSON text.
#[derive(serde::Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    row: Option<&'a RawValue>,
    #[serde(borrow)]
    tombstone: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_nest() {
        let key = b"\x00\x00\x00\x04\x00\x00\x00\x2a";
        assert_eq!(bucket(key, 0), 0);
        for bits in (LEVEL_BITS..=MAX_BITS).step_by(LEVEL_BITS as usize) {
            assert_eq!(
                bucket(key, bits) >> LEVEL_BITS,
                bucket(key, bits - LEVEL_BITS)
            );
        }
    }

    #[test]
    fn entry_hash_sees_every_stamp() {
        let s = RowStamps {
            xacttime: Some(1),
            stattime: Some(2),
            node: Some(3),
            user_criterion: None,
        };
        let base = entry_hash(b"k", 7, &s);
        assert_ne!(base, entry_hash(b"k", 8, &s));
        assert_ne!(base, entry_hash(b"j", 7, &s));
        assert_ne!(base, entry_hash(b"k", 7, &RowStamps { node: None, ..s }));
        assert_ne!(
            base,
            entry_hash(
                b"k",
                7,
                &RowStamps {
                    xacttime: Some(9),
                    ..s
                }
            )
        );
        assert_ne!(
            base,
            entry_hash(
                b"k",
                7,
                &RowStamps {
                    stattime: None,
                    ..s
                }
            )
        );
    }
}
