//! The extension's settings (`mm_conflict.*`), registered in `_PG_init`.

use mm_conflict_core::LocalConflictMode;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgLogLevel, PostgresGucEnum};

use crate::pg::guc;

/// `mm_conflict.local_conflict`: what a local write does when it would lose to the stored version
/// (user criterion column older than the stored one, `first` mode on an existing row, or a row
/// owned by the winning node in `nodeid` mode). Every other node rejects such a write, so the
/// default refuses it instead of letting this node diverge. `apply` (diverge on purpose) may only
/// be chosen by a superuser ([`ApplyIsRestricted`]).
mod local_conflict {
    use std::ffi::c_int;

    pub const ERROR: c_int = 0;
    pub const SKIP: c_int = 1;
    pub const APPLY: c_int = 2;
}

/// `apply` makes this node keep versions every other node rejects: only a superuser may choose
/// it (see `pg::guc`).
pub struct ApplyIsRestricted;

impl guc::Restricted for ApplyIsRestricted {
    const VALUE: std::ffi::c_int = local_conflict::APPLY;
    const DETAIL: &'static std::ffi::CStr =
        c"\"apply\" writes local changes that every other node rejects; only a superuser may choose it.";
}

static LOCAL_CONFLICT: guc::GuardedEnum<4, ApplyIsRestricted> = guc::GuardedEnum::new(
    local_conflict::ERROR,
    [
        guc::option(c"error", local_conflict::ERROR),
        guc::option(c"skip", local_conflict::SKIP),
        guc::option(c"apply", local_conflict::APPLY),
        guc::END,
    ],
);

pub fn local_conflict_mode() -> LocalConflictMode {
    match LOCAL_CONFLICT.get() {
        local_conflict::SKIP => LocalConflictMode::Skip,
        local_conflict::APPLY => LocalConflictMode::Apply,
        _ => LocalConflictMode::Error,
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

/// `mm_conflict.log_values`: whether conflict lines in the server log show the key and the rows
/// (off: only the table, the decision and the versions; readers of the server log may not be
/// allowed to read the tables). `conflict_log` rows always hold them (only its owner reads it).
pub static LOG_VALUES: GucSetting<bool> = GucSetting::<bool>::new(false);

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

/// `mm_conflict.peer_down_after`: how long a peer may go without reading from this node before
/// `mm_conflict.status` calls it a problem (read by the view, from PostgreSQL 17 on).
pub static PEER_DOWN_AFTER: GucSetting<i32> = GucSetting::<i32>::new(300);

/// `mm_conflict.bare_ddl`: what an `ALTER TABLE`, `CREATE UNIQUE INDEX` or `DROP TABLE` of a
/// replicated table does when it runs outside `replicate_ddl` on a node of a mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum BareDdl {
    /// A WARNING naming `replicate_ddl`; the change is made.
    #[name = c"warn"]
    Warn,
    /// The change is refused (`55000`).
    #[name = c"error"]
    Error,
    /// Nothing is said.
    #[name = c"allow"]
    Allow,
}

pub static BARE_DDL: GucSetting<BareDdl> = GucSetting::<BareDdl>::new(BareDdl::Warn);

pub fn init() {
    GucRegistry::define_enum_guc(
        c"mm_conflict.bare_ddl",
        c"What a schema change of a replicated table made outside mm_conflict.replicate_ddl does on a node of a mesh: warn, error or allow.",
        c"warn (default) reports a WARNING that names replicate_ddl; error refuses the change; allow \
says nothing. Until every node has made the same change, a change one node sends that another \
cannot take stops replication.",
        &BARE_DDL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"mm_conflict.peer_down_after",
        c"How long a peer may go without reading from this node before mm_conflict.status reports it.",
        c"Meanwhile this node keeps all WAL the peer has not confirmed. Read from the slot's \
inactive_since, which PostgreSQL has from version 17 on.",
        &PEER_DOWN_AFTER,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
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
    LOCAL_CONFLICT.define(
        c"mm_conflict.local_conflict",
        c"What a local write that loses to the stored row version does: error, skip or apply.",
        c"error (default) refuses the write; skip drops it silently, as the 2017 article's trigger \
did; apply writes it anyway, which leaves this node with a version every other node rejects \
(divergence), and only a superuser may choose it.",
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
    GucRegistry::define_bool_guc(
        c"mm_conflict.log_values",
        c"Whether the conflict lines of mm_conflict.log_conflicts = log show keys and rows.",
        c"Off (default): a line names the table, the decision and both versions, but no column value, \
since readers of the server log may not be allowed to read the tables. conflict_log rows always \
hold the values.",
        &LOG_VALUES,
        GucContext::Suset,
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
