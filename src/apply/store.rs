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
use crate::pg::relation::{self, Borrowed, Open};
use crate::pg::tuple::{attname, TupleRef, Typed};
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
    values: Vec<Typed>,
    bytes: Vec<u8>,
}

/// `rel`, which `info` must describe: the store probes `rel` with `info`'s key index and reads
/// its rows with `info`'s column numbers.
fn described<'a>(info: &RelInfo, rel: &'a impl Open) -> Borrowed<'a> {
    let rel = Borrowed::of(rel);
    if relation::oid(&rel) != info.relid {
        not_of_relation(&info.table);
    }
    rel
}

#[cold]
#[inline(never)]
fn not_of_relation(table: &str) -> ! {
    panic!("a store of {table} was given another relation or its tuples");
}

/// One key of a replicated table, for the engine.
pub struct PgStore<'a> {
    info: &'a RelInfo,
    rel: Borrowed<'a>,
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
    found_at: std::cell::Cell<Option<probe::Place<'a>>>,
}

impl<'a> PgStore<'a> {
    /// A store for the key of `row` (a tuple of `rel`, which `info` describes).
    pub fn for_tuple(
        info: &'a RelInfo,
        rel: &'a impl Open,
        row: TupleRef<'a>,
        copy_rows: bool,
    ) -> PgStore<'a> {
        let rel = described(info, rel);
        // The key is read from `row` with the relation's key columns: a tuple of another shape
        // would give values of other types.
        if !row.described_by(relation::descriptor(&rel)) {
            not_of_relation(&info.table);
        }
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

    /// A store for a key given by its values and binary form (a tombstone's key), of `rel`,
    /// which `info` describes.
    pub fn for_key(
        info: &'a RelInfo,
        rel: &'a impl Open,
        values: Vec<Typed>,
        bytes: Vec<u8>,
        copy_rows: bool,
    ) -> PgStore<'a> {
        let key = OnceCell::new();
        let _ = key.set(Key { values, bytes });
        PgStore {
            info,
            rel: described(info, rel),
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
            // A key column NULL in the row about to be written (PostgreSQL checks NOT NULL only
            // after the BEFORE triggers): refused as PostgreSQL would refuse it.
            let Some(values) = pk.values_if_set(row) else {
                let attnum = pk.null_column(row).unwrap_or(1);
                MmError::KeyColumnNull {
                    table: self.info.table.clone(),
                    column: attname(row.attribute(attnum)).to_string(),
                }
                .raise()
            };
            let bytes = pk.encode(&values);
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
        probe::probe(&self.rel, pk, &self.key().values, &|tuple| Stored {
            stamps: info.stamps(tuple),
            delta: info
                .delta
                .is_some()
                .then(|| delta_of(info, &Row::Tuple(tuple))),
            // SAFETY: copied out of the pinned buffer into the current memory context, the
            // trigger's, which outlives the store and the rows it hands out. (It stays here: only
            // the caller knows which context outlives what it keeps.)
            row: copy.then(|| Row::Tuple(unsafe { tuple.copy() })),
        })
    }

    fn find_row_to_lock(&mut self) -> Lookup<(), pg_sys::TransactionId> {
        self.found_at.set(None);
        let Some(pk) = &self.info.primary_key else {
            return Lookup::Absent;
        };
        match probe::probe_place(&self.rel, pk, &self.key().values) {
            Lookup::Found(place) => {
                self.found_at.set(Some(place));
                Lookup::Found(())
            }
            Lookup::InProgress(xid) => Lookup::InProgress(xid),
            Lookup::Absent => Lookup::Absent,
        }
    }

    fn lock_row(&mut self) -> bool {
        let Some(place) = self.found_at.get() else {
            return false;
        };
        probe::lock_row(&self.rel, place) == probe::RowLock::Held
    }

    fn overwrite(&mut self, row: &Row<'a>) -> bool {
        let _converting = Converting::start();
        let params = self.info.row_values(row);
        self.info.overwrite.execute(&params, pg_sys::SPI_OK_UPDATE) > 0
    }

    fn take_row(&mut self) -> Option<Row<'a>> {
        let _own_write = OwnWrite::start();
        let params = self.info.key_parameters(&self.key().values);
        // The statement returns the row's live columns in parameter order.
        self.info
            .resend_delete
            .execute_returning(&params, pg_sys::SPI_OK_DELETE_RETURNING)
            .map(|values| Row::Values(Params::new(values)))
    }

    fn put_row(&mut self, row: &Row<'a>) {
        let _own_write = OwnWrite::start();
        let params = self.info.row_values(row);
        self.info
            .resend_insert
            .execute(&params, pg_sys::SPI_OK_INSERT);
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
            let found = probe::probe(&self.rel, unique, &values, &|found| {
                // SAFETY: as in `find_row` (and why it stays here).
                (pk.encode_row(found), info.stamps(found), unsafe {
                    found.copy()
                })
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
        Lookup::Absent
    }

    fn delta_columns(&self) -> usize {
        self.info.delta.as_ref().map_or(0, |d| d.columns.len())
    }

    fn delta(&self, row: &Row<'a>) -> Delta {
        delta_of(self.info, row)
    }

    fn amounts(&self, row: &Row<'a>) -> Vec<Amount> {
        amounts_of(self.info, row, false)
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
fn amounts_of(info: &RelInfo, row: &Row, null_is_zero: bool) -> Vec<Amount> {
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
                Some(value) => column.kind.read(value),
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
fn delta_of(info: &RelInfo, row: &Row) -> Delta {
    let Some(delta) = &info.delta else {
        return Delta::default();
    };
    match info.row_value(row, delta.att_state) {
        None => Delta::base(amounts_of(info, row, true)),
        Some(value) => {
            // mm_delta is a text column (RelInfo's build checked it).
            let text = crate::pg::amount::text_string(value).unwrap_or_default();
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
