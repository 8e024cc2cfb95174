//! SQL functions in schema `mm_conflict` implemented in Rust.

#[pgrx::pg_schema]
pub mod mm_conflict {
    use pgrx::prelude::*;
    use pgrx::{JsonB, PgRelation};

    use crate::error::OrRaise;
    use crate::pg::names;
    use crate::report::counters;

    /// Version of the loaded shared library (compare with `pg_extension.extversion`).
    #[pg_extern(immutable, parallel_safe)]
    fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Order-independent checksum of a table's rows over its user columns (bookkeeping columns
    /// excluded). Equal on two nodes ⇔ (with overwhelming probability) the same rows.
    #[pg_extern(stable, strict)]
    fn table_checksum(tbl: PgRelation) -> i64 {
        crate::verify::checksum::checksum(&tbl).or_raise()
    }

    /// A table's stable name, as tombstones, key locks and reports name it: `schema.table`, a
    /// part double-quoted only when it is not a plain lower-case name, whatever the session's
    /// settings or the server's keyword list.
    #[pg_extern(stable, strict)]
    fn _table_name(tbl: PgRelation) -> String {
        // SAFETY: tbl is open with AccessShareLock for the duration of the call.
        unsafe { names::relation_identity(tbl.as_ptr()) }
    }

    /// `create_mesh`'s node list as rows, checked; errors name the bad element and field.
    #[pg_extern(immutable, strict)]
    fn mesh_nodes(
        nodes: JsonB,
    ) -> TableIterator<
        'static,
        (
            name!(node_id, i16),
            name!(node_name, Option<String>),
            name!(conninfo, String),
        ),
    > {
        let nodes = crate::mesh::parse_nodes(nodes.0).or_raise();
        TableIterator::new(nodes.into_iter().map(|n| (n.id as i16, n.name, n.conninfo)))
    }

    /// 'ok', 'not_loaded' (no shared_preload_libraries) or 'full' (no free counter slot).
    #[pg_extern(volatile, parallel_safe)]
    fn _conflict_counters_state() -> &'static str {
        counters::state()
    }

    /// This database's counters, one row per table counted since the last reset.
    #[pg_extern(volatile, parallel_safe)]
    fn _conflict_counters() -> TableIterator<
        'static,
        (
            name!(relid, pg_sys::Oid),
            name!(applied, i64),
            name!(kept_local, i64),
            name!(inserts_converted, i64),
            name!(deletes_applied, i64),
            name!(deletes_skipped, i64),
            name!(duplicates_dropped, i64),
            name!(unique_conflicts, i64),
            name!(conflicts, i64),
            name!(counting_since, Option<TimestampWithTimeZone>),
        ),
    > {
        TableIterator::new(counters::this_database().into_iter().map(|t| {
            let c = t.counts.map(|n| n as i64);
            (
                t.relid,
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                c[6],
                c[7],
                TimestampWithTimeZone::try_from(t.since).ok(),
            )
        }))
    }

    /// Zeroes this database's counters: of one table, or (NULL) of all its tables.
    #[pg_extern(volatile, parallel_safe)]
    fn _reset_conflict_counters(relid: Option<pg_sys::Oid>) {
        counters::reset(relid).or_raise()
    }
}
