//! How far each subscription has applied its peer's changes: the commit time, on the peer, of the
//! last transaction an apply worker committed here, per replication origin. `purge_tombstones`
//! keeps every tombstone that a change still on its way could need: one younger than the oldest
//! of these times.
//!
//! An apply worker commits each remote transaction with `replorigin_session_origin_timestamp` set
//! to the peer's commit time (PostgreSQL records it as the local commit timestamp too); a
//! transaction callback takes it at commit, in every apply worker that has fired one of
//! mm_conflict's triggers. Unlike `pg_stat_subscription.last_msg_send_time`, which keepalives
//! move while the peer's walsender is still far behind (decoding a large transaction, or catching
//! up), it only moves when a transaction of the peer's was applied here, and peers send their
//! transactions in commit order. Shared memory, so it needs `shared_preload_libraries`, and it
//! starts empty at every server start (nothing is purged until each subscription has applied a
//! transaction again).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Replication origins tracked per cluster (all databases); 256 × 16 bytes.
const SLOTS: usize = 256;
const LAYOUT_VERSION: u32 = 1;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    database: u32,
    /// 0: free.
    origin: u16,
    /// The peer's commit time of the last transaction applied, PostgreSQL microseconds.
    applied_until: i64,
}

const FREE: Slot = Slot {
    database: 0,
    origin: 0,
    applied_until: 0,
};

#[derive(Clone, Copy)]
#[repr(C)]
struct SharedProgress {
    layout_version: u32,
    slots: [Slot; SLOTS],
}

// SAFETY: plain old data (integers only), no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for SharedProgress {}

// SAFETY: the name is unique to this extension (and carries LAYOUT_VERSION). It stays here, outside
// src/pg: a static is declared with its type, and pgrx's constructor is `unsafe` only for that.
static SHARED: PgLwLock<SharedProgress> = unsafe { PgLwLock::new(c"mm_conflict_progress_v1") };
static SHARED_READY: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Requests the shared memory; only has an effect while `shared_preload_libraries` are loaded.
pub fn init() {
    if crate::pg::backend::preloading() {
        pg_shmem_init!(
            SHARED = SharedProgress {
                layout_version: LAYOUT_VERSION,
                slots: [FREE; SLOTS]
            }
        );
        SHARED_READY.store(true, Ordering::Relaxed);
    }
}

/// Whether the progress is tracked (`shared_preload_libraries`).
pub fn available() -> bool {
    SHARED_READY.load(Ordering::Relaxed)
}

/// Called by the triggers in replicated sessions: from now on, this backend's commits of remote
/// transactions are recorded.
pub fn watch() {
    if !available() || CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        return;
    }
    crate::pg::backend::on_transaction_end(Some(at_commit));
}

#[pg_guard]
unsafe extern "C-unwind" fn at_commit(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event != pg_sys::XactEvent::XACT_EVENT_COMMIT {
        return;
    }
    let Some((origin, time)) = crate::pg::backend::session_origin() else {
        return;
    };
    if time == 0 {
        return;
    }
    record(
        &mut SHARED.exclusive(),
        crate::pg::backend::database_oid(),
        origin,
        time,
    );
}

/// Raises the slot of (database, origin) to `time`; when every slot is taken, the one applied
/// longest ago (most likely an origin that is gone) makes room.
fn record(shared: &mut SharedProgress, database: u32, origin: u16, time: i64) {
    let found = shared
        .slots
        .iter()
        .position(|s| s.origin == origin && s.database == database)
        .or_else(|| shared.slots.iter().position(|s| s.origin == 0))
        .unwrap_or_else(|| {
            (0..SLOTS)
                .min_by_key(|&i| shared.slots[i].applied_until)
                .unwrap_or(0)
        });
    let slot = &mut shared.slots[found];
    if slot.origin != origin || slot.database != database {
        *slot = Slot {
            database,
            origin,
            applied_until: time,
        };
    } else if time > slot.applied_until {
        slot.applied_until = time;
    }
}

/// This database's origins (ids) and how far each has applied (PostgreSQL microseconds).
pub fn this_database() -> Vec<(u16, i64)> {
    if !available() {
        return Vec::new();
    }
    let database = crate::pg::backend::database_oid();
    SHARED
        .share()
        .slots
        .iter()
        .filter(|s| s.origin != 0 && s.database == database)
        .map(|s| (s.origin, s.applied_until))
        .collect()
}

/// The name of replication origin `origin` (`pg_<subscription oid>` for a subscription's).
pub fn origin_name(origin: u16) -> Option<String> {
    crate::pg::backend::origin_name(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_the_latest_time_and_make_room() {
        let mut shared = Box::new(SharedProgress {
            layout_version: LAYOUT_VERSION,
            slots: [FREE; SLOTS],
        });
        record(&mut shared, 5, 1, 100);
        record(&mut shared, 5, 1, 50);
        record(&mut shared, 6, 1, 70);
        let of = |s: &SharedProgress, d: u32, o: u16| {
            s.slots
                .iter()
                .find(|x| x.database == d && x.origin == o)
                .map(|x| x.applied_until)
        };
        assert_eq!(of(&shared, 5, 1), Some(100));
        assert_eq!(of(&shared, 6, 1), Some(70));
        for origin in 2..(SLOTS as u16) {
            record(&mut shared, 7, origin, 1000 + i64::from(origin));
        }
        // Full: the next origin takes the slot applied longest ago (database 6's, at 70).
        record(&mut shared, 8, 1, 5000);
        assert_eq!(of(&shared, 6, 1), None);
        assert_eq!(of(&shared, 8, 1), Some(5000));
        assert_eq!(of(&shared, 5, 1), Some(100));
    }
}
