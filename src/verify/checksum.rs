//! `mm_conflict.table_checksum`: one order-independent number per table, so that nodes can be
//! compared without moving rows.
//!
//! Each row hashes its user columns (bookkeeping columns excluded: `mm_islocal` differs between
//! nodes by design), taken in column-name order, so that nodes whose tables have the same columns
//! in another physical order still agree; row hashes are added up, so row order does not matter.
//! A value is hashed by its in-memory bytes where those are the same on every node, which is most
//! types; values whose bytes hold a node-local OID (enums, arrays of a type created by the user,
//! composites, ranges and multiranges of a user-created range type, domains over these, `regclass`
//! and its kin, `aclitem`) are hashed by their text output under pinned settings
//! ([`crate::pg::settings`]), decided once per column. The scan reads the heap directly: no
//! executor, and no output functions for the other types, which is what makes it several times
//! faster than `sum(hashtext(t::text))`.

use std::ffi::CStr;

use mm_conflict_core::{COL_ISLOCAL, COL_NODEID, COL_STATTIME, COL_XACTTIME};
use pgrx::prelude::*;
use pgrx::PgRelation;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::MmError;
use crate::pg::relation::{self, Open, Opened};
use crate::pg::scan::{self, ScannedRow};
use crate::pg::settings::{self, Output};
use crate::pg::types;

const BOOKKEEPING: [&str; 4] = [COL_ISLOCAL, COL_NODEID, COL_XACTTIME, COL_STATTIME];

/// A NULL changes the running hash differently from any value.
const NULL_MARK: u64 = 0x9E37_79B9_7F4A_7C15;

pub(super) struct Column {
    index: usize,
    how: HashAs,
}

/// How a column's values are hashed.
enum HashAs {
    /// Their in-memory bytes, the same on every node.
    Bytes,
    /// `real`, `double precision` (or a domain over one): their bytes, every NaN as one NaN (NaNs
    /// of other bit patterns print, and so travel, as the one `NaN`).
    Float4,
    Float8,
    /// Their text output (their bytes hold node-local OIDs), under pinned settings.
    Text(Output),
}

/// The user columns of a table (see [`user_columns`]).
pub(super) struct Columns {
    columns: Vec<Column>,
    /// Hashes the columns' names.
    seed: u64,
}

impl Columns {
    /// Whether some column is hashed by its text: then rows are hashed under
    /// [`settings::pinned`] (see [`Columns::hashing`]).
    fn by_text(&self) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c.how, HashAs::Text(_)))
    }

    /// Runs `f`, which hashes rows, with the settings the columns' text needs pinned (when some
    /// column is hashed by its text).
    pub(super) fn hashing<R>(&self, f: impl FnOnce() -> R) -> R {
        settings::pinned_if(self.by_text(), f)
    }
}

/// The user columns of `rel` in name order, with a seed that hashes their names (two tables with
/// different column names never agree by accident).
pub(super) fn user_columns(rel: &impl Open) -> Columns {
    let mut named: Vec<(String, Column)> = relation::columns_of(rel)
        .into_iter()
        .filter(|c| !BOOKKEEPING.contains(&c.name.as_str()))
        .map(|c| {
            let how = hash_as(c.typid, c.by_value);
            let column = Column {
                index: c.attnum as usize - 1,
                how,
            };
            (c.name, column)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    let seed = xxh3_64_with_seed(names.join("\0").as_bytes(), 0);
    Columns {
        columns: named.into_iter().map(|(_, c)| c).collect(),
        seed,
    }
}

/// Below this, OIDs are assigned by hand in PostgreSQL's catalog files: the same on every node of
/// every major. Types created by `initdb`'s scripts, by extensions or by users get theirs in order
/// of creation, node by node.
const FIXED_OIDS: u32 = pg_sys::FirstGenbkiObjectId;

/// Built-in types whose values are OIDs of node-local objects (or hold some): their text names
/// the objects.
const OID_VALUED: [pg_sys::Oid; 12] = [
    pg_sys::REGCLASSOID,
    pg_sys::REGCOLLATIONOID,
    pg_sys::REGCONFIGOID,
    pg_sys::REGDICTIONARYOID,
    pg_sys::REGNAMESPACEOID,
    pg_sys::REGOPERATOROID,
    pg_sys::REGOPEROID,
    pg_sys::REGPROCEDUREOID,
    pg_sys::REGPROCOID,
    pg_sys::REGROLEOID,
    pg_sys::REGTYPEOID,
    pg_sys::ACLITEMOID,
];

/// How values of type `typid` (passed by value or not) are hashed.
fn hash_as(typid: pg_sys::Oid, by_value: bool) -> HashAs {
    let base = types::base_type(typid);
    if base == pg_sys::FLOAT4OID && by_value {
        HashAs::Float4
    } else if base == pg_sys::FLOAT8OID && by_value {
        HashAs::Float8
    } else if bytes_are_portable(base) {
        HashAs::Bytes
    } else {
        HashAs::Text(Output::of(typid))
    }
}

/// Whether the in-memory form of every value of `typid` is the same on every node: no node-local
/// OID in it. An enum is its label's OID; an array carries its element type's OID, a composite
/// its type's, a range or multirange its range type's; a domain is its base type's form.
fn bytes_are_portable(typid: pg_sys::Oid) -> bool {
    let typid = types::base_type(typid);
    let fixed = typid.to_u32() < FIXED_OIDS;
    match types::typtype(typid) {
        pg_sys::TYPTYPE_BASE => match types::element_type(typid) {
            Some(element) => element.to_u32() < FIXED_OIDS && bytes_are_portable(element),
            None => !OID_VALUED.contains(&typid),
        },
        // Built-in ranges are of built-in types.
        pg_sys::TYPTYPE_RANGE | pg_sys::TYPTYPE_MULTIRANGE => fixed,
        // Enums, composites, pseudo-types.
        _ => false,
    }
}

/// Hashes non-NULL column `column` of `row` into `seed` (a detoasted copy or the value's text goes
/// to the current context; a column hashed by its text is hashed under [`settings::pinned`]).
fn hash_value(column: &Column, row: ScannedRow, seed: u64) -> u64 {
    let index = column.index;
    let bits = |row: ScannedRow| row.datum(index).map_or(0, |d| d.value());
    match &column.how {
        HashAs::Float4 => {
            let value = f32::from_bits(bits(row) as u32);
            let bits = if value.is_nan() { f32::NAN } else { value }.to_bits();
            xxh3_64_with_seed(&bits.to_le_bytes(), seed)
        }
        HashAs::Float8 => {
            let value = f64::from_bits(bits(row) as u64);
            let bits = if value.is_nan() { f64::NAN } else { value }.to_bits();
            xxh3_64_with_seed(&bits.to_le_bytes(), seed)
        }
        HashAs::Text(output) => {
            let text = row.text(index, output).map_or(&[][..], CStr::to_bytes);
            xxh3_64_with_seed(text, seed)
        }
        HashAs::Bytes => {
            let bytes = row.bytes(index).unwrap_or_default();
            xxh3_64_with_seed(&bytes, seed)
        }
    }
}

/// The hash of one row's user columns (`columns` from [`user_columns`] of the scanned table),
/// whatever their physical order; detoasted copies and texts go to the current memory context.
/// Runs inside [`Columns::hashing`].
pub(super) fn row_hash(columns: &Columns, row: ScannedRow) -> u64 {
    columns.columns.iter().fold(columns.seed, |h, column| {
        if row.is_null(column.index) {
            h.rotate_left(23) ^ NULL_MARK
        } else {
            hash_value(column, row, h)
        }
    })
}

/// Checks that `rel` is a table (ordinary or partitioned) whose every row this role may read
/// (`function` names the caller in errors), and returns its relkind.
pub(super) fn readable(rel: &PgRelation, function: &str) -> Result<u8, MmError> {
    let relkind = relation::relkind(rel);
    if relkind != pg_sys::RELKIND_RELATION && relkind != pg_sys::RELKIND_PARTITIONED_TABLE {
        return Err(MmError::NotATable {
            relation: relation::identity(rel),
            function: function.into(),
        });
    }
    relation::require_select(rel);
    // The scans read the heap directly: where row-level security would hide rows from this role,
    // they refuse instead of reading rows the role may not see.
    if relation::row_security_applies(rel.oid()) {
        return Err(MmError::HiddenByRowSecurity {
            table: relation::identity(rel),
        });
    }
    Ok(relkind)
}

/// The checksum of `rel` (see the module doc).
pub fn checksum(rel: &PgRelation) -> Result<i64, MmError> {
    let relkind = readable(rel, "table_checksum")?;
    if relkind == pg_sys::RELKIND_RELATION {
        return Ok(heap_sum(rel) as i64);
    }
    // A partitioned table: the sum over its leaves, whatever the partitioning (rows are hashed by
    // column name, and sums do not depend on order), so nodes that partition differently agree.
    let mut sum = 0u64;
    for leaf in crate::pg::partitions::leaf_partitions(rel.oid()) {
        // A leaf of the open root, opened and closed here (the lock is kept).
        sum = sum.wrapping_add(heap_sum(&Opened::table(leaf, pg_sys::AccessShareLock)));
    }
    Ok(sum as i64)
}

/// The sum of the row hashes of an open, locked ordinary table.
fn heap_sum(rel: &impl Open) -> u64 {
    let columns = user_columns(rel);
    let mut sum = 0u64;
    columns.hashing(|| {
        scan::each_row(rel, "mm_conflict table_checksum", |row| {
            sum = sum.wrapping_add(row_hash(&columns, row));
        })
    });
    sum
}
