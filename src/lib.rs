//! mm_conflict: conflict resolution for multi-master PostgreSQL over native logical replication.
//!
//! Layers, imports pointing down only (the pure decision core, `mm_conflict_core`, is the bottom):
//! * [`api`]: every function PostgreSQL calls (`#[pg_trigger]`, `#[pg_extern]`).
//! * [`apply`]: runs the core's engine for what PostgreSQL fires; its store over PostgreSQL.
//! * [`verify`]: comparing nodes (`table_checksum`).
//! * [`mesh`]: the mesh API's decisions (node lists).
//! * [`report`]: conflict counters (shared memory), `conflict_log` rows and log lines.
//! * [`catalog`]: per-table caches (a replicated table; the tombstone table).
//! * [`pg`]: small wrappers over PostgreSQL's C API, and the shims between majors.
//! * [`error`], [`gucs`]: the one error enum (a SQLSTATE each), the settings.

mod api;
mod apply;
mod catalog;
mod error;
mod gucs;
mod mesh;
mod pg;
mod report;
mod verify;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!(
    "../sql/tombstones.sql",
    name = "tombstones",
    requires = [
        "bootstrap",
        api::triggers::mm_conflict::tombstone_resolve,
        api::triggers::mm_conflict::tombstone_settle
    ]
);

pgrx::extension_sql_file!(
    "../sql/conflicts.sql",
    name = "conflicts",
    requires = [
        "bootstrap",
        api::functions::mm_conflict::_conflict_counters_state,
        api::functions::mm_conflict::_conflict_counters,
        api::functions::mm_conflict::_reset_conflict_counters
    ]
);

pgrx::extension_sql_file!(
    "../sql/mesh.sql",
    name = "mesh",
    requires = [
        "bootstrap",
        "tombstones",
        api::functions::mm_conflict::mesh_nodes,
        api::functions::mm_conflict::table_checksum,
        api::functions::mm_conflict::_table_name,
        api::mesh::mm_conflict::publication_name,
        api::mesh::mm_conflict::channel_name,
        api::mesh::mm_conflict::_subscription_origin,
        api::mesh::mm_conflict::this_node,
        api::mesh::mm_conflict::_sequences,
        api::mesh::mm_conflict::_guard_new_partitions,
        api::mesh::mm_conflict::_create_mesh
    ]
);

pgrx::extension_sql_file!(
    "../sql/repair.sql",
    name = "repair",
    requires = [
        "mesh",
        api::functions::mm_conflict::_diff_summary,
        api::functions::mm_conflict::_diff_rows,
        api::functions::mm_conflict::_diff_contents,
        api::functions::mm_conflict::_diff_tombstones,
        api::functions::mm_conflict::_diff_key,
        api::functions::mm_conflict::_diff_judge,
        api::functions::mm_conflict::_table_diff,
        api::functions::mm_conflict::_repair_apply,
        api::functions::mm_conflict::_repair_items,
        api::functions::mm_conflict::repair
    ]
);

pgrx::extension_sql_file!(
    "../sql/ddl.sql",
    name = "ddl",
    requires = [
        "mesh",
        api::mesh::mm_conflict::_replicate_ddl,
        api::mesh::mm_conflict::_ddl_watch,
        api::mesh::mm_conflict::_ddl_watch_drop
    ]
);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    report::counters::init();
    report::progress::init();
    catalog::mark::init();
    catalog::relinfo::register_invalidation();
    pg::statement::init();
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
