//! The extension's settings (`mm_conflict.*`), registered in `_PG_init`.

use mm_conflict_core::LocalConflictMode;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgLogLevel, PostgresGucEnum};

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

/// `mm_conflict.log_conflicts`: where each conflict a replicated change meets is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum LogConflicts {
    /// Only the counters of `mm_conflict.conflict_stats` (always kept).
    #[name = c"off"]
    Off,
    /// One server-log line per conflict, at `mm_conflict.log_level`.
    #[name = c"log"]
    Log,
    /// One row per conflict in `mm_conflict.conflict_log`.
    #[name = c"table"]
    Table,
}

pub static LOG_CONFLICTS: GucSetting<LogConflicts> =
    GucSetting::<LogConflicts>::new(LogConflicts::Log);

/// `mm_conflict.log_level`: the level of the server-log lines of `log_conflicts = log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum LogLevel {
    #[name = c"debug5"]
    Debug5,
    #[name = c"debug4"]
    Debug4,
    #[name = c"debug3"]
    Debug3,
    #[name = c"debug2"]
    Debug2,
    #[name = c"debug1"]
    Debug1,
    #[name = c"info"]
    Info,
    #[name = c"notice"]
    Notice,
    #[name = c"warning"]
    Warning,
    #[name = c"log"]
    Log,
}

pub static LOG_LEVEL: GucSetting<LogLevel> = GucSetting::<LogLevel>::new(LogLevel::Log);

pub fn log_level() -> PgLogLevel {
    match LOG_LEVEL.get() {
        LogLevel::Debug5 => PgLogLevel::DEBUG5,
        LogLevel::Debug4 => PgLogLevel::DEBUG4,
        LogLevel::Debug3 => PgLogLevel::DEBUG3,
        LogLevel::Debug2 => PgLogLevel::DEBUG2,
        LogLevel::Debug1 => PgLogLevel::DEBUG1,
        LogLevel::Info => PgLogLevel::INFO,
        LogLevel::Notice => PgLogLevel::NOTICE,
        LogLevel::Warning => PgLogLevel::WARNING,
        LogLevel::Log => PgLogLevel::LOG,
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
    GucRegistry::define_enum_guc(
        c"mm_conflict.log_conflicts",
        c"How conflicts met by replicated changes are reported: off, log or table.",
        c"log (default) writes one server-log line per conflict at mm_conflict.log_level; table adds a \
row to mm_conflict.conflict_log; off reports none. The counters of mm_conflict.conflict_stats are kept \
in every mode. Apply workers take the setting from ALTER DATABASE/ROLE ... SET or postgresql.conf.",
        &LOG_CONFLICTS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"mm_conflict.log_level",
        c"The message level of the conflict lines written when mm_conflict.log_conflicts = log.",
        c"LOG (default) goes to the server log only; lower levels are logged only if \
log_min_messages lets them through.",
        &LOG_LEVEL,
        GucContext::Userset,
        GucFlags::default(),
    );
}
