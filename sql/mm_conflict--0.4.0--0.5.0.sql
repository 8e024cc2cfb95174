-- mm_conflict 0.4.0 -> 0.5.0
--
-- What changes: table_diff, repair, create_mesh and subscribe are Rust (their plans in core/src/diff.rs,
-- core/src/repair.rs and core/src/mesh.rs, run over one dblink transport, src/mesh/remote.rs).
-- repair, _repair_items and subscribe become Rust functions with the same signatures and results;
-- table_diff and create_mesh become SQL functions over the new _table_diff and _create_mesh; the
-- PL/pgSQL helpers _diff_between, _diff_rows_between, _diff_judged, _peer_conninfo and
-- _remote_run go. Data is kept as it is.
--
-- Made with scripts/upgrade_sql.py from the 0.5.0 schema:
--   scripts/upgrade_sql.py SCHEMA pgrx:_repair_items pgrx:repair pgrx:_table_diff \
--     replace:sql/repair.sql:table_diff pgrx:_create_mesh replace:sql/mesh.sql:create_mesh \
--     pgrx:subscribe
-- plus the DROP statements and repair's COMMENT by hand.

\echo Use "ALTER EXTENSION mm_conflict UPDATE TO '0.5.0'" to load this file. \quit

DROP FUNCTION mm_conflict._diff_judged(regclass, text, integer, bytea[]);
DROP FUNCTION mm_conflict._diff_between(regclass, text, integer);
DROP FUNCTION mm_conflict._diff_rows_between(regclass, text, integer, bigint[], bytea[]);
DROP FUNCTION mm_conflict._peer_conninfo(integer);
DROP FUNCTION mm_conflict._remote_run(text, text, boolean);
DROP FUNCTION mm_conflict._repair_items(regclass, bytea[]);
DROP FUNCTION mm_conflict.repair(regclass);
DROP FUNCTION mm_conflict.subscribe(integer, text, boolean);

CREATE FUNCTION mm_conflict."_repair_items"(
	"tbl" regclass, /* PgRelation */
	"keys" bytea[] /* Array < & [u8] > */
) RETURNS TEXT /* String */
STRICT STABLE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_repair_items_wrapper';

CREATE FUNCTION mm_conflict."repair"(
	"tbl" regclass /* Option < PgRelation > */
) RETURNS bigint /* i64 */
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'repair_wrapper';

CREATE FUNCTION mm_conflict."_table_diff"(
	"tbl" regclass, /* Option < PgRelation > */
	"peer_node_id" INT /* Option < i32 > */
) RETURNS TABLE (
	"key" jsonb,  /* JsonB */
	"local_version" TEXT,  /* Option < String > */
	"peer_version" TEXT,  /* Option < String > */
	"winner" TEXT  /* String */
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_table_diff_wrapper';

CREATE OR REPLACE FUNCTION mm_conflict.table_diff(tbl regclass, peer_node_id integer)
RETURNS TABLE(key jsonb, local_version text, peer_version text, winner text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.key, d.local_version, d.peer_version, d.winner
      FROM mm_conflict._table_diff(tbl, peer_node_id) d
     ORDER BY d.key
$$;
COMMENT ON FUNCTION mm_conflict.table_diff(regclass, integer) IS
    'mm_conflict: the keys whose rows differ between this node and a peer, with both versions and the winner';


COMMENT ON FUNCTION mm_conflict.repair(regclass) IS
    'mm_conflict: writes the winning version of every key that differs between nodes on every node (from this node), returns the keys repaired';

CREATE FUNCTION mm_conflict."_create_mesh"(
	"nodes" jsonb, /* Option < JsonB > */
	"tables" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"criterion" TEXT, /* Option < String > */
	"method" TEXT, /* Option < String > */
	"preferred_node" INT, /* Option < i32 > */
	"repair" bool /* Option < bool > */
) RETURNS void
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_create_mesh_wrapper';

CREATE OR REPLACE FUNCTION mm_conflict.create_mesh(
    nodes jsonb,
    tables regclass[],
    criterion text DEFAULT 'last_xacttime',
    method text DEFAULT 'last',
    preferred_node integer DEFAULT NULL,
    repair boolean DEFAULT false)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT mm_conflict._create_mesh(
        nodes,
        (SELECT array_agg(mm_conflict._table_name(t) ORDER BY o) FROM unnest(tables) WITH ORDINALITY AS u(t, o)),
        criterion, method, preferred_node, repair)
$$;

CREATE FUNCTION mm_conflict."subscribe"(
	"peer_node_id" INT, /* Option < i32 > */
	"conninfo" TEXT, /* Option < & str > */
	"copy_data" bool DEFAULT false /* Option < bool > */
) RETURNS void
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'subscribe_wrapper';

