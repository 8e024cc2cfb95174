//! The mesh API's SQL functions implemented in Rust: this node's identity and tables, and the
//! decisions of the functions in `sql/mesh.sql` that reach other nodes.

#[pgrx::pg_schema]
pub mod mm_conflict {
    use pgrx::prelude::*;
    use pgrx::{JsonB, PgRelation};

    use crate::error::{MmError, OrRaise};
    use crate::mesh::plan::{self, NodeState, PeerState, StepKind, TablePolicy};
    use crate::mesh::{local, parse_nodes};

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value, what: &str) -> T {
        serde_json::from_value(value).unwrap_or_else(|e| {
            MmError::BadInternalArgument {
                function: what.into(),
                detail: e.to_string(),
            }
            .raise()
        })
    }

    /// The oid of a `regclass` argument, with the relation closed again (its lock is kept): DDL
    /// on it in this session fails while it is open.
    fn closed(tbl: PgRelation) -> pg_sys::Oid {
        tbl.oid()
    }

    /// Raises the error described by `error` (`{"error": "<variant>", <fields>}`): how the SQL
    /// functions raise mm_conflict's errors, so that every wording and SQLSTATE lives in one enum.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _fail(error: JsonB) {
        from_json::<MmError>(error.0, "mm_conflict._fail").raise()
    }

    /// Reports `error` (as for `_fail`) as a WARNING and goes on.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _warn(error: JsonB) {
        from_json::<MmError>(error.0, "mm_conflict._warn").warn()
    }

    /// Reports `error` (as for `_fail`) as a NOTICE and goes on.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _notice(error: JsonB) {
        from_json::<MmError>(error.0, "mm_conflict._notice").notice()
    }

    /// The `origin` setting of subscription `subid`: `any` or `none` (always `any` before
    /// PostgreSQL 16, which relays everything).
    #[pg_extern(stable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _subscription_origin(subid: pg_sys::Oid) -> Option<String> {
        crate::pg::spi::read_one::<String>(
            crate::pg::compat::subscription_origin_query(),
            &[subid.into()],
        )
        .ok()
        .flatten()
    }

    /// Whether `_applied_until` is tracked (`shared_preload_libraries`).
    #[pg_extern(volatile, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn _progress_tracked() -> bool {
        crate::report::progress::available()
    }

    /// Per replication origin of this database, the peer's commit time (PostgreSQL microseconds)
    /// of the last transaction applied here since the server started (see `report::progress`).
    #[pg_extern(volatile, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn _applied_until() -> TableIterator<'static, (name!(origin, String), name!(applied_until, i64))>
    {
        use crate::report::progress;
        let rows: Vec<(String, i64)> = progress::this_database()
            .into_iter()
            .filter_map(|(origin, time)| Some((progress::origin_name(origin)?, time)))
            .collect();
        TableIterator::new(rows)
    }

    /// This node's id (`55000` until `node_init`).
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn this_node() -> i16 {
        local::this_node().or_raise()
    }

    /// Records this node's id and name (default `node<id>`); again with the same id, renames it.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn node_init(node_id: Option<i32>, node_name: default!(Option<&str>, "NULL")) {
        local::node_init(node_id, node_name).or_raise()
    }

    /// `22003` unless `node_id` is a node id (1..32767).
    #[pg_extern(immutable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _check_node_id(node_id: Option<i32>) {
        local::check_node_id(node_id.map(i64::from)).or_raise();
    }

    /// `42501` unless the current role is a superuser (`what` names the caller).
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _require_superuser(what: &str) {
        crate::pg::security::require_superuser(what).or_raise();
    }

    /// Makes `tbl` a replicated table on this node (see README "Step by step").
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn replicate_table(
        tbl: Option<PgRelation>,
        criterion: default!(Option<&str>, "'last_xacttime'"),
        method: default!(Option<&str>, "'last'"),
        preferred_node: default!(Option<i32>, "NULL"),
        delta_columns: default!(Option<Vec<Option<String>>>, "NULL"),
    ) {
        let Some(tbl) = tbl.map(closed) else {
            MmError::NullArgument {
                function: "replicate_table()".into(),
                argument: "tbl".into(),
            }
            .raise()
        };
        let delta_columns = delta_columns
            .map(|c| crate::api::args::no_nulls(c, "replicate_table()", "delta_columns"))
            .unwrap_or_default();
        local::replicate_table(tbl, criterion, method, preferred_node, &delta_columns).or_raise()
    }

    /// Staggers the sequences that feed columns of `tbl` for this node, so that the values nodes
    /// draw never meet (`replicate_table` does it; for tables set up by hand). Returns how many
    /// sequences it changed.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn make_sequences_node_safe(tbl: PgRelation) -> i32 {
        let oid = closed(tbl);
        let me = local::this_node().or_raise();
        let (identity, sql) = local::table_names(oid);
        crate::mesh::sequences::make_node_safe(oid, &identity, &sql, i64::from(me)).or_raise()
            as i32
    }

    /// The sequences that feed columns of this node's replicated tables, and whether each is
    /// node-safe (the view `mm_conflict.sequences`).
    #[pg_extern(stable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _sequences() -> TableIterator<
        'static,
        (
            name!(table_name, String),
            name!(column_name, String),
            name!(sequence_name, String),
            name!(increment, i64),
            name!(next_value, i64),
            name!(node_safe, bool),
            name!(problem, Option<String>),
        ),
    > {
        let Ok(me) = local::this_node() else {
            return TableIterator::new(Vec::new());
        };
        let tables = local::resolved_tables();
        let rows = crate::mesh::sequences::report(&tables, i64::from(me)).or_raise();
        TableIterator::new(rows.into_iter().map(|r| {
            (
                r.table,
                r.column,
                r.sequence,
                r.increment,
                r.next_value,
                r.node_safe,
                r.problem,
            )
        }))
    }

    /// The event trigger `mm_conflict_partitions`'s work after `CREATE TABLE` of relation `tbl`:
    /// puts the TRUNCATE guard on partitions of replicated tables created since. Returns how many
    /// it guarded.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _guard_new_partitions(tbl: pg_sys::Oid) -> i32 {
        local::guard_new_partitions(tbl) as i32
    }

    /// Stops replicating `tbl` on this node.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn unreplicate_table(tbl: PgRelation) {
        local::unreplicate_table(closed(tbl)).or_raise()
    }

    /// Raises the error `mm_resolve` would raise on its first row of `tbl`, if any.
    #[pg_extern(strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn check_table(tbl: PgRelation) {
        local::check_table(closed(tbl)).or_raise()
    }

    /// The publication every node offers its peers.
    #[pg_extern(immutable, parallel_safe)]
    #[search_path(pg_catalog, pg_temp)]
    fn publication_name() -> &'static str {
        plan::PUBLICATION
    }

    /// The name of the slot and subscription that carry changes from `publisher` to `subscriber`.
    #[pg_extern(immutable, parallel_safe, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn channel_name(publisher: i32, subscriber: i32) -> String {
        plan::channel_name(i64::from(publisher), i64::from(subscriber))
    }

    /// Takes node `node_id` out of the mesh (README "Remove a node"): every survivor stops
    /// receiving from it, waits until the others have what it received, then drops its
    /// subscription from it, the slot it read and its peer row; the node itself, when reached,
    /// leaves with its rows. One row per node.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn remove_node(
        node_id: Option<i32>,
        force: default!(Option<bool>, false),
        timeout: default!(Option<pgrx::datum::Interval>, "'5 minutes'"),
    ) -> TableIterator<
        'static,
        (
            name!(node, i32),
            name!(removed, bool),
            name!(detail, String),
        ),
    > {
        use crate::api::args::{given, interval_ms};
        let node_id = given(node_id, "remove_node()", "node_id");
        let force = given(force, "remove_node()", "force");
        let timeout = interval_ms(timeout, "remove_node()", "timeout");
        TableIterator::new(crate::mesh::remove::remove_node(node_id, force, timeout).or_raise())
    }

    /// Adds node `node_id` (reached with `conninfo`) to the mesh of this node, copying the rows
    /// from `copy_from` (default: this node); the same call brings back a node that was removed
    /// or whose slots were lost (README "Add a node"). One row per step run.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn add_node(
        node_id: Option<i32>,
        conninfo: Option<&str>,
        copy_from: default!(Option<i32>, "NULL"),
        node_name: default!(Option<&str>, "NULL"),
        timeout: default!(Option<pgrx::datum::Interval>, "'1 hour'"),
    ) -> TableIterator<'static, (name!(node, i32), name!(step, String))> {
        use crate::api::args::{given, interval_ms};
        let node_id = given(node_id, "add_node()", "node_id");
        let conninfo = given(conninfo, "add_node()", "conninfo");
        let timeout = interval_ms(timeout, "add_node()", "timeout");
        TableIterator::new(
            crate::mesh::add::add_node(crate::mesh::add::Request {
                node_id,
                conninfo,
                copy_from,
                node_name,
                timeout,
            })
            .or_raise(),
        )
    }

    /// Drops this node's side of the mesh, and with `everywhere` every peer's first (README
    /// "Tear down"). Rows and bookkeeping columns stay.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn drop_mesh(everywhere: default!(Option<bool>, false)) {
        let everywhere = crate::api::args::given(everywhere, "drop_mesh()", "everywhere");
        crate::mesh::drop::drop_mesh(everywhere).or_raise()
    }

    /// Drops this node's subscription to `peer_node_id`, its peer row and its slot on the peer;
    /// returns what could not be done (NULL when everything was). The undo of `subscribe` steps.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _unsubscribe(peer_node_id: i32) -> Option<String> {
        crate::pg::security::require_superuser("drop_mesh()").or_raise();
        let peer = local::check_node_id(Some(i64::from(peer_node_id))).or_raise();
        crate::mesh::subscribe::unsubscribe(i64::from(peer))
    }

    /// `_unsubscribe` of every peer; what could not be done.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _unsubscribe_all() -> Vec<String> {
        crate::pg::security::require_superuser("drop_mesh()").or_raise();
        crate::mesh::subscribe::unsubscribe_all()
    }

    /// `drop_mesh`'s last step: drops the replication slots on this node through which node `me`
    /// sent its changes to peers; returns the slots it could not drop.
    #[pg_extern(volatile, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _drop_local_slots(me: i16) -> Vec<String> {
        crate::pg::security::require_superuser("drop_mesh()").or_raise();
        local::drop_slots_of(i64::from(me))
    }

    /// True once every peer has confirmed this node's WAL up to the position at the call (README
    /// "Check"); false after `timeout`.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn wait_for_sync(timeout: default!(Option<pgrx::datum::Interval>, "'60 seconds'")) -> bool {
        let (_, ms) = crate::api::args::interval_ms(timeout, "wait_for_sync()", "timeout");
        local::wait_for_peers(None, ms).or_raise()
    }

    /// As `wait_for_sync`, for the peers `peers` only (remove_node's catch-up); a peer without a
    /// slot here has confirmed nothing.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _wait_for_peers(
        peers: Option<Vec<Option<i64>>>,
        timeout: Option<pgrx::datum::Interval>,
    ) -> bool {
        let peers = crate::api::args::no_nulls(
            crate::api::args::given(peers, "_wait_for_peers()", "peers"),
            "_wait_for_peers()",
            "peers",
        );
        let (_, ms) = crate::api::args::interval_ms(timeout, "_wait_for_peers()", "timeout");
        local::wait_for_peers(Some(&peers), ms).or_raise()
    }

    /// `replicate_ddl`'s body (the SQL function `mm_conflict.replicate_ddl` passes the caller's
    /// `search_path`, under which the command runs on every node): runs `command` on every node
    /// of the mesh, all or nothing (README "Schema changes"). One row per node.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _replicate_ddl(
        command: Option<&str>,
        timeout: Option<pgrx::datum::Interval>,
        search_path: Option<&str>,
    ) -> TableIterator<'static, (name!(node, i32), name!(detail, String))> {
        use crate::api::args::{given, interval_ms};
        let command = given(command, "replicate_ddl()", "command");
        let timeout = interval_ms(timeout, "replicate_ddl()", "timeout");
        let search_path = search_path.unwrap_or("pg_catalog, pg_temp");
        TableIterator::new(
            crate::mesh::ddl::replicate_ddl(command, search_path, timeout).or_raise(),
        )
    }

    /// One node's part of `replicate_ddl` (change `change_id`, called on node `origin`): runs
    /// `command` under `search_path` in the calling transaction, then puts the publication's
    /// column lists back, makes tables the command created join the mesh, and records the change
    /// in `mm_conflict.schema_change`. A JSON object: the tables that joined, and those skipped.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _ddl_apply(
        command: Option<&str>,
        search_path: Option<&str>,
        origin: Option<i32>,
        change_id: Option<&str>,
    ) -> String {
        use crate::api::args::given;
        let f = "_ddl_apply()";
        crate::mesh::schema::apply(
            given(command, f, "command"),
            given(search_path, f, "search_path"),
            given(origin, f, "origin"),
            given(change_id, f, "change_id"),
        )
        .or_raise()
    }

    /// The event trigger `mm_conflict_ddl` (`ddl_command_end`): for each object a command changed
    /// (`objects`, of `types`, by commands `tags`), the checks of a replicated table's schema.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _ddl_watch(
        objects: Option<Vec<Option<pg_sys::Oid>>>,
        types: Option<Vec<Option<String>>>,
        tags: Option<Vec<Option<String>>>,
    ) {
        let flat = |v: Option<Vec<Option<String>>>| -> Vec<String> {
            v.unwrap_or_default()
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect()
        };
        let objects: Vec<pg_sys::Oid> = objects
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.unwrap_or(pg_sys::InvalidOid))
            .collect();
        crate::mesh::schema::watch(&objects, &flat(types), &flat(tags)).or_raise()
    }

    /// The event trigger `mm_conflict_ddl_drop` (`sql_drop`): `triggers` holds the address names
    /// ([schema, table, trigger]) of the triggers the command `tag` dropped.
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _ddl_watch_drop(tag: Option<&str>, triggers: Option<JsonB>) {
        let triggers: Vec<Vec<String>> = triggers
            .and_then(|t| serde_json::from_value(t.0).ok())
            .unwrap_or_default();
        crate::mesh::schema::watch_drop(tag.unwrap_or_default(), &triggers)
    }

    /// Subscribes this node to peer `peer_node_id` (README "Step by step").
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn subscribe(
        peer_node_id: Option<i32>,
        conninfo: Option<&str>,
        copy_data: default!(Option<bool>, false),
    ) {
        crate::mesh::subscribe::subscribe(peer_node_id, conninfo, copy_data).or_raise()
    }

    /// `create_mesh` (the SQL function passes its tables by their stable names).
    #[pg_extern(volatile)]
    #[search_path(pg_catalog, pg_temp)]
    fn _create_mesh(
        nodes: Option<JsonB>,
        tables: Option<Vec<Option<String>>>,
        criterion: Option<String>,
        method: Option<String>,
        preferred_node: Option<i32>,
        repair: Option<bool>,
        delta_columns: Option<JsonB>,
    ) {
        crate::mesh::create::create_mesh(crate::mesh::create::Request {
            nodes: nodes.map(|n| n.0),
            tables: tables.map(|t| crate::api::args::no_nulls(t, "create_mesh()", "tables")),
            criterion,
            method,
            preferred_node,
            delta_columns: delta_columns.map(|d| d.0),
            repair: repair.unwrap_or(false),
        })
        .or_raise()
    }

    /// `create_mesh`: the query that inspects a node.
    /// (Not called since 0.5.0, which runs create_mesh in Rust; kept because the upgrade
    /// scripts before 0.5.0 create it from this library.)
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _inspect_query(tables: Vec<Option<String>>) -> String {
        plan::inspect_query(&crate::api::args::no_nulls(
            tables,
            "mm_conflict._inspect_query",
            "tables",
        ))
    }

    /// `create_mesh`: raises what keeps node `node_id` (as inspected) from being set up.
    /// (Not called since 0.5.0, which runs create_mesh in Rust; kept because the upgrade
    /// scripts before 0.5.0 create it from this library.)
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _check_mesh_node(state: JsonB, node_id: i32) {
        let state: NodeState = from_json(state.0, "mm_conflict._check_mesh_node");
        plan::check_node(&state, i64::from(node_id)).or_raise()
    }

    /// `create_mesh`'s plan, one row per step in order (`node` is 1-based in the node list).
    /// (Not called since 0.5.0, which runs create_mesh in Rust; kept because the upgrade
    /// scripts before 0.5.0 create it from this library.)
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _create_mesh_plan(
        nodes: JsonB,
        states: Vec<Option<JsonB>>,
        tables: Vec<Option<String>>,
        criterion: &str,
        method: &str,
        preferred_node: i32,
    ) -> TableIterator<
        'static,
        (
            name!(node, i32),
            name!(step, String),
            name!(compare_table, Option<String>),
            name!(command, String),
            name!(command_is_query, bool),
            name!(undo, Option<String>),
            name!(undo_is_query, Option<bool>),
            name!(undo_name, Option<String>),
        ),
    > {
        let nodes = parse_nodes(nodes.0).or_raise();
        let states: Vec<NodeState> = states
            .into_iter()
            .map(|s| {
                let s = crate::api::args::given(
                    s,
                    "mm_conflict._create_mesh_plan",
                    "an element of states",
                );
                from_json(s.0, "mm_conflict._create_mesh_plan")
            })
            .collect();
        let tables = crate::api::args::no_nulls(tables, "mm_conflict._create_mesh_plan", "tables");
        let policy = TablePolicy {
            criterion: criterion.into(),
            method: method.into(),
            // 0: none (a strict function cannot take NULL).
            preferred_node: (preferred_node != 0).then_some(i64::from(preferred_node)),
            delta_columns: Vec::new(),
        };
        let tables: Vec<(String, TablePolicy)> =
            tables.into_iter().map(|t| (t, policy.clone())).collect();
        let steps = plan::create_plan(&nodes, &states, &tables);
        TableIterator::new(steps.into_iter().map(|s| {
            let compare = match s.kind {
                StepKind::CompareTable(t) => Some(t),
                StepKind::Exec => None,
            };
            let (undo, undo_query, undo_name) = match s.undo {
                Some((r, name)) => (Some(r.sql), Some(r.query), Some(name)),
                None => (None, None, None),
            };
            (
                s.node as i32 + 1,
                s.name,
                compare,
                s.command.sql,
                s.command.query,
                undo,
                undo_query,
                undo_name,
            )
        }))
    }

    /// `create_mesh`: the message and detail of a failed step.
    /// (Not called since 0.5.0, which runs create_mesh in Rust; kept because the upgrade
    /// scripts before 0.5.0 create it from this library.)
    #[pg_extern(immutable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _create_mesh_failure(
        node_label: Option<&str>,
        step: Option<&str>,
        message: Option<&str>,
        detail: Option<&str>,
        undone: Option<Vec<Option<String>>>,
        not_undone: Option<Vec<Option<String>>>,
    ) -> TableIterator<'static, (name!(message, String), name!(detail, String))> {
        const F: &str = "mm_conflict._create_mesh_failure";
        let list = |v: Option<Vec<Option<String>>>, name: &str| {
            crate::api::args::no_nulls(crate::api::args::given(v, F, name), F, name)
        };
        let (undone, not_undone) = (list(undone, "undone"), list(not_undone, "not_undone"));
        let (message, detail) = plan::failure(
            crate::api::args::given(node_label, F, "node_label"),
            crate::api::args::given(step, F, "step"),
            crate::api::args::given(message, F, "message"),
            detail,
            &undone,
            &not_undone,
        );
        TableIterator::once((message, detail))
    }

    /// `subscribe`: the query that inspects the peer.
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _peer_query(channel: &str) -> String {
        plan::peer_query(channel)
    }

    /// `subscribe`: the query for the peer's identity (once it has the extension).
    #[pg_extern(immutable)]
    #[search_path(pg_catalog, pg_temp)]
    fn _peer_identity_query() -> &'static str {
        plan::PEER_IDENTITY_QUERY
    }

    /// `subscribe`: raises what keeps this node from subscribing to `peer` (as inspected); true
    /// when a left-over slot of this name must be dropped on the peer first.
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _check_peer(peer: i32, channel: &str, state: JsonB) -> bool {
        let state: PeerState = from_json(state.0, "mm_conflict._check_peer");
        plan::check_peer(i64::from(peer), channel, &state).or_raise()
    }

    /// `subscribe`: the `CREATE SUBSCRIPTION` statement.
    #[pg_extern(immutable, strict)]
    #[search_path(pg_catalog, pg_temp)]
    fn _subscription_sql(channel: &str, conninfo: &str, copy_data: bool) -> String {
        plan::subscription_sql(
            channel,
            conninfo,
            copy_data,
            i64::from(pg_sys::PG_VERSION_NUM),
        )
    }
}
