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
//! index entry exists by the time the trigger fires for the next row, and by the end of the
//! statement, so the lock is released there: at the next key-locked write of this backend, at the
//! end of the statement that took it (see `statement`; COPY and apply run none), or at the end of
//! the transaction, whichever comes first (a rolled-back subtransaction releases the lock it
//! took). A lock kept after its statement would make a later wait of the same transaction a
//! deadlock with a DELETE of that key (which holds its row while its trigger waits for the lock),
//! where PostgreSQL alone would have none. It is a
//! session-level lock managed here, not one owned by a (sub)transaction's resource owner: so it can
//! be released whatever subtransaction took it, and a backend holds at most one at a time however
//! many rows it inserts, in one statement or in a million subtransactions (a PL/pgSQL loop with an
//! EXCEPTION block).
//!
//! Secondary unique keys: a row's values of unique keys besides the primary key are locked with
//! its key ([`add_value_locks`]) by INSERTs, by local UPDATEs that set a new such value, and by a
//! replicated row before it probes those indexes; so a replicated row and a local write of another
//! key that would take the same value serialise like two writers of one key.
//!
//! Lock order: the key's lock first, then the values' in a fixed order. Other UPDATEs never take
//! these locks, and the trigger never waits for another transaction while holding it: when a probe
//! finds a row (to overwrite or keep) or a transaction in progress, the lock is released first
//! (the engine unlocks, then `wait`s). A DELETE takes the lock while holding its row's lock, so
//! nobody may wait for a row while holding the lock: a local `INSERT ... ON CONFLICT DO UPDATE`,
//! which PostgreSQL makes wait for the conflicting row after the trigger, finds that row in its
//! trigger, releases the lock and locks the row itself (`engine::local_insert`). Two waits under
//! the lock remain, both after the trigger, in PostgreSQL's own checks: a plain INSERT waits in the
//! unique check for a running transaction that inserted or deleted the same key (its tombstone
//! lookup, when not skipped, waits without the lock instead), and deadlocks if that transaction
//! then writes the key again (deleting what it inserted, or inserting what it deleted); an UPDATE
//! that sets a new value of another unique key takes the value's lock while holding its row. The
//! deadlock detector aborts one of the two; apply workers retry their transaction.
//!
//! The lock shows in `pg_locks` as an advisory lock with `objsubid = 19789` (0x4D4D, "MM"), which
//! user calls of `pg_advisory_*` (objsubid 1 or 2) can never take; `classid` and `objid` are the
//! hashes of the table name and the key.

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;

use super::names::stable_hash;

const KEY_LOCK_FIELD4: u16 = 0x4D4D;

/// The key lock held (with the locks of the row's unique values, see [`add_value_locks`]), the
/// subtransaction that took it, and the statement it was taken in (if any).
struct Held {
    tags: Vec<pg_sys::LOCKTAG>,
    subxact: pg_sys::SubTransactionId,
    statement: Option<u64>,
}

thread_local! {
    static HELD: RefCell<Held> = const {
        RefCell::new(Held { tags: Vec::new(), subxact: 0, statement: None })
    };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
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

const MODE: pg_sys::LOCKMODE = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;

/// Releases the key lock held, if any (a no-op when something else, such as
/// `pg_advisory_unlock_all()`, released it already).
pub fn release_previous() {
    let tags = HELD.with(|h| std::mem::take(&mut h.borrow_mut().tags));
    for tag in tags {
        // SAFETY: plain lock-manager calls on a tag we built; LockHeldByMe guards against a lock
        // released behind our back.
        unsafe {
            if super::compat::lock_held_by_me(&tag, MODE) {
                pg_sys::LockRelease(&tag, MODE, true);
            }
        }
    }
}

fn holds_any() -> bool {
    HELD.with(|h| !h.borrow().tags.is_empty())
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if super::backend::transaction_ends(event) {
        release_previous();
    }
}

/// A rolled-back subtransaction releases the key lock taken in it (or in one inside it, which has
/// a higher id): the row it protected is gone.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB
        && holds_any()
        && HELD.with(|h| h.borrow().subxact) >= subxact
    {
        release_previous();
    }
}

/// Takes the key lock of `key`, a primary key in binary form (after releasing the previous lock).
/// The lock is named by two hashes, stable across nodes and sessions: `table_hash`, of the table's
/// stable name, and one of `key`, so that row writes and tombstone writes of one key take the
/// same lock.
pub fn lock_key(table_hash: u32, key: &[u8]) {
    release_previous();
    if !CALLBACKS_REGISTERED.with(|c| c.replace(true)) {
        super::backend::on_transaction_end(Some(at_transaction_end));
        super::backend::on_subtransaction_end(Some(at_subtransaction_end));
        super::statement::at_statement_end(at_statement_end);
    }
    let tag = tag(table_hash, stable_hash(key));
    // SAFETY: a session-level lock (released above, at the next call, or by the callbacks at
    // transaction end and subtransaction abort); the lock manager releases it at backend exit.
    unsafe {
        pg_sys::LockAcquire(&tag, MODE, true, false);
    }
    let subxact = super::backend::subtransaction_id();
    let statement = super::statement::current();
    HELD.with(|h| {
        *h.borrow_mut() = Held {
            tags: vec![tag],
            subxact,
            statement,
        }
    });
}

/// The statement numbered `ended` has ended (and every statement inside it): a lock taken in one
/// of them covered rows whose index entries exist now.
fn at_statement_end(ended: u64) {
    if HELD.with(|h| h.borrow().statement.is_some_and(|s| s >= ended)) {
        release_previous();
    }
}

/// Adds to the key lock of `key` (taken here if this backend does not hold it) the locks of
/// `values`: the row's values of its unique keys besides the primary key, each in binary form
/// prefixed by its index's place, so that two rows of different keys that would hold the same
/// unique value serialise like two rows of one key. Always the key's lock first, then the values'
/// in a fixed order: two backends never take them in opposite orders. Released with the key lock.
pub fn add_value_locks(table_hash: u32, key: &[u8], values: &[Vec<u8>]) {
    let key_tag = tag(table_hash, stable_hash(key));
    let holds_key = HELD.with(|h| {
        let held = h.borrow();
        held.tags.first().is_some_and(|t| same(t, &key_tag))
    });
    if !holds_key {
        lock_key(table_hash, key);
    }
    let mut tags: Vec<pg_sys::LOCKTAG> = values
        .iter()
        .map(|v| tag(table_hash, stable_hash(v)))
        .collect();
    tags.sort_by_key(|t| t.locktag_field3);
    tags.dedup_by(|a, b| same(a, b));
    // Values held for an earlier write of this key (whose index entries exist by now) go first,
    // unless they are exactly these: the values are always taken in one order, after the key.
    let held_values: Vec<pg_sys::LOCKTAG> = HELD.with(|h| {
        h.borrow()
            .tags
            .get(1..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    });
    if held_values.len() == tags.len() && held_values.iter().zip(&tags).all(|(a, b)| same(a, b)) {
        return;
    }
    for t in &held_values {
        // SAFETY: as in release_previous: a tag we built, checked to be held.
        unsafe {
            if super::compat::lock_held_by_me(t, MODE) {
                pg_sys::LockRelease(t, MODE, true);
            }
        }
    }
    HELD.with(|h| h.borrow_mut().tags.truncate(1));
    for t in tags {
        // SAFETY: a session-level lock like the key's, released with it.
        unsafe {
            pg_sys::LockAcquire(&t, MODE, true, false);
        }
        HELD.with(|h| h.borrow_mut().tags.push(t));
    }
}

fn same(a: &pg_sys::LOCKTAG, b: &pg_sys::LOCKTAG) -> bool {
    (
        a.locktag_field1,
        a.locktag_field2,
        a.locktag_field3,
        a.locktag_field4,
    ) == (
        b.locktag_field1,
        b.locktag_field2,
        b.locktag_field3,
        b.locktag_field4,
    )
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
