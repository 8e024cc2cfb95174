//! SQL functions in schema `mm_conflict` implemented in Rust.

#[pgrx::pg_schema]
pub mod mm_conflict {
    use pgrx::prelude::*;
    use pgrx::{Array, JsonB, PgRelation};

    use crate::error::OrRaise;
    use crate::report::counters;
    use crate::verify::diff;

    /// Version of the loaded shared library (compare with `pg_extension.extversion`).
    #[pg_extern(immutable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Order-independent checksum of a table's rows over its user columns (bookkeeping columns
    /// excluded). Equal on two nodes ⇔ (with overwhelming probability) the same rows.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn table_checksum(tbl: PgRelation) -> i64 {
        crate::verify::checksum::checksum(&tbl).or_raise()
    }

    /// `table_diff`'s buckets of level `bits` of a replicated table (the children of `parents`
    /// only, when given): the ones that hold rows, with their row count and hash.
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_summary(
        tbl: Option<PgRelation>,
        bits: Option<i32>,
        parents: Option<Vec<Option<i64>>>,
    ) -> TableIterator<'static, (name!(bucket, i64), name!(rows, i64), name!(hash, i64))> {
        const F: &str = "mm_conflict._diff_summary";
        let (tbl, bits) = (
            crate::api::args::given(tbl, F, "tbl"),
            crate::api::args::given(bits, F, "bits"),
        );
        let parents = parents.map(|p| crate::api::args::no_nulls(p, F, "parents"));
        TableIterator::new(diff::summary(&tbl, bits, parents).or_raise())
    }

    /// The rows of a replicated table in `buckets` of level `bits`, or with a key in `keys`:
    /// binary key, entry hash, version.
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_rows(
        tbl: Option<PgRelation>,
        bits: Option<i32>,
        buckets: Option<Vec<Option<i64>>>,
        keys: Option<Array<&[u8]>>,
    ) -> TableIterator<
        'static,
        (
            name!(pk, Vec<u8>),
            name!(hash, i64),
            name!(criterion, Option<i64>),
            name!(stattime, Option<i64>),
            name!(node, Option<i16>),
        ),
    > {
        const F: &str = "mm_conflict._diff_rows";
        let (tbl, bits) = (
            crate::api::args::given(tbl, F, "tbl"),
            crate::api::args::given(bits, F, "bits"),
        );
        let buckets =
            buckets.map_or_else(Vec::new, |b| crate::api::args::no_nulls(b, F, "buckets"));
        let keys = keys.map_or_else(Vec::new, owned_keys);
        let rows = diff::rows(&tbl, bits, buckets, keys).or_raise();
        TableIterator::new(rows.into_iter().map(|r| {
            (
                r.key,
                r.hash,
                r.version.criterion,
                r.version.stattime,
                r.version.node,
            )
        }))
    }

    /// The rows of `keys` of a replicated table, found by primary key: each a JSON object of its
    /// columns' text (under pinned settings), what `_repair_apply` reads back.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_contents(
        tbl: PgRelation,
        keys: Array<&[u8]>,
    ) -> TableIterator<'static, (name!(pk, Vec<u8>), name!(content, String))> {
        let keys = owned_keys(keys);
        TableIterator::new(diff::contents(&tbl, keys).or_raise())
    }

    /// The stored tombstones of `keys` of a replicated table: version, and the tombstone row as
    /// JSON when `content`. For superusers and the owner of `mm_conflict.tombstone` only.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_tombstones(
        tbl: PgRelation,
        keys: Array<&[u8]>,
        content: bool,
    ) -> TableIterator<
        'static,
        (
            name!(pk, Vec<u8>),
            name!(criterion, Option<i64>),
            name!(stattime, Option<i64>),
            name!(node, Option<i16>),
            name!(content, Option<String>),
        ),
    > {
        let keys = owned_keys(keys);
        let found = diff::tombstones(&tbl, keys, content).or_raise();
        TableIterator::new(
            found
                .into_iter()
                .map(|(k, v, c)| (k, v.criterion, v.stattime, v.node, c)),
        )
    }

    /// A binary key of a replicated table as a JSON object of its columns.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_key(tbl: PgRelation, pk: Vec<u8>) -> JsonB {
        JsonB(diff::key_json(&tbl, &pk).or_raise())
    }

    /// How a key whose rows differ compares: each side's version as text (NULL: it holds
    /// nothing) and the winner (`local`, `peer` or `equal`). A side is `row`, `tombstone` or NULL.
    #[allow(clippy::too_many_arguments)]
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _diff_judge(
        tbl: Option<PgRelation>,
        local_kind: Option<String>,
        local_criterion: Option<i64>,
        local_stattime: Option<i64>,
        local_node: Option<i16>,
        peer_kind: Option<String>,
        peer_criterion: Option<i64>,
        peer_stattime: Option<i64>,
        peer_node: Option<i16>,
    ) -> TableIterator<
        'static,
        (
            name!(local_version, Option<String>),
            name!(peer_version, Option<String>),
            name!(winner, String),
        ),
    > {
        let tbl = crate::api::args::given(tbl, "mm_conflict._diff_judge", "tbl");
        let local = diff::version(local_criterion, local_stattime, local_node);
        let peer = diff::version(peer_criterion, peer_stattime, peer_node);
        let (l, p, w) = diff::judge(
            &tbl,
            (local_kind.as_deref(), local),
            (peer_kind.as_deref(), peer),
        )
        .or_raise();
        TableIterator::once((l, p, w.to_string()))
    }

    /// `table_diff`'s rows, unordered (`table_diff` orders them by key): the keys whose rows
    /// differ between this node and peer `peer_node_id`, with both sides' versions and the winner.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _table_diff(
        tbl: Option<PgRelation>,
        peer_node_id: Option<i32>,
    ) -> TableIterator<
        'static,
        (
            name!(key, JsonB),
            name!(local_version, Option<String>),
            name!(peer_version, Option<String>),
            name!(winner, String),
        ),
    > {
        crate::pg::security::require_superuser("table_diff()").or_raise();
        let tbl = crate::api::args::given(tbl, "table_diff()", "tbl");
        let peer = crate::api::args::given(peer_node_id, "table_diff()", "peer_node_id");
        let rows = crate::verify::compare::table_diff(&tbl, peer).or_raise();
        TableIterator::new(
            rows.into_iter()
                .map(|(key, l, p, w)| (JsonB(key), l, p, w.to_string())),
        )
    }

    /// Writes winning versions (a JSON array of `{"row": ...}` / `{"tombstone": ...}`) into a
    /// replicated table, each resolved as a replicated change; `same_version`: rows with the
    /// stored version are written too. Returns the number of items written.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _repair_apply(tbl: PgRelation, items: &str, same_version: bool) -> i64 {
        diff::apply(&tbl, items, same_version).or_raise()
    }

    /// This node's state of `keys` of a replicated table as repair items (a JSON array: a key's
    /// row if it has one, else its tombstone, if any), what `_repair_apply` writes elsewhere.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _repair_items(tbl: PgRelation, keys: Array<&[u8]>) -> String {
        diff::items(&tbl, owned_keys(keys)).or_raise()
    }

    /// Writes the winning version of every key that differs between nodes on every node, from
    /// this node; returns the keys written (README "Verify and repair").
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn repair(tbl: Option<PgRelation>) -> i64 {
        // The same order of checks as every mesh function: rights, then arguments.
        crate::pg::security::require_superuser("repair()").or_raise();
        let tbl = crate::api::args::given(tbl, "repair()", "tbl");
        crate::verify::repair::run(&tbl).or_raise()
    }

    /// A `bytea[]` of binary keys, copied out of the array (NULL elements left out).
    fn owned_keys(keys: Array<&[u8]>) -> Vec<Vec<u8>> {
        keys.iter().flatten().map(<[u8]>::to_vec).collect()
    }

    /// A table's stable name, as tombstones, key locks and reports name it: `schema.table`, a
    /// part double-quoted only when it is not a plain lower-case name, whatever the session's
    /// settings or the server's keyword list.
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _table_name(tbl: PgRelation) -> String {
        crate::pg::relation::identity(&tbl)
    }

    /// `create_mesh`'s node list as rows, checked; errors name the bad element and field.
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
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
    #[search_path(pg_catalog, pg_temp)]
    fn _conflict_counters_state() -> &'static str {
        counters::state()
    }

    /// This database's counters, one row per table counted since the last reset.
    #[pg_extern(volatile, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
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
            name!(deltas_merged, i64),
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
                c[8],
                TimestampWithTimeZone::try_from(t.since).ok(),
            )
        }))
    }

    /// Zeroes this database's counters: of one table, or (NULL) of all its tables.
    #[pg_extern(volatile, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn _reset_conflict_counters(relid: Option<pg_sys::Oid>) {
        counters::reset(relid).or_raise()
    }
}
