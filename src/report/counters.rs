//! Conflict counters: every replicated change the trigger resolves is counted per table, in a
//! backend-local tally that is added to shared memory once per committed transaction (an aborted
//! apply transaction is applied again, so counting at commit counts each change once). The shared
//! table needs `shared_preload_libraries`; without it the counters are "not available".

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

use mm_conflict_core::Decision;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use crate::error::MmError;
use crate::pg::{backend, relation};

/// One counter per decision, then the conflicts among them.
pub const COUNTERS: usize = Decision::ALL.len() + 1;
const CONFLICTS: usize = Decision::ALL.len();
/// Tables counted per cluster (all databases); 1024 × 72 bytes of shared memory.
const SLOTS: usize = 1024;
/// The layout of [`SharedCounters`]; part of the shared memory segment's name, so that a library
/// with another layout never reads this one (shared memory is made anew at every server start).
const LAYOUT_VERSION: u32 = 2;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    database: u32,
    /// 0: free.
    relid: u32,
    /// When counting began for this table (creation or reset), PostgreSQL microseconds.
    since: i64,
    counts: [u64; COUNTERS],
}

const FREE: Slot = Slot {
    database: 0,
    relid: 0,
    since: 0,
    counts: [0; COUNTERS],
};

#[derive(Clone, Copy)]
#[repr(C)]
struct SharedCounters {
    layout_version: u32,
    slots: [Slot; SLOTS],
}

// SAFETY: plain old data (integers only), no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for SharedCounters {}

// SAFETY: the name is unique to this extension (and carries LAYOUT_VERSION). It stays here, outside
// src/pg: a static is declared with its type, and pgrx's constructor is `unsafe` only for that.
static SHARED: PgLwLock<SharedCounters> = unsafe { PgLwLock::new(c"mm_conflict_counters_v2") };
/// Set in the postmaster when loaded by `shared_preload_libraries`; inherited by every backend.
static SHARED_READY: AtomicBool = AtomicBool::new(false);

/// Changes counted in one table by one subtransaction, not yet committed.
struct Pending {
    relid: pg_sys::Oid,
    subxact: pg_sys::SubTransactionId,
    counts: [u64; COUNTERS],
}

thread_local! {
    /// This transaction's tallies, per table and subtransaction (rarely more than one entry).
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// When this backend last looked for slots of dropped tables (PostgreSQL microseconds).
    static LAST_RECLAIM: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Requests the shared counters; only has an effect while `shared_preload_libraries` are loaded.
pub fn init() {
    if backend::preloading() {
        pg_shmem_init!(
            SHARED = SharedCounters {
                layout_version: LAYOUT_VERSION,
                slots: [FREE; SLOTS]
            }
        );
        SHARED_READY.store(true, Ordering::Relaxed);
    }
}

fn shared_ready() -> bool {
    SHARED_READY.load(Ordering::Relaxed)
}

/// Adds one change of table `relid` to this transaction's tally.
pub fn count(relid: pg_sys::Oid, decision: Decision, conflict: bool) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        backend::on_transaction_end(Some(at_transaction_end));
        backend::on_subtransaction_end(Some(at_subtransaction_end));
    }
    let subxact = backend::subtransaction_id();
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let i = match pending
            .iter()
            .position(|e| e.relid == relid && e.subxact == subxact)
        {
            Some(i) => i,
            None => {
                // The table's first change in this transaction: while the transaction can still
                // read the catalog, make room if the counters are full of tables and databases
                // that were dropped since.
                if shared_ready() && !has_room(relid) {
                    reclaim_dropped();
                }
                pending.push(Pending {
                    relid,
                    subxact,
                    counts: [0; COUNTERS],
                });
                pending.len() - 1
            }
        };
        let entry = &mut pending[i];
        entry.counts[decision.index()] += 1;
        if conflict {
            entry.counts[CONFLICTS] += 1;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            // Cleared in place: the vector keeps its capacity for the next transaction.
            PENDING.with(|p| {
                let mut pending = p.borrow_mut();
                if !pending.is_empty() && shared_ready() {
                    add_to_shared(&pending);
                }
                pending.clear();
            });
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => PENDING.with(|p| p.borrow_mut().clear()),
        _ => {}
    }
}

/// A rolled-back subtransaction (a savepoint, or a streamed subtransaction an apply worker aborts)
/// takes its counts with it, and those of the subtransactions inside it, which have higher ids.
#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        PENDING.with(|p| p.borrow_mut().retain(|e| e.subxact < subxact));
    }
}

fn slot_index(database: u32, relid: u32) -> usize {
    let h = (u64::from(database) << 32 | u64::from(relid)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize % SLOTS
}

/// The slot of (database, relid), claiming a free one if needed; `None` when the table is full.
fn find_slot(shared: &mut SharedCounters, database: u32, relid: u32, now: i64) -> Option<usize> {
    let start = slot_index(database, relid);
    for step in 0..SLOTS {
        let i = (start + step) % SLOTS;
        let slot = &mut shared.slots[i];
        if slot.relid == 0 {
            *slot = Slot {
                database,
                relid,
                since: now,
                counts: [0; COUNTERS],
            };
            return Some(i);
        }
        if slot.database == database && slot.relid == relid {
            return Some(i);
        }
    }
    None
}

/// Whether (this database, `relid`) has a slot, or a free one can be claimed for it.
fn has_room(relid: pg_sys::Oid) -> bool {
    let database = backend::database_oid();
    let shared = SHARED.share();
    let start = slot_index(database, relid.to_u32());
    (0..SLOTS).any(|step| {
        let slot = &shared.slots[(start + step) % SLOTS];
        slot.relid == 0 || (slot.database == database && slot.relid == relid.to_u32())
    })
}

/// Frees the slots of databases that no longer exist, and of this database's dropped tables.
/// A server whose 1024 slots all hold live tables would look for dropped ones in every
/// transaction: a backend looks at most once every 10 seconds.
fn reclaim_dropped() {
    let (database, now) = (backend::database_oid(), backend::now());
    if LAST_RECLAIM.with(|last| {
        let recent = last.get().is_some_and(|t| now - t < 10_000_000);
        if !recent {
            last.set(Some(now));
        }
        recent
    }) {
        return;
    }
    reclaim_dropped_now(database);
}

/// [`reclaim_dropped`], now.
fn reclaim_dropped_now(database: u32) {
    let used: Vec<(u32, u32)> = SHARED
        .share()
        .slots
        .iter()
        .filter(|s| s.relid != 0)
        .map(|s| (s.database, s.relid))
        .collect();
    // Catalog lookups outside the lock.
    let mut databases: Vec<u32> = used.iter().map(|&(d, _)| d).collect();
    databases.sort_unstable();
    databases.dedup();
    let dead_databases: Vec<u32> = databases
        .into_iter()
        .filter(|&d| !backend::database_exists(d.into()))
        .collect();
    let dead_tables: Vec<u32> = used
        .iter()
        .filter(|&&(d, r)| d == database && relation::relkind_of(r.into()).is_none())
        .map(|&(_, r)| r)
        .collect();
    if dead_databases.is_empty() && dead_tables.is_empty() {
        return;
    }
    let mut shared = SHARED.exclusive();
    rebuild(&mut shared, |s| {
        !dead_databases.contains(&s.database)
            && !(s.database == database && dead_tables.contains(&s.relid))
    });
}

/// Keeps only the slots `keep` accepts, re-inserted (open addressing needs unbroken probe chains).
fn rebuild(shared: &mut SharedCounters, keep: impl Fn(&Slot) -> bool) {
    let kept: Vec<Slot> = shared
        .slots
        .iter()
        .filter(|s| s.relid != 0 && keep(s))
        .copied()
        .collect();
    shared.slots = [FREE; SLOTS];
    for slot in kept {
        if let Some(i) = find_slot(shared, slot.database, slot.relid, slot.since) {
            shared.slots[i] = slot;
        }
    }
}

fn add_to_shared(pending: &[Pending]) {
    let (database, now) = (backend::database_oid(), backend::now());
    let mut shared = SHARED.exclusive();
    for entry in pending {
        // A full table drops the counts of tables it has no slot for; conflict_stats says so.
        if let Some(i) = find_slot(&mut shared, database, entry.relid.to_u32(), now) {
            for (total, add) in shared.slots[i].counts.iter_mut().zip(&entry.counts) {
                *total += add;
            }
        }
    }
}

/// Whether the counters can be read: `ok`, `not_loaded` (no `shared_preload_libraries`) or
/// `full` (no free slot).
pub fn state() -> &'static str {
    if !shared_ready() {
        return "not_loaded";
    }
    let shared = SHARED.share();
    if shared.slots.iter().all(|s| s.relid != 0) {
        "full"
    } else {
        "ok"
    }
}

/// One table's counters in this database.
pub struct TableCounts {
    pub relid: pg_sys::Oid,
    pub counts: [u64; COUNTERS],
    /// PostgreSQL microseconds.
    pub since: i64,
}

/// This database's counters, one entry per table counted since the last reset.
pub fn this_database() -> Vec<TableCounts> {
    if !shared_ready() {
        return Vec::new();
    }
    let database = backend::database_oid();
    let shared = SHARED.share();
    shared
        .slots
        .iter()
        .filter(|s| s.relid != 0 && s.database == database)
        .map(|s| TableCounts {
            relid: pg_sys::Oid::from(s.relid),
            counts: s.counts,
            since: s.since,
        })
        .collect()
}

/// Zeroes this database's counters: of one table, or (`None`) of all its tables.
pub fn reset(relid: Option<pg_sys::Oid>) -> Result<(), MmError> {
    if !shared_ready() {
        return Err(MmError::CountersNotLoaded);
    }
    let (database, now) = (backend::database_oid(), backend::now());
    let mut shared = SHARED.exclusive();
    match relid {
        Some(relid) => {
            if let Some(slot) = shared
                .slots
                .iter_mut()
                .find(|s| s.database == database && s.relid == relid.to_u32())
            {
                slot.counts = [0; COUNTERS];
                slot.since = now;
            }
        }
        None => rebuild(&mut shared, |s| s.database != database),
    }
    drop(shared);
    // Databases dropped since counting began free their slots here too.
    reclaim_dropped_now(database);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_found_again_and_fill_up() {
        let mut shared = Box::new(SharedCounters {
            layout_version: LAYOUT_VERSION,
            slots: [FREE; SLOTS],
        });
        let first = find_slot(&mut shared, 5, 100, 1).unwrap();
        assert_eq!(find_slot(&mut shared, 5, 100, 2), Some(first));
        assert_eq!(shared.slots[first].since, 1);
        for relid in 1..SLOTS as u32 {
            assert!(find_slot(&mut shared, 6, relid, 1).is_some());
        }
        assert_eq!(find_slot(&mut shared, 7, 1, 1), None);
        assert!(find_slot(&mut shared, 6, 1, 1).is_some());
    }
}
