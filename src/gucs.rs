//! The extension's settings (`mm_conflict.*`), registered in `_PG_init`.

use mm_conflict_core::LocalConflictMode;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

/// `mm_conflict.local_conflict`: what a local write does when it would lose to the stored version
/// (user criterion column older than the stored one, `first` mode on an existing row, or a row
/// owned by the winning node in `nodeid` mode). Every other node rejects such a write, so the
/// default refuses it instead of letting this node diverge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum LocalConflict {
    #[name = c"error"]
    Error,
    #[name = c"skip"]
    Skip,
    #[name = c"apply"]
    Apply,
}

pub static LOCAL_CONFLICT: GucSetting<LocalConflict> =
    GucSetting::<LocalConflict>::new(LocalConflict::Error);

pub fn local_conflict_mode() -> LocalConflictMode {
    match LOCAL_CONFLICT.get() {
        LocalConflict::Error => LocalConflictMode::Error,
        LocalConflict::Skip => LocalConflictMode::Skip,
        LocalConflict::Apply => LocalConflictMode::Apply,
    }
}

/// `mm_conflict.tombstone_retention`: how long `mm_conflict.purge_tombstones()` keeps tombstones.
pub static TOMBSTONE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(86_400);

pub fn init() {
    GucRegistry::define_int_guc(
        c"mm_conflict.tombstone_retention",
        c"How long mm_conflict.purge_tombstones() keeps tombstones (versioned deletes).",
        c"Longer than any replication lag you expect: a change older than a purged tombstone that \
arrives late can bring the deleted row back. Purging also never passes what peers have sent.",
        &TOMBSTONE_RETENTION,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_enum_guc(
        c"mm_conflict.local_conflict",
        c"What a local write that loses to the stored row version does: error, skip or apply.",
        c"error (default) refuses the write; skip drops it silently, as the 2017 article's trigger did; \
apply writes it anyway, which leaves this node with a version every other node rejects (divergence).",
        &LOCAL_CONFLICT,
        GucContext::Userset,
        GucFlags::default(),
    );
}
