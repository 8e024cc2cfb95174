//! Serialising inserts of the same primary key across local sessions and apply workers.
//!
//! A replicated INSERT probes the primary key and then inserts. Without more, another writer could
//! insert the same key between that probe and the index insertion, and the apply worker would die
//! on a duplicate key. So every INSERT through `mm_resolve` first takes a transaction-level lock on
//! (database, table, hash of the key), and a replicated INSERT probes only once it holds it. Writes
//! and reads of the key's tombstone (local deletes, replicated tombstones, the tombstone checks of
//! inserts and deletes) take the same lock.
//!
//! The lock only has to cover the window until the row's index entry exists: from then on the
//! probe of a concurrent writer sees the in-progress row and waits for its transaction. A row's
//! index entry exists by the time the trigger fires for the next row, so the lock is released
//! there, at the start of the next INSERT through `mm_resolve` in this backend (in the same
//! subtransaction), or at the end of the (sub)transaction that took it, whichever comes first.
//! Within one subtransaction a backend thus holds at most one such lock at a time, however many
//! rows a statement inserts (one taken in a subtransaction that committed stays until the end of
//! the enclosing transaction).
//!
//! Lock order: UPDATEs never take this lock, and the trigger never waits for another transaction
//! while holding it: when a probe finds a row (to overwrite or keep) or a transaction in progress,
//! the lock is released first (the engine unlocks, then `wait`s). What remains: a DELETE takes the lock while
//! holding its row's lock, and a local `INSERT ... ON CONFLICT DO UPDATE` holds it while waiting
//! for the conflicting row's lock; two such sessions on the same key (local, or local and an apply
//! worker) can deadlock. The deadlock detector aborts one; apply workers retry their transaction.
//! The multi-node delete storms count these (a few per run); other workloads show none.
//!
//! The lock shows in `pg_locks` as an advisory lock with `objsubid = 19789` (0x4D4D, "MM"), which
//! user calls of `pg_advisory_*` (objsubid 1 or 2) can never take; `classid` and `objid` are the
//! hashes of the table name and the key.

use std::cell::Cell;

use pgrx::pg_sys;

use super::names::stable_hash;

const KEY_LOCK_FIELD4: u16 = 0x4D4D;

thread_local! {
    /// The key lock taken last, and the subtransaction that took it.
    static HELD: Cell<Option<(pg_sys::LOCKTAG, pg_sys::SubTransactionId)>> = const { Cell::new(None) };
}

fn tag(table_hash: u32, key_hash: u32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the whole life of a backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: table_hash,
        locktag_field3: key_hash,
        locktag_field4: KEY_LOCK_FIELD4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Runs `f` with the current (sub)transaction's resource owner current. The key lock belongs to
/// the (sub)transaction, not to the statement: taken under a statement's (portal's) owner, a later
/// statement of the same transaction could not release it ("you don't own a lock"); and a
/// subtransaction that aborts releases it.
fn as_transaction_owner<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::ResourceOwner);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the owner that was current on entry, also when unwinding.
            unsafe { pg_sys::CurrentResourceOwner = self.0 }
        }
    }
    // SAFETY: inside a transaction (the trigger runs in one), CurTransactionResourceOwner is
    // valid until the end of the current (sub)transaction.
    let _restore = unsafe {
        let saved = Restore(pg_sys::CurrentResourceOwner);
        pg_sys::CurrentResourceOwner = pg_sys::CurTransactionResourceOwner;
        saved
    };
    f()
}

/// Releases the key lock taken last, if this transaction still holds it. A lock taken in another
/// subtransaction than the current one is left to the end of that one's owner (releasing it from
/// here is not possible).
pub fn release_previous() {
    if let Some((tag, taken_in)) = HELD.take() {
        let mode = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
        // SAFETY: plain lock-manager calls on a tag we built; LockHeldByMe guards against a lock
        // already released by the end of its (sub)transaction.
        as_transaction_owner(|| unsafe {
            if pg_sys::GetCurrentSubTransactionId() == taken_in
                && super::compat::lock_held_by_me(&tag, mode)
            {
                pg_sys::LockRelease(&tag, mode, false);
            }
        });
    }
}

/// Takes the key lock of `key`, a primary key in binary form (after releasing the previous lock).
/// The lock is named by two hashes, stable across nodes and sessions: `table_hash`, of the table's
/// qualified name, and one of `key`, so that row writes and tombstone writes of one key take the
/// same lock.
pub fn lock_key(table_hash: u32, key: &[u8]) {
    release_previous();
    let tag = tag(table_hash, stable_hash(key));
    // SAFETY: a transaction-level lock (sessionLock = false) is released by the lock manager at
    // (sub)transaction end even if we never get to release it ourselves.
    as_transaction_owner(|| unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        );
    });
    // SAFETY: reads the current subtransaction's id; no side effects.
    HELD.set(Some((tag, unsafe { pg_sys::GetCurrentSubTransactionId() })));
}

/// Waits for transaction `xid` to end. Callers release the key lock first: the wait for another
/// transaction never happens while holding it (see "Lock order" above).
pub fn wait(xid: pg_sys::TransactionId) {
    // SAFETY: waits on a transaction id read from a tuple.
    unsafe {
        pg_sys::XactLockTableWait(
            xid,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            pg_sys::XLTW_Oper::XLTW_None,
        )
    }
}
