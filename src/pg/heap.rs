//! Rows written as PostgreSQL writes its catalog rows: one heap insert and one entry in each of
//! the table's indexes (uniqueness checked, waiting for a concurrent inserter as any INSERT
//! does), without the executor, triggers, rules, rights or row-level security.
//!
//! Only for tables whose description allows it, checked by [`DirectInsert::of`] (a plain heap
//! table; plain b-tree indexes, checked at once; no CHECK constraint, generated column, rule or
//! row-level security; no trigger but the caller's own), so that the row stored is the one an
//! INSERT of the same values would store. The caller decides that skipping its own triggers is
//! right and keeps the description only while the relation is unchanged (relcache callback).

use pgrx::pg_sys;

use super::datum::Typed;
use super::relation::Open;

/// What [`DirectInsert::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The row is stored.
    Stored,
    /// A unique index already holds the row's key, live or being written (only with
    /// [`OnDuplicate::StepBack`]): the row was inserted and deleted again, so nothing of it is
    /// visible (a dead tuple is left, as an `INSERT ... ON CONFLICT` that meets a conflict leaves).
    Duplicate,
    /// The table is no longer as it was described (locking it for the write brought news of a
    /// change): nothing was written; the caller runs an INSERT (and describes the table again).
    Changed,
}

/// What a key that a unique index already holds does to [`DirectInsert::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// `23505`, as an INSERT raises (after waiting for a transaction still writing the key).
    Raise,
    /// [`Inserted::Duplicate`], without waiting: for a caller that expects the key to be new
    /// and removes the stored row before trying again.
    StepBack,
}

/// One index to fill: its oid, uniqueness and the table column of each index column.
struct Index {
    oid: pg_sys::Oid,
    unique: bool,
    columns: Vec<pg_sys::AttrNumber>,
}

/// A table that accepts direct inserts (see the module's documentation).
pub struct DirectInsert {
    relid: pg_sys::Oid,
    indexes: Vec<Index>,
    /// What the table looked like when this was made (see [`Shape`]).
    shape: Shape,
}

/// What could change between the description and a write, in the same transaction or in a
/// concurrent one whose change this backend learns only when it locks the table for the write
/// (an index built concurrently, a trigger created meanwhile): compared at every write.
#[derive(PartialEq, Eq)]
struct Shape {
    natts: i32,
    indexes: Vec<pg_sys::Oid>,
    triggers: i32,
    rowsecurity: bool,
    rules: bool,
    checks: u16,
    generated: bool,
}

impl Shape {
    /// # Safety
    /// `rel` is an open relation.
    unsafe fn of(rel: pg_sys::Relation) -> Shape {
        // SAFETY: `rel` is open (`# Safety`): its relcache entry, descriptor and trigger
        // description are valid.
        unsafe {
            let form = &*(*rel).rd_rel;
            let tupdesc = (*rel).rd_att;
            let constr = (*tupdesc).constr;
            let trigdesc = (*rel).trigdesc;
            Shape {
                natts: (*tupdesc).natts,
                indexes: super::key::index_oids(rel),
                triggers: if trigdesc.is_null() {
                    0
                } else {
                    (*trigdesc).numtriggers
                },
                rowsecurity: form.relrowsecurity,
                rules: form.relhasrules || !(*rel).rd_rules.is_null(),
                checks: if constr.is_null() {
                    0
                } else {
                    (*constr).num_check
                },
                generated: !constr.is_null() && (*constr).has_generated_stored,
            }
        }
    }
}

impl DirectInsert {
    /// The direct insert of `rel`, or `None` when an INSERT of it would do more than a heap insert
    /// and index entries: then the caller runs an INSERT. `own_trigger` tells the triggers
    /// (by their function's oid) whose firing the caller knows it may skip.
    pub fn of(rel: &impl Open, own_trigger: impl Fn(pg_sys::Oid) -> bool) -> Option<DirectInsert> {
        let rel = rel.raw();
        // SAFETY: `rel` is open (`Open`): its relcache entry, descriptor, trigger description and
        // index list are valid; each index is opened and closed here.
        unsafe {
            let form = &*(*rel).rd_rel;
            let shape = Shape::of(rel);
            if form.relkind as u8 != pg_sys::RELKIND_RELATION
                || form.relam != pg_sys::HEAP_TABLE_AM_OID
                || shape.rowsecurity
                || shape.rules
                || shape.checks > 0
                || shape.generated
            {
                return None;
            }
            let trigdesc = (*rel).trigdesc;
            if !trigdesc.is_null() {
                let triggers = std::slice::from_raw_parts(
                    (*trigdesc).triggers,
                    (*trigdesc).numtriggers as usize,
                );
                if triggers.iter().any(|t| !own_trigger(t.tgfoid)) {
                    return None;
                }
            }
            let mut indexes = Vec::with_capacity(shape.indexes.len());
            for &oid in &shape.indexes {
                let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                let info = pg_sys::BuildIndexInfo(index);
                let form = &*(*index).rd_index;
                let plain = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
                    && form.indisvalid
                    && form.indisready
                    && form.indimmediate
                    && (*info).ii_Expressions.is_null()
                    && (*info).ii_Predicate.is_null()
                    && (*info).ii_ExclusionOps.is_null();
                let columns =
                    (&(*info).ii_IndexAttrNumbers)[..(*info).ii_NumIndexAttrs as usize].to_vec();
                let unique = form.indisunique;
                pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                if !plain || columns.iter().any(|&c| c <= 0) {
                    return None;
                }
                indexes.push(Index {
                    oid,
                    unique,
                    columns,
                });
            }
            Some(DirectInsert {
                relid: (*rel).rd_id,
                indexes,
                shape,
            })
        }
    }

    /// The number of the table's attributes (dropped ones included): the length of the values
    /// [`DirectInsert::insert`] takes.
    pub fn natts(&self) -> usize {
        self.shape.natts as usize
    }

    /// Inserts a row of `values` (by attribute number − 1; `None` = NULL), then makes it visible
    /// to the transaction's later commands, as an INSERT run through SPI does. A key that a
    /// unique index already holds does what `on_duplicate` says. Every index gets the row's
    /// entry either way (a unique index checks its key as it inserts it: that is the one
    /// descent a new key costs). Each value must be of its column's type (checked: another is a
    /// bug of the caller, raised as an internal error); a read-only transaction raises `25006`.
    pub fn insert(&self, values: &[Option<Typed>], on_duplicate: OnDuplicate) -> Inserted {
        assert_eq!(values.len(), self.natts(), "values for every attribute");
        // SAFETY: a check of the transaction's state, which raises in a read-only one.
        unsafe { pg_sys::PreventCommandIfReadOnly(c"mm_conflict's direct insert".as_ptr()) };
        let mut datums: Vec<pg_sys::Datum> = values
            .iter()
            .map(|v| v.map_or(pg_sys::Datum::from(0), Typed::datum))
            .collect();
        let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
        // SAFETY: in a writable transaction (checked above); the table and its indexes are opened
        // with the lock an INSERT takes and kept until transaction end; the tuple is formed from
        // the table's own descriptor, once its shape is checked to be the one described and each
        // value to be of its attribute's type (so the indexes are all of its indexes and the
        // values fit its attributes), and freed after its index entries are made (its tid copied
        // first); the row deleted again on a duplicate is this transaction's own, visible to the
        // delete after the CommandCounterIncrement.
        unsafe {
            let rel = pg_sys::table_open(self.relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            if Shape::of(rel) != self.shape {
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                return Inserted::Changed;
            }
            let attributes = super::compat::attributes((*rel).rd_att);
            let fits = attributes.iter().zip(values).all(|(att, value)| {
                value.is_none_or(|v| v.typid() == att.atttypid && !att.attisdropped)
            });
            if !fits {
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                panic!("a direct insert's values do not fit the table's columns: {values:?}");
            }
            let unique_check = match on_duplicate {
                OnDuplicate::Raise => pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
                // Reports a potential duplicate (a live row, or one a transaction is still
                // writing) instead of raising or waiting; the entry is made all the same.
                OnDuplicate::StepBack => pg_sys::IndexUniqueCheck::UNIQUE_CHECK_PARTIAL,
            };
            let mut duplicate = false;
            let tuple =
                pg_sys::heap_form_tuple((*rel).rd_att, datums.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(rel, tuple);
            for index in &self.indexes {
                let irel =
                    pg_sys::index_open(index.oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                let info = pg_sys::BuildIndexInfo(irel);
                let mut ivalues: Vec<pg_sys::Datum> = index
                    .columns
                    .iter()
                    .map(|&c| datums[c as usize - 1])
                    .collect();
                let mut inulls: Vec<bool> = index
                    .columns
                    .iter()
                    .map(|&c| nulls[c as usize - 1])
                    .collect();
                let unique = pg_sys::index_insert(
                    irel,
                    ivalues.as_mut_ptr(),
                    inulls.as_mut_ptr(),
                    &raw mut (*tuple).t_self,
                    rel,
                    if index.unique {
                        unique_check
                    } else {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                    },
                    false,
                    info,
                );
                // The answer means something only under UNIQUE_CHECK_PARTIAL (the others raise
                // or wait; a non-unique b-tree answers false).
                duplicate |= index.unique && on_duplicate == OnDuplicate::StepBack && !unique;
                pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            let mut tid = (*tuple).t_self;
            pg_sys::heap_freetuple(tuple);
            pg_sys::CommandCounterIncrement();
            if duplicate {
                // The row is this command's own, now visible to the next one: delete it again.
                pg_sys::simple_heap_delete(rel, &raw mut tid);
                pg_sys::CommandCounterIncrement();
            }
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            if duplicate {
                Inserted::Duplicate
            } else {
                Inserted::Stored
            }
        }
    }
}
