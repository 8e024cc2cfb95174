//! The engine's store over PostgreSQL: the key lock, the primary-key probe, the tombstone table,
//! and the prepared statements that overwrite and re-send rows.

use std::cell::OnceCell;

use mm_conflict_core::engine::{Lookup, Resolution, Store, Stored, Tombstones};
use mm_conflict_core::{Amount, Delta, RowStamps, Tombstone};
use pgrx::pg_sys;

use super::{Converting, OwnWrite};
use crate::catalog::relinfo::{Params, RelInfo, Row};
use crate::catalog::tombstones::{self, TombstoneTable};
use crate::error::MmError;
use crate::pg::names::stable_hash;
use crate::pg::tuple::TupleRef;
use crate::pg::{keylock, probe};
use crate::report;

/// The tombstones of one key of one table (named by its stable name), and the key lock.
pub struct KeyTombstones<'a> {
    table: std::rc::Rc<TombstoneTable>,
    table_name: &'a [u8],
    table_hash: u32,
    key: &'a [u8],
}

impl<'a> KeyTombstones<'a> {
    pub fn new(table_name: &'a [u8], key: &'a [u8]) -> Result<KeyTombstones<'a>, MmError> {
        Ok(KeyTombstones {
            table: tombstones::table()?,
            table_name,
            table_hash: stable_hash(table_name),
            key,
        })
    }
}

impl Tombstones for KeyTombstones<'_> {
    type Waiter = pg_sys::TransactionId;

    fn lock_key(&mut self) {
        keylock::lock_key(self.table_hash, self.key);
    }

    fn unlock_key(&mut self) {
        keylock::release_previous();
    }

    fn wait(&mut self, xid: pg_sys::TransactionId) {
        keylock::wait(xid);
    }

    fn find_tombstone(&mut self) -> Lookup<Tombstone, pg_sys::TransactionId> {
        self.table.probe(self.table_name, self.key)
    }

    fn record_tombstone(&mut self, tombstone: &Tombstone) {
        // Most deletes are of keys never deleted before: the insert finds that out itself, in
        // the descent that makes its index entry (outside apply sessions).
        if self.table.insert_new(self.table_name, self.key, tombstone) {
            return;
        }
        // With no stored tombstone there is nothing to remove, and the probe (an index lookup,
        // none at all while the table is empty) costs far less than the DELETE statement, which
        // would fire nothing either.
        if !matches!(self.find_tombstone(), Lookup::Absent) {
            self.remove_tombstone();
        }
        self.table.insert(self.table_name, self.key, tombstone);
    }

    fn remove_tombstone(&mut self) {
        let _own_write = OwnWrite::start();
        self.table.remove(self.table_name, self.key);
    }
}

/// The key of a row, computed on first use (UPDATE paths never need it).
struct Key {
    values: Vec<pg_sys::Datum>,
    bytes: Vec<u8>,
}

/// One key of a replicated table, for the engine.
pub struct PgStore<'a> {
    info: &'a RelInfo,
    rel: pg_sys::Relation,
    /// The row whose key this store serves (the written row, or the deleted one).
    keyed_row: Option<TupleRef<'a>>,
    key: OnceCell<Key>,
    tombstones: OnceCell<std::rc::Rc<TombstoneTable>>,
    /// Copy stored rows found by the probe (only when a report could show them).
    copy_rows: bool,
    /// The delta state the engine gave the row it writes ([`Store::write_delta`]).
    delta: Option<Delta>,
    /// Where [`Store::find_row_to_lock`] last found the key's row ([`Store::lock_row`] locks it
    /// there).
    found_at: std::cell::Cell<Option<pg_sys::ItemPointerData>>,
}

impl<'a> PgStore<'a> {
    /// A store for the key of `row` (a tuple of `rel`).
    ///
    /// # Safety
    /// `rel` is open and locked and described by `info`, while the store is used; `row` is one of
    /// its tuples.
    pub unsafe fn for_tuple(
        info: &'a RelInfo,
        rel: pg_sys::Relation,
        row: TupleRef<'a>,
        copy_rows: bool,
    ) -> PgStore<'a> {
        PgStore {
            info,
            rel,
            keyed_row: Some(row),
            key: OnceCell::new(),
            tombstones: OnceCell::new(),
            copy_rows,
            delta: None,
            found_at: std::cell::Cell::new(None),
        }
    }

    /// A store for a key given by its values and binary form (a tombstone's key).
    ///
    /// # Safety
    /// As for [`PgStore::for_tuple`]; `values` are the key's column values.
    pub unsafe fn for_key(
        info: &'a RelInfo,
        rel: pg_sys::Relation,
        values: Vec<pg_sys::Datum>,
        bytes: Vec<u8>,
        copy_rows: bool,
    ) -> PgStore<'a> {
        let key = OnceCell::new();
        let _ = key.set(Key { values, bytes });
        PgStore {
            info,
            rel,
            keyed_row: None,
            key,
            tombstones: OnceCell::new(),
            copy_rows,
            delta: None,
            found_at: std::cell::Cell::new(None),
        }
    }

    /// The delta state the engine gave the row the trigger writes, if any.
    pub fn take_delta(&mut self) -> Option<Delta> {
        self.delta.take()
    }

    fn key(&self) -> &Key {
        self.key.get_or_init(|| {
            let (pk, row) = match (&self.info.primary_key, self.keyed_row) {
                (Some(pk), Some(row)) => (pk, row),
                // The engine asks for the key only of tables with a primary key, and stores made
                // from a key have one set.
                _ => unreachable!("a key of a table without a primary key"),
            };
            let (values, bytes) = pk.values_and_encoded(row);
            Key { values, bytes }
        })
    }

    fn key_tombstones(&self) -> KeyTombstones<'_> {
        let table = self
            .tombstones
            .get_or_init(|| tombstones::table().unwrap_or_else(|e| e.raise()));
        KeyTombstones {
            table: std::rc::Rc::clone(table),
            table_name: self.info.table.as_bytes(),
            table_hash: self.info.table_hash,
            key: &self.key().bytes,
        }
    }
}

impl Tombstones for PgStore<'_> {
    type Waiter = pg_sys::TransactionId;

    fn lock_key(&mut self) {
        keylock::lock_key(self.info.table_hash, &self.key().bytes);
    }

    fn unlock_key(&mut self) {
        keylock::release_previous();
    }

    fn wait(&mut self, xid: pg_sys::TransactionId) {
        keylock::wait(xid);
    }

    fn find_tombstone(&mut self) -> Lookup<Tombstone, pg_sys::TransactionId> {
        self.key_tombstones().find_tombstone()
    }

    fn record_tombstone(&mut self, tombstone: &Tombstone) {
        if self.info.published {
            self.key_tombstones().record_tombstone(tombstone);
        }
    }

    fn remove_tombstone(&mut self) {
        self.key_tombstones().remove_tombstone();
    }

    fn tombstones_below(&mut self, micros: mm_conflict_core::Micros) -> bool {
        tombstones::key_below(self.info.table_hash, &self.key().bytes, micros)
    }
}

impl<'a> Store for PgStore<'a> {
    type Row = Row<'a>;

    fn keyed(&self) -> bool {
        self.info.primary_key.is_some()
    }

    fn overwrites_same_version(&self) -> bool {
        crate::pg::flag::RepairWrite::overwrites_same_version()
    }

    fn stamps(&self, row: &Row<'a>) -> RowStamps {
        self.info.row_stamps(row)
    }

    fn find_row(&mut self) -> Lookup<Stored<Row<'a>>, pg_sys::TransactionId> {
        let (info, copy) = (self.info, self.copy_rows);
        let Some(pk) = &info.primary_key else {
            return Lookup::Absent;
        };
        // SAFETY: rel is open and locked; the key values are valid during the probe. The reader
        // runs on a pinned tuple of the relation and copies what it keeps into the current
        // (trigger's) memory context, which outlives the store.
        unsafe {
            probe::probe(self.rel, pk, &self.key().values, &|tuple| Stored {
                stamps: info.stamps(tuple),
                delta: info
                    .delta
                    .is_some()
                    .then(|| delta_of(info, &Row::Tuple(tuple))),
                row: copy.then(|| Row::Tuple(tuple.copy())),
            })
        }
    }

    fn find_row_to_lock(&mut self) -> Lookup<(), pg_sys::TransactionId> {
        let found_at = &self.found_at;
        let Some(pk) = &self.info.primary_key else {
            return Lookup::Absent;
        };
        found_at.set(None);
        // SAFETY: as in `find_row`; the reader keeps only the row's place.
        unsafe {
            probe::probe(self.rel, pk, &self.key().values, &|tuple| {
                found_at.set(Some(tuple.tid()))
            })
        }
    }

    fn lock_row(&mut self) -> bool {
        let Some(tid) = self.found_at.get() else {
            return false;
        };
        // SAFETY: rel is open and locked (`for_tuple`'s contract), a heap table (the trigger
        // fires on tables only); `tid` is where this transaction's probe found the key's row.
        unsafe { probe::lock_row(self.rel, tid) == probe::RowLock::Held }
    }

    fn overwrite(&mut self, row: &Row<'a>) -> bool {
        let _converting = Converting::start();
        let params = self.info.row_values(row);
        // SAFETY: the parameters are the row's own values (of this relation, as every row handed
        // to the engine), of the statement's argument types, the live columns' types.
        unsafe { self.info.overwrite.execute(&params, pg_sys::SPI_OK_UPDATE) > 0 }
    }

    fn take_row(&mut self) -> Option<Row<'a>> {
        let _own_write = OwnWrite::start();
        let params = self.info.key_parameters(&self.key().values);
        // SAFETY: the key parameters match the statement's argument types; the statement returns
        // the row's live columns in parameter order, of their types (as `Params` holds them).
        unsafe {
            self.info
                .resend_delete
                .execute_returning(&params, pg_sys::SPI_OK_DELETE_RETURNING)
                .map(|values| Row::Values(Params::new(values)))
        }
    }

    fn put_row(&mut self, row: &Row<'a>) {
        let _own_write = OwnWrite::start();
        let params = self.info.row_values(row);
        // SAFETY: the row's values match the statement's argument types (as for `overwrite`).
        unsafe {
            self.info
                .resend_insert
                .execute(&params, pg_sys::SPI_OK_INSERT);
        }
    }

    fn report(&mut self, resolution: &Resolution<Row<'a>>) {
        report::report(self.info, resolution)
    }

    fn find_unique_conflict(
        &mut self,
        row: &Row<'a>,
    ) -> Lookup<Stored<Row<'a>>, pg_sys::TransactionId> {
        let info = self.info;
        let (Row::Tuple(tuple), Some(pk)) = (row, &info.primary_key) else {
            return Lookup::Absent;
        };
        let own = &self.key().bytes;
        for unique in &info.unique_keys {
            let Some(values) = unique.values_if_set(*tuple) else {
                continue; // a NULL never collides
            };
            // SAFETY: rel is open and locked; `values` are the unique key's, valid during the
            // probe; the reader runs on a pinned tuple of the relation and copies what it keeps
            // into the current (trigger's) memory context, which outlives the store.
            unsafe {
                let found = probe::probe(self.rel, unique, &values, &|found| {
                    (pk.encode_row(found), info.stamps(found), found.copy())
                });
                match found {
                    Lookup::Absent => {}
                    Lookup::InProgress(xid) => return Lookup::InProgress(xid),
                    // The row's own stored version holds its own value: no conflict.
                    Lookup::Found((key, _, _)) if &key == own => {}
                    Lookup::Found((_, stamps, copy)) => {
                        return Lookup::Found(Stored {
                            stamps,
                            delta: None,
                            row: Some(Row::Tuple(copy)),
                        })
                    }
                }
            }
        }
        Lookup::Absent
    }

    fn delta_columns(&self) -> usize {
        self.info.delta.as_ref().map_or(0, |d| d.columns.len())
    }

    fn delta(&self, row: &Row<'a>) -> Delta {
        // SAFETY: rows handed to the engine are tuples of this relation or its parameter values.
        unsafe { delta_of(self.info, row) }
    }

    fn amounts(&self, row: &Row<'a>) -> Vec<Amount> {
        // SAFETY: as for `delta`.
        unsafe { amounts_of(self.info, row, false) }
    }

    fn write_delta(&mut self, delta: Delta) {
        self.delta = Some(delta);
    }

    fn lock_unique_values(&mut self, row: &Row<'a>, old: Option<&Row<'a>>) {
        let info = self.info;
        if info.unique_keys.is_empty() || info.primary_key.is_none() {
            return;
        }
        let Row::Tuple(tuple) = row else {
            return;
        };
        let old = match old {
            Some(Row::Tuple(old)) => Some(*old),
            _ => None,
        };
        let mut values = Vec::new();
        for (place, unique) in info.unique_keys.iter().enumerate() {
            let encoded = |t: TupleRef| unique.encode_row_if_set(t);
            let Some(bytes) = encoded(*tuple) else {
                continue; // a NULL never collides
            };
            if old.is_some_and(|old| encoded(old).as_ref() == Some(&bytes)) {
                continue; // unchanged: its index entry is this row's already
            }
            let mut tagged = vec![place as u8 + 1];
            tagged.extend(bytes);
            values.push(tagged);
        }
        if !values.is_empty() {
            keylock::add_value_locks(info.table_hash, &self.key().bytes, &values);
        }
    }

    fn bury(&mut self, row: &Row<'a>, tombstone: &Tombstone) -> bool {
        let (Row::Tuple(tuple), Some(pk)) = (row, &self.info.primary_key) else {
            return false;
        };
        let key = pk.encode_row(*tuple);
        // Written in an apply session, the tombstone goes through the tombstone table's triggers
        // as one from a peer: stored only if it beats the key's, and settling that key's row.
        let table = self
            .tombstones
            .get_or_init(|| tombstones::table().unwrap_or_else(|e| e.raise()));
        table.insert(self.info.table.as_bytes(), &key, tombstone)
    }
}

/// The values of `row`'s delta columns. A NULL is refused (`23502`), or with `null_is_zero`
/// counted as 0 (a row from before the declaration).
///
/// # Safety
/// `row` is a tuple of `info`'s relation, or its parameter values (its delta columns' datums are
/// read as their types).
unsafe fn amounts_of(info: &RelInfo, row: &Row, null_is_zero: bool) -> Vec<Amount> {
    let Some(delta) = &info.delta else {
        return Vec::new();
    };
    delta
        .columns
        .iter()
        .map(|column| {
            let value = info.row_value(row, column.attnum);
            let amount = match value {
                None if null_is_zero => Ok(Amount::ZERO),
                None => MmError::DeltaColumnNull {
                    table: info.table.clone(),
                    column: column.name.clone(),
                }
                .raise(),
                // SAFETY: a non-NULL datum of the column (the row is of this relation: `# Safety`;
                // RelInfo's build found the column's number and type).
                Some(datum) => unsafe { column.kind.read(datum) },
            };
            amount.unwrap_or_else(|e| {
                MmError::DeltaOutOfRange {
                    table: info.table.clone(),
                    column: column.name.clone(),
                    detail: e.to_string(),
                }
                .raise()
            })
        })
        .collect()
}

/// The state of `row`'s delta columns: `mm_delta` read back, or for a row without one (written
/// before the columns were declared) its values as the base node's. A state that does not read
/// raises `XX001`.
///
/// # Safety
/// As for [`amounts_of`].
unsafe fn delta_of(info: &RelInfo, row: &Row) -> Delta {
    let Some(delta) = &info.delta else {
        return Delta::default();
    };
    match info.row_value(row, delta.att_state) {
        // SAFETY: the row is of this relation (`# Safety`).
        None => Delta::base(unsafe { amounts_of(info, row, true) }),
        Some(datum) => {
            // SAFETY: a non-NULL datum of att_state, the text column mm_delta (the row is of this
            // relation: `# Safety`).
            let text = unsafe { crate::pg::amount::text_string(datum) };
            Delta::decode(&text, delta.columns.len()).unwrap_or_else(|e| {
                MmError::DeltaStateMalformed {
                    table: info.table.clone(),
                    detail: e.to_string(),
                }
                .raise()
            })
        }
    }
}
