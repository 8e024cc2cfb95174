//! A backend-local flag raised for the life of a guard, and restored when the guard drops (also
//! when an error unwinds through it).

use std::cell::Cell;
use std::thread::LocalKey;

pub struct ScopedFlag {
    flag: &'static LocalKey<Cell<bool>>,
    previous: bool,
}

impl ScopedFlag {
    pub fn raise(flag: &'static LocalKey<Cell<bool>>) -> ScopedFlag {
        ScopedFlag {
            flag,
            previous: flag.with(|f| f.replace(true)),
        }
    }
}

impl Drop for ScopedFlag {
    fn drop(&mut self) {
        self.flag.with(|f| f.set(self.previous));
    }
}

thread_local! {
    static REPAIR_WRITE: Cell<bool> = const { Cell::new(false) };
    static REPAIR_SAME_VERSION: Cell<bool> = const { Cell::new(false) };
}

/// A repair's writes (`mm_conflict.repair`): the winning version of a row or tombstone written
/// again on a node that lacks it, resolved exactly as a replicated change (see
/// [`super::is_replicated_session`]).
pub struct RepairWrite {
    _write: ScopedFlag,
    _same_version: Option<ScopedFlag>,
}

impl RepairWrite {
    /// Starts a repair's writes; `same_version`: rows that have the stored row's version are
    /// written too (their content differs, which no order can settle).
    pub fn start(same_version: bool) -> RepairWrite {
        RepairWrite {
            _write: ScopedFlag::raise(&REPAIR_WRITE),
            _same_version: same_version.then(|| ScopedFlag::raise(&REPAIR_SAME_VERSION)),
        }
    }

    pub fn active() -> bool {
        REPAIR_WRITE.with(|f| f.get())
    }

    pub fn overwrites_same_version() -> bool {
        REPAIR_SAME_VERSION.with(|f| f.get())
    }
}

thread_local! {
    static OWN_DDL: Cell<bool> = const { Cell::new(false) };
}

/// mm_conflict's own schema changes (`replicate_ddl`'s command and its trial run,
/// `replicate_table` and the like): the watch over schema changes of replicated tables
/// (`mesh::schema::watch`) lets them pass.
pub struct OwnDdl;

impl OwnDdl {
    pub fn start() -> ScopedFlag {
        ScopedFlag::raise(&OWN_DDL)
    }

    pub fn active() -> bool {
        OWN_DDL.with(|f| f.get())
    }
}
