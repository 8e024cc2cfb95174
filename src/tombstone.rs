//! Versioned deletes: tombstones in `mm_conflict.tombstone`, replicated with the tables.
//!
//! A local DELETE through `mm_resolve` records a tombstone (table, binary key, version) in the same
//! transaction. Peers resolve tombstones against each other like rows (`tombstone_resolve`, BEFORE),
//! and a tombstone that is new on a node settles that node's row of the key at once
//! (`tombstone_settle`, AFTER): the row is deleted if the tombstone wins, and re-sent as
//! DELETE + INSERT if the row wins, so that nodes which applied the delete get it back. Deciding
//! when the tombstone lands, not when the DELETE does, matters: a relay that had no row forwards
//! the tombstone without the DELETE.
//!
//! Tables are named by their quoted, schema-qualified name (never an OID, which differs per node,
//! nor `regclass` text, which depends on `search_path`, empty in apply workers). Every path that
//! writes or reads a tombstone takes the key lock of the row's key (see `keylock`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mm_conflict_core::decide::{self, DeleteAction};
use mm_conflict_core::{Decision, Direction, RowStamps, Stamps, Version, VersionOrder};
use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, PgTupleDesc};

use crate::conflicts::{self, Resolution, Row};
use crate::error::OrRaise;
use crate::keylock;
use crate::probe::{self, Probe};
use crate::relinfo::{self, stable_hash, PrimaryKey, RelInfo};
use crate::resolve::is_replicated_session;
use crate::scoped_flag::ScopedFlag;
use crate::spi::{text_datum, CachedPlan};

/// A tombstone as read from its row.
#[derive(Clone, Copy, Debug)]
pub struct Tombstone {
    pub version: Version,
    /// The delete's clock stamps: a later local write of the key is stamped above them.
    pub stamps: RowStamps,
    /// The order of the table the delete was made under.
    pub order: VersionOrder,
}

pub struct TombstoneTable {
    relid: pg_sys::Oid,
    pk: PrimaryKey,
    att_table_name: pg_sys::AttrNumber,
    att_pk: pg_sys::AttrNumber,
    att_criterion: pg_sys::AttrNumber,
    att_xacttime: pg_sys::AttrNumber,
    att_stattime: pg_sys::AttrNumber,
    att_nodeid: pg_sys::AttrNumber,
    att_order_last: pg_sys::AttrNumber,
    att_order_winner: pg_sys::AttrNumber,
    att_order_preferred: pg_sys::AttrNumber,
    /// Local deletes: insert the key's tombstone (after `remove`-ing an older one).
    record: CachedPlan,
    /// Removes the key's stored tombstone before a newer one is inserted. A tombstone is never
    /// replaced by an UPDATE: a node that purged the old one would skip the UPDATE (no row), while
    /// it resolves an INSERT; and peers skip the replicated DELETE, as they skip purges.
    remove: CachedPlan,
}

thread_local! {
    static TABLE: RefCell<Option<Rc<TombstoneTable>>> = const { RefCell::new(None) };
    /// The statement (local transaction, command id) that last found the tombstone table empty.
    /// A tombstone committed by another session during that statement is missed by its later rows;
    /// that is harmless: a replicated tombstone settles the new row when it lands, and a local one
    /// needs the row to exist first. Our own writes advance the command id, which ends the cache.
    static EMPTY_IN_STATEMENT: Cell<Option<(u32, u32)>> = const { Cell::new(None) };
    /// True during mm_conflict's own writes (see `OwnWrite`).
    static OWN_WRITE: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the cached table description when the table changes.
pub fn invalidate(relid: pg_sys::Oid) {
    TABLE.with(|t| {
        if let Ok(mut table) = t.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || table.as_ref().is_some_and(|x| x.relid == relid) {
                *table = None;
            }
        }
    });
}

const COLUMNS: &str =
    "table_name, pk, criterion, mm_last_xacttime, mm_last_stattime, mm_nodeid, order_last, order_winner, order_preferred";

/// The tombstone table's description, looked up once per backend.
pub fn table() -> Rc<TombstoneTable> {
    if let Some(t) = TABLE.with(|t| t.borrow().clone()) {
        return t;
    }
    // SAFETY: catalog lookups in a transaction; the relation is opened and closed here.
    let table = unsafe {
        let namespace = pg_sys::get_namespace_oid(c"mm_conflict".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(c"tombstone".as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            pgrx::error!(
                "table mm_conflict.tombstone is missing: recreate the extension mm_conflict"
            );
        }
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let tupdesc = (*rel).rd_att;
        let att = |name: &str| relinfo::attnum(tupdesc, name).expect("tombstone column");
        let types = [
            pg_sys::TEXTOID,
            pg_sys::BYTEAOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::TIMESTAMPTZOID,
            pg_sys::INT2OID,
            pg_sys::BOOLOID,
            pg_sys::INT2OID,
            pg_sys::INT2OID,
        ];
        let table = TombstoneTable {
            relid,
            pk: relinfo::primary_key(rel).expect("mm_conflict.tombstone has a primary key"),
            att_table_name: att("table_name"),
            att_pk: att("pk"),
            att_criterion: att("criterion"),
            att_xacttime: att("mm_last_xacttime"),
            att_stattime: att("mm_last_stattime"),
            att_nodeid: att("mm_nodeid"),
            att_order_last: att("order_last"),
            att_order_winner: att("order_winner"),
            att_order_preferred: att("order_preferred"),
            record: CachedPlan::new(
                format!(
                    "INSERT INTO mm_conflict.tombstone ({COLUMNS}, deleted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, pg_catalog.now())"
                ),
                types.to_vec(),
            ),
            remove: CachedPlan::new(
                "DELETE FROM mm_conflict.tombstone WHERE table_name = $1 AND pk = $2".to_string(),
                types[..2].to_vec(),
            ),
        };
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        Rc::new(table)
    };
    TABLE.with(|t| *t.borrow_mut() = Some(Rc::clone(&table)));
    table
}

fn opt_datum<T: Into<pg_sys::Datum>>(value: Option<T>) -> Option<pg_sys::Datum> {
    value.map(Into::into)
}

impl TombstoneTable {
    /// Reads a tombstone row.
    ///
    /// # Safety
    /// `tuple` is a tuple of the tombstone table described by `tupdesc`.
    unsafe fn read(&self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> Tombstone {
        // SAFETY: forwarded from the caller.
        unsafe {
            let get = |attnum: pg_sys::AttrNumber| {
                let mut isnull = false;
                let d = pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull);
                (!isnull).then_some(d)
            };
            let time = |attnum| get(attnum).map(|d| d.value() as i64);
            let node = |attnum| get(attnum).map(|d| d.value() as i16);
            Tombstone {
                version: Version {
                    criterion: time(self.att_criterion),
                    stattime: time(self.att_stattime),
                    node: node(self.att_nodeid),
                },
                stamps: RowStamps {
                    xacttime: time(self.att_xacttime),
                    stattime: time(self.att_stattime),
                    node: node(self.att_nodeid),
                    user_criterion: None,
                },
                order: VersionOrder {
                    direction: if get(self.att_order_last).is_some_and(|d| d.value() != 0) {
                        Direction::Last
                    } else {
                        Direction::First
                    },
                    winner: node(self.att_order_winner),
                    preferred: node(self.att_order_preferred),
                },
            }
        }
    }

    /// The tombstone of `key` in table `table_name`, seeing tombstones still being written.
    /// The caller holds the key lock.
    pub fn probe(&self, table_name: &str, key: &[u8]) -> Probe<Tombstone> {
        // An empty table (the common case before the first delete) needs no index scan, and a
        // statement that found it empty need not look again for its next rows.
        let statement = current_statement();
        if EMPTY_IN_STATEMENT.with(|e| e.get()) == Some(statement) {
            return Probe::Absent;
        }
        // SAFETY: the relation is opened here and kept locked until transaction end; the key
        // datums are palloc'd copies valid during the probe.
        unsafe {
            let rel = pg_sys::table_open(self.relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let empty =
                pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM) == 0;
            let tupdesc = (*rel).rd_att;
            let found = if empty {
                EMPTY_IN_STATEMENT.with(|e| e.set(Some(statement)));
                Probe::Absent
            } else {
                let values = [text_datum(table_name.as_bytes()), text_datum(key)];
                probe::probe(rel, &self.pk, &values, &|tuple| self.read(tuple, tupdesc))
            };
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            found
        }
    }

    /// Records the tombstone of a local delete (replacing an older one of the same key).
    pub fn record(&self, info: &RelInfo, key: &[u8], version: &Version, stamps: &Stamps) {
        let order = &info.order;
        let values = [
            Some(text_datum(info.table.as_bytes())),
            Some(text_datum(key)),
            opt_datum(version.criterion),
            Some(stamps.xacttime.into()),
            Some(stamps.stattime.into()),
            opt_datum(version.node),
            Some((order.direction == Direction::Last).into()),
            opt_datum(order.winner),
            opt_datum(order.preferred),
        ];
        // SAFETY: values match the statements' argument types; the caller holds the key lock.
        unsafe {
            self.remove_stored(values[0].unwrap(), values[1].unwrap());
            self.record.execute(&values, pg_sys::SPI_OK_INSERT);
        }
    }
}

impl TombstoneTable {
    /// Deletes the stored tombstone of a key, as our own write (peers skip the replicated DELETE).
    ///
    /// # Safety
    /// `table_name` is a text and `key` a bytea datum; the caller holds the key lock.
    unsafe fn remove_stored(&self, table_name: pg_sys::Datum, key: pg_sys::Datum) {
        let _own_write = OwnWrite::start();
        // SAFETY: forwarded from the caller.
        unsafe {
            self.remove
                .execute(&[Some(table_name), Some(key)], pg_sys::SPI_OK_DELETE)
        };
    }
}

/// Marks mm_conflict's own writes (a re-send's DELETE + INSERT, the removal of a replaced
/// tombstone) for the life of the guard, so that its triggers let them pass unresolved. Restores
/// the previous state on drop, also when an error unwinds.
pub struct OwnWrite;

impl OwnWrite {
    pub fn start() -> ScopedFlag {
        ScopedFlag::raise(&OWN_WRITE)
    }

    pub fn active() -> bool {
        OWN_WRITE.with(|r| r.get())
    }
}

/// (local transaction id, command id): identifies the running statement.
fn current_statement() -> (u32, u32) {
    // SAFETY: MyProc is set for every backend that runs triggers; reading the command id has no
    // side effects (used = false).
    unsafe { ((*pg_sys::MyProc).lxid, pg_sys::GetCurrentCommandId(false)) }
}

/// Text/bytea column of a tuple as bytes.
unsafe fn bytes_of(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    attnum: pg_sys::AttrNumber,
) -> Vec<u8> {
    // SAFETY: the column is a non-NULL text or bytea of a valid tuple (primary-key columns).
    unsafe {
        let mut isnull = false;
        let d = pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull);
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        let len = pgrx::varlena::varsize_any_exhdr(v);
        std::slice::from_raw_parts(pgrx::varlena::vardata_any(v).cast::<u8>(), len).to_vec()
    }
}

/// A replicated tombstone INSERT: kept if its key has none or it beats the stored one (which it
/// then replaces), else skipped.
unsafe fn resolve_replicated_tombstone(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Option<pg_sys::HeapTuple> {
    let table = table();
    // SAFETY: forwarded from the trigger.
    unsafe {
        let name = bytes_of(tuple, tupdesc, table.att_table_name);
        let key = bytes_of(tuple, tupdesc, table.att_pk);
        let incoming = table.read(tuple, tupdesc);
        let name_str = String::from_utf8_lossy(&name).into_owned();
        match probe::locked(stable_hash(&name), &key, || table.probe(&name_str, &key)) {
            // Keep the lock until our index entry exists.
            None => Some(tuple),
            Some(stored) if !incoming.order.beats(&incoming.version, &stored.version) => {
                keylock::release_previous();
                None
            }
            Some(_) => {
                // Replace it: remove the stored one, then let this INSERT go in (still under the
                // key lock, until our index entry exists).
                table.remove_stored(text_datum(&name), text_datum(&key));
                Some(tuple)
            }
        }
    }
}

/// The tombstone table's triggers, created in schema `mm_conflict`.
#[pg_schema]
pub mod mm_conflict {
    use super::*;

    /// BEFORE INSERT OR UPDATE OR DELETE on mm_conflict.tombstone: resolves replicated tombstones
    /// against the stored one; purges (deletes) stay local to the node that ran them.
    #[pg_trigger]
    fn tombstone_resolve<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        let td = trigger.trigger_data();
        let event = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        let replicated = is_replicated_session();
        // SAFETY: td is the TriggerData PostgreSQL passed to this firing; its tuples belong to the
        // tombstone table, described by its rd_att.
        let keep = unsafe {
            let tupdesc = (*td.tg_relation).rd_att;
            match event {
                pg_sys::TRIGGER_EVENT_DELETE => {
                    (!replicated || OwnWrite::active()).then_some(td.tg_trigtuple)
                }
                _ if !replicated => Some(if event == pg_sys::TRIGGER_EVENT_INSERT {
                    td.tg_trigtuple
                } else {
                    td.tg_newtuple
                }),
                pg_sys::TRIGGER_EVENT_UPDATE => {
                    let table = table();
                    let old = table.read(td.tg_trigtuple, tupdesc);
                    let new = table.read(td.tg_newtuple, tupdesc);
                    new.order
                        .beats(&new.version, &old.version)
                        .then_some(td.tg_newtuple)
                }
                _ => resolve_replicated_tombstone(td.tg_trigtuple, tupdesc),
            }
        };
        Ok(keep.map(|tuple| {
            // SAFETY: the tuple is one of the trigger's own, described by the relation's rd_att.
            unsafe {
                PgHeapTuple::from_heap_tuple(
                    PgTupleDesc::from_pg_unchecked((*td.tg_relation).rd_att),
                    tuple,
                )
            }
        }))
    }

    /// AFTER INSERT OR UPDATE on mm_conflict.tombstone: a tombstone that is new on this node (it got
    /// past `tombstone_resolve`) settles this node's row of the key, in replicated sessions.
    #[pg_trigger]
    fn tombstone_settle<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        let td = trigger.trigger_data();
        if is_replicated_session() {
            let tuple =
                if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_UPDATE {
                    td.tg_newtuple
                } else {
                    td.tg_trigtuple
                };
            // SAFETY: td is the TriggerData of this firing; the tuple belongs to the tombstone table.
            unsafe { settle(tuple, (*td.tg_relation).rd_att) }.or_raise();
        }
        Ok(None)
    }
}

unsafe fn settle(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Result<(), crate::error::MmError> {
    let table = table();
    // SAFETY: forwarded from the trigger; the target relation is opened here and kept locked
    // until transaction end.
    unsafe {
        let name = bytes_of(tuple, tupdesc, table.att_table_name);
        let key = bytes_of(tuple, tupdesc, table.att_pk);
        let tombstone = table.read(tuple, tupdesc);
        let Ok(name_c) = std::ffi::CString::new(name.clone()) else {
            return Ok(());
        };
        let range =
            pg_sys::makeRangeVarFromNameList(pg_sys::stringToQualifiedNameList(name_c.as_ptr()));
        let relid = pg_sys::RangeVarGetRelidExtended(
            range,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        );
        if relid == pg_sys::InvalidOid {
            return Ok(()); // the table does not exist here: nothing to settle
        }
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let result = settle_row(rel, &key, &tombstone);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

unsafe fn settle_row(
    rel: pg_sys::Relation,
    key: &[u8],
    tombstone: &Tombstone,
) -> Result<(), crate::error::MmError> {
    // SAFETY: rel is open and locked by the caller.
    unsafe {
        let Some(info) = relinfo::lookup_for_relation(rel)? else {
            return Ok(());
        };
        let Some(pk) = info.primary_key.as_ref() else {
            return Ok(());
        };
        let Some(values) = pk.decode(key) else {
            pgrx::warning!(
                "mm_conflict: tombstone key for {} does not match its primary key; ignored",
                info.table
            );
            return Ok(());
        };
        let tupdesc = (*rel).rd_att;
        let found = probe::locked(info.table_hash, key, || {
            probe::probe(rel, pk, &values, &|row| pg_sys::heap_copytuple(row))
        });
        keylock::release_previous();
        let Some(row) = found else { return Ok(()) };
        // Delete the row as it is now (PostgreSQL locks it and re-checks the key, so a concurrent
        // update is not overwritten), then keep it if it beats the tombstone: re-inserted as it
        // was, the DELETE + INSERT are its re-send to the nodes that applied the delete. The row's
        // own BEFORE DELETE lets this delete pass.
        let _own_write = OwnWrite::start();
        let key_params = info.parameters(row, tupdesc);
        let Some(deleted) = info
            .resend_delete
            .execute_returning(&key_params, pg_sys::SPI_OK_DELETE_RETURNING)
        else {
            return Ok(()); // gone meanwhile
        };
        let stored = info.policy.version(&info.stamps_from_parameters(&deleted));
        let action = decide::new_tombstone(&info.order, &stored, &tombstone.version);
        if action == DeleteAction::KeepAndResend {
            info.resend_insert.execute(&deleted, pg_sys::SPI_OK_INSERT);
        }
        conflicts::report(
            &info,
            tupdesc,
            &Resolution {
                decision: if action == DeleteAction::Delete {
                    Decision::DeleteApplied
                } else {
                    Decision::DeleteSkipped
                },
                stored: Some(stored),
                stored_row: Some(Row::Values(&deleted)),
                incoming: tombstone.version,
                incoming_row: None,
            },
        );
        Ok(())
    }
}
