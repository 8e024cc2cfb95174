//! The tombstones' high-water marks, per database and bucket of keys (1024 buckets, by the hash of
//! table and key): no tombstone of a key of that bucket, stored or being stored there, has a
//! criterion value or stamp above its bucket's mark. A local INSERT whose clocks are above its
//! key's mark cannot meet a tombstone that matters to it (`engine::local_insert`), so it skips the
//! probe of its key's tombstone, which costs as much as the rest of the INSERT once the tombstone
//! table is not empty.
//!
//! Shared memory (so it needs `shared_preload_libraries`; without it nothing is skipped). Every
//! writer of a tombstone raises the mark *before* writing it (a local delete under the key's lock,
//! an incoming tombstone before its trigger takes it); a reader compares under the key's lock, so
//! a tombstone of its key either raised the mark already or is written after the INSERT and is
//! resolved against its row. A slot starts `LEARNING` (made by the first writer or reader
//! after the server starts), while a reader reads every tombstone of the database; from then on
//! writers keep it. A mark never falls (a purge leaves it): it is an upper bound, and an old one
//! costs nothing, since clocks move past it.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use mm_conflict_core::Micros;

/// Databases tracked per cluster (a slot is kept until the server restarts, also for a database
/// dropped meanwhile); a database beyond them never skips the probe.
const SLOTS: usize = 64;
/// Marks per database, one per bucket of keys (by the hash of table name and key): a delete
/// raises its bucket's only, so that inserts of other keys skip their probe while deletes go on.
pub const BUCKETS: usize = 1024;

const FREE: u32 = 0;
/// The slot exists and writers raise it, but the tombstones stored before are not read yet.
const LEARNING: u32 = 1;
const KNOWN: u32 = 2;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    database: u32,
    state: u32,
    marks: [Micros; BUCKETS],
}

const EMPTY: Slot = Slot {
    database: 0,
    state: FREE,
    marks: [Micros::MIN; BUCKETS],
};

#[derive(Clone, Copy)]
#[repr(C)]
struct SharedMarks {
    slots: [Slot; SLOTS],
}

// SAFETY: plain old data (integers only), no pointers: valid in every process that maps it.
unsafe impl PGRXSharedMemory for SharedMarks {}

// SAFETY: the name is unique to this extension (and names its layout's version). It stays here, outside
// src/pg: a static is declared with its type, and pgrx's constructor is `unsafe` only for that.
static SHARED: PgLwLock<SharedMarks> = unsafe { PgLwLock::new(c"mm_conflict_tombstone_mark_v1") };
static SHARED_READY: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; only has an effect while `shared_preload_libraries` are loaded.
pub fn init() {
    if crate::pg::backend::preloading() {
        pg_shmem_init!(
            SHARED = SharedMarks {
                slots: [EMPTY; SLOTS]
            }
        );
        SHARED_READY.store(true, Ordering::Relaxed);
    }
}

/// The bucket of a key of a table (its stable name's hash and the key's binary form).
pub fn bucket(table_hash: u32, key: &[u8]) -> usize {
    (table_hash ^ crate::pg::names::stable_hash(key).rotate_left(16)) as usize % BUCKETS
}

fn database() -> u32 {
    crate::pg::backend::database_oid()
}

/// The slot of `database`, made (`LEARNING`, every mark at its lowest) if there is none and one
/// is free.
fn slot(marks: &mut SharedMarks, database: u32) -> Option<&mut Slot> {
    let at = match marks
        .slots
        .iter()
        .position(|s| s.state != FREE && s.database == database)
    {
        Some(at) => at,
        None => {
            let free = marks.slots.iter().position(|s| s.state == FREE)?;
            marks.slots[free] = Slot {
                database,
                state: LEARNING,
                marks: [Micros::MIN; BUCKETS],
            };
            free
        }
    };
    Some(&mut marks.slots[at])
}

/// A tombstone in `bucket` whose greatest value (criterion value or stamp) is `value` is about to
/// be written. (One with nothing but NULLs is below every clock, and raises nothing.)
pub fn raise(bucket: usize, value: Micros) {
    if !SHARED_READY.load(Ordering::Relaxed) {
        return;
    }
    if let Some(slot) = slot(&mut SHARED.exclusive(), database()) {
        slot.marks[bucket] = slot.marks[bucket].max(value);
    }
}

/// Whether every tombstone of `bucket` in this database is known to be below `micros`. `learn`
/// reads the tombstones stored, each bucket's greatest value, when the marks are not known yet;
/// `None` when it cannot.
pub fn below(
    bucket: usize,
    micros: Micros,
    learn: impl FnOnce() -> Option<Box<[Micros; BUCKETS]>>,
) -> bool {
    if !SHARED_READY.load(Ordering::Relaxed) {
        return false;
    }
    let database = database();
    {
        let marks = SHARED.share();
        if let Some(s) = marks
            .slots
            .iter()
            .find(|s| s.state == KNOWN && s.database == database)
        {
            return s.marks[bucket] < micros;
        }
    }
    // Make the slot first, so that every tombstone written from now on raises it; then read the
    // ones written before (including those still being written).
    if slot(&mut SHARED.exclusive(), database).is_none() {
        return false;
    }
    let Some(stored) = learn() else {
        return false;
    };
    let mut marks = SHARED.exclusive();
    match slot(&mut marks, database) {
        Some(slot) => {
            for (mark, learnt) in slot.marks.iter_mut().zip(stored.iter()) {
                *mark = (*mark).max(*learnt);
            }
            slot.state = KNOWN;
            slot.marks[bucket] < micros
        }
        None => false,
    }
}

/// For tests: the mark of `bucket` in this database as it stands (`None`: no slot, or still
/// being learnt).
#[cfg(any(test, feature = "pg_test"))]
pub fn known(bucket: usize) -> Option<Micros> {
    let database = database();
    SHARED
        .share()
        .slots
        .iter()
        .find(|s| s.state == KNOWN && s.database == database)
        .map(|s| s.marks[bucket])
}

/// For tests: forgets this database's marks, as a server restart does.
#[cfg(any(test, feature = "pg_test"))]
pub fn forget() {
    let database = database();
    for s in SHARED.exclusive().slots.iter_mut() {
        if s.state != FREE && s.database == database {
            *s = EMPTY;
        }
    }
}
