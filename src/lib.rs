//! mm_conflict: conflict resolution for multi-master PostgreSQL over native logical replication.
//!
//! * `trigger` — the `mm_resolve` trigger function (a thin shim over `resolve`).
//! * `resolve` — what the trigger does with one row; the decisions come from `mm_conflict_core`.
//! * `relinfo` — per-trigger cache of column numbers, policy and primary key.
//! * `keylock` — serialises concurrent inserts of the same key.
//! * `probe` — finds the stored version of a key, robust to concurrent updates.
//! * `tombstone` — versioned deletes, replicated in `mm_conflict.tombstone`.
//! * `spi` — prepared statements of the rare paths.
//! * `mesh` — `create_mesh`'s node list and table checks (the mesh API itself is `sql/mesh.sql`).
//! * `checksum` — `mm_conflict.table_checksum`.
//! * `conflicts` — conflict counters (shared memory), `conflict_log` rows and log lines.
//! * `api` — other SQL functions in schema `mm_conflict`.
//! * `error`, `gucs` — SQLSTATE-mapped errors and settings.

mod api;
mod checksum;
mod conflicts;
mod error;
mod gucs;
mod keylock;
mod mesh;
mod probe;
mod relinfo;
mod resolve;
mod scoped_flag;
mod spi;
mod tombstone;
mod trigger;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/tombstones.sql",
    name = "tombstones",
    requires = [
        "bootstrap",
        tombstone::mm_conflict::tombstone_resolve,
        tombstone::mm_conflict::tombstone_settle
    ]
);

pgrx::extension_sql_file!(
    "../sql/conflicts.sql",
    name = "conflicts",
    requires = [
        "bootstrap",
        conflicts::mm_conflict::_conflict_counters_state,
        conflicts::mm_conflict::_conflict_counters,
        conflicts::mm_conflict::_reset_conflict_counters
    ]
);

pgrx::extension_sql_file!(
    "../sql/mesh.sql",
    name = "mesh",
    requires = [
        "bootstrap",
        "tombstones",
        mesh::mm_conflict::mesh_nodes,
        mesh::mm_conflict::check_table,
        checksum::mm_conflict::table_checksum
    ]
);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    conflicts::init();
    relinfo::register_invalidation();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "wal_level = logical",
            "max_replication_slots = 16",
            "max_wal_senders = 16",
            "max_logical_replication_workers = 8",
            "max_worker_processes = 16",
            "track_commit_timestamp = on",
            "shared_preload_libraries = 'mm_conflict'",
        ]
    }
}
