//! Primary-key probe for replicated INSERTs (and local upserts, which then lock the row it found,
//! [`lock_row`]): does a row with this key exist, and which version?
//!
//! PostgreSQL's own apply-side lookup (`RelationFindReplTupleByIndex`) scans the index with a dirty
//! snapshot. It can miss a row that a concurrent non-HOT UPDATE commits while the scan runs: the
//! scan read the index page before the new version's entry existed, and by the time it fetches the
//! old version that one is dead. For an INSERT that miss ends in a duplicate-key error. It also
//! waits on row locks, which we must not do while holding the key lock (see `keylock`).
//!
//! So this probe scans the index with `SnapshotAny` and follows each version's update chain
//! (`t_ctid`) to the newest version visible to a dirty snapshot: an update committing meanwhile can
//! only move the row further along a chain we follow. It never waits; it reports a transaction
//! still in progress instead, and the caller waits after releasing the key lock.

use mm_conflict_core::Lookup;
use pgrx::pg_sys;

use super::compat;
use super::datum::Typed;
use super::key::IndexKey;
use super::relation::{self, Borrowed, Open};
use super::tuple::TupleRef;

/// What the probe found for a key: absent, a version whose inserting or updating/deleting
/// transaction is still running (its id), or a committed row (or one of this transaction), as read
/// by the caller's reader.
pub type Probe<T> = Lookup<T, pg_sys::TransactionId>;

/// An update chain longer than this is not followed further (a guard, not a real limit:
/// chains are pruned by every page access).
const MAX_CHAIN: usize = 10_000;

const fn xmax_is_locked_only(infomask: u32) -> bool {
    infomask & pg_sys::HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (pg_sys::HEAP_XMAX_IS_MULTI | pg_sys::HEAP_LOCK_MASK)
            == pg_sys::HEAP_XMAX_EXCL_LOCK
}

/// Probes `rel` for a row whose key `pk` (one of `rel`'s indexes) has the values `key`; `read`
/// turns the row found into what the caller needs (the tuple is pinned only while `read` runs: it
/// copies what it keeps). An index of another relation, or values that are not the key's, are
/// a bug of the caller, raised as an internal error.
pub fn probe<T>(
    rel: &impl Open,
    pk: &IndexKey,
    key: &[Typed],
    read: &dyn Fn(TupleRef<'_>) -> T,
) -> Probe<T> {
    pk.check_probe(relation::oid(rel), key);
    let rel = rel.raw();
    // SAFETY: `rel` is open and locked (`Open`) and `pk` one of its indexes, `key` its values
    // (both checked above); index, scan and slot are opened and closed here; scan keys point to
    // `key`'s values, which outlive the scan.
    unsafe {
        let index = pg_sys::index_open(pk.index_oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let nkeys = pk.columns.len();
        let mut keys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); nkeys];
        for (i, col) in pk.columns.iter().enumerate() {
            pg_sys::ScanKeyInit(
                &mut keys[i],
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                col.eq_proc,
                key[i].datum(),
            );
            keys[i].sk_collation = col.collation;
        }
        let scan =
            compat::index_beginscan(rel, index, &raw mut pg_sys::SnapshotAnyData, nkeys as i32);
        pg_sys::index_rescan(
            scan,
            keys.as_mut_ptr(),
            nkeys as i32,
            std::ptr::null_mut(),
            0,
        );
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let mut result = Lookup::Absent;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            if let Some(found) = newest_version(rel, pk, (*slot).tts_tid, key, read) {
                result = found;
                break;
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        // The lock is kept to the end of the transaction, as the executor keeps the locks of the
        // indexes it scans: the next row's probe then finds it held (no lock-table round trip,
        // no invalidation messages to read), and nothing can drop the index meanwhile.
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// Follows the update chain from `tid` to the version a dirty snapshot sees, if any.
///
/// # Safety
/// `rel` is open and locked, `pk` one of its indexes and `key` its values; `tid` came from `pk`.
unsafe fn newest_version<T>(
    rel: pg_sys::Relation,
    pk: &IndexKey,
    mut tid: pg_sys::ItemPointerData,
    key: &[Typed],
    read: &dyn Fn(TupleRef<'_>) -> T,
) -> Option<Probe<T>> {
    // SAFETY: rel is open (caller's contract).
    let tupdesc = unsafe { (*rel).rd_att };
    for _ in 0..MAX_CHAIN {
        // SAFETY: heap_fetch pins the buffer (keep_buf) and fills `tuple`; the pin is released on
        // every path below. Header fields are read under a share lock on the buffer.
        unsafe {
            let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
            dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_self = tid;
            let mut buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
            let visible = pg_sys::heap_fetch(rel, &mut dirty, &mut tuple, &mut buffer, true);
            if tuple.t_data.is_null() {
                if buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
                    pg_sys::ReleaseBuffer(buffer);
                }
                return None;
            }
            if visible {
                // A recycled line pointer could hold an unrelated row: check the key.
                let same_key = pk.matches(TupleRef::new(&mut tuple, tupdesc), key);
                let found = if !same_key {
                    None
                } else if dirty.xmin != pg_sys::InvalidTransactionId {
                    Some(Lookup::InProgress(dirty.xmin))
                } else if dirty.xmax != pg_sys::InvalidTransactionId {
                    Some(Lookup::InProgress(dirty.xmax))
                } else {
                    Some(Lookup::Found(read(TupleRef::new(&mut tuple, tupdesc))))
                };
                pg_sys::ReleaseBuffer(buffer);
                return found;
            }
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let header = &*tuple.t_data;
            let infomask = header.t_infomask as u32;
            let mut next = header.t_ctid;
            let updated = infomask & pg_sys::HEAP_XMAX_INVALID == 0
                && !xmax_is_locked_only(infomask)
                && !pg_sys::ItemPointerEquals(&mut next, &mut tid);
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            pg_sys::ReleaseBuffer(buffer);
            if !updated {
                return None;
            }
            tid = next;
        }
    }
    None
}

/// How [`lock_row`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// The row is locked by this transaction (or was written by this very command, which
    /// PostgreSQL refuses itself on its way to update it).
    Held,
    /// The row was updated or deleted meanwhile: look it up again.
    Gone,
}

/// Where [`probe_place`] found a row of a relation borrowed for `'a` (a trigger's, while it
/// fires): valid for [`lock_row`] while that lasts.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    relid: pg_sys::Oid,
    tid: pg_sys::ItemPointerData,
    _borrow: std::marker::PhantomData<&'a pg_sys::RelationData>,
}

/// [`probe`], keeping only where the row is (for [`lock_row`]).
pub fn probe_place<'a>(rel: &Borrowed<'a>, pk: &IndexKey, key: &[Typed]) -> Probe<Place<'a>> {
    let relid = relation::oid(rel);
    probe(rel, pk, key, &|tuple| Place {
        relid,
        tid: tuple.tid(),
        _borrow: std::marker::PhantomData,
    })
}

/// Locks the row at `place` in `rel` (where a probe of it found the row) for an update that leaves
/// its key alone, as `INSERT ... ON CONFLICT DO UPDATE` does, waiting for the transactions that
/// hold it.
pub fn lock_row<'a>(rel: &Borrowed<'a>, place: Place<'a>) -> RowLock {
    if place.relid != relation::oid(rel) {
        panic!("a row lock in another relation than the one probed");
    }
    let rel = rel.raw();
    // SAFETY: `rel` is a table, open and locked (`Borrowed`: the one the probe read, checked
    // above), and `place` a row version a dirty snapshot saw in it during 'a, which lies within
    // this transaction: while the transaction runs, no version it could see is pruned (its own
    // xmin holds them), so the line pointer still holds a tuple. heap_lock_tuple reads it
    // (pinning its buffer into `buffer`, released here) and waits as the executor's own row locks
    // do; `tmfd` is only written.
    unsafe {
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_self = place.tid;
        let mut buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let mut failure: pg_sys::TM_FailureData = std::mem::zeroed();
        let result = pg_sys::heap_lock_tuple(
            rel,
            &mut tuple,
            pg_sys::GetCurrentCommandId(false),
            pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
            pg_sys::LockWaitPolicy::LockWaitBlock,
            false,
            &mut buffer,
            &mut failure,
        );
        if buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
            pg_sys::ReleaseBuffer(buffer);
        }
        match result {
            pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => RowLock::Gone,
            _ => RowLock::Held,
        }
    }
}
