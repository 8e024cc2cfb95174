-- mm_conflict 0.7.0 -> 0.8.0
--
-- What changes: delta (commutative) columns. replicate_table() and create_mesh() take the new
-- argument delta_columns (so both are dropped and created again, as is _create_mesh(), which
-- create_mesh() calls); _conflict_counters() and the view conflict_stats gain the column
-- deltas_merged (the view is dropped and created again: the column is not at its end). Tables,
-- tombstones and counters' data are kept as they are; a table gets the column mm_delta only when
-- replicate_table declares delta columns on it.
--
-- Made with scripts/upgrade_sql.py from the 0.8.0 schema:
--   scripts/upgrade_sql.py SCHEMA pgrx:replicate_table pgrx:_create_mesh pgrx:_conflict_counters \
--     function:sql/mesh.sql:create_mesh
-- and the view conflict_stats copied from sql/conflicts.sql.

\echo Use "ALTER EXTENSION mm_conflict UPDATE TO '0.8.0'" to load this file. \quit

DROP VIEW mm_conflict.conflict_stats;
DROP FUNCTION mm_conflict._conflict_counters();
DROP FUNCTION mm_conflict.create_mesh(jsonb, regclass[], text, text, integer, boolean);
DROP FUNCTION mm_conflict._create_mesh(jsonb, text[], text, text, integer, boolean);
DROP FUNCTION mm_conflict.replicate_table(regclass, text, text, integer);

CREATE FUNCTION mm_conflict."replicate_table"(
	"tbl" regclass, /* Option < PgRelation > */
	"criterion" TEXT DEFAULT 'last_xacttime', /* Option < & str > */
	"method" TEXT DEFAULT 'last', /* Option < & str > */
	"preferred_node" INT DEFAULT NULL, /* Option < i32 > */
	"delta_columns" TEXT[] DEFAULT NULL /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS void
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'replicate_table_wrapper';

CREATE FUNCTION mm_conflict."_create_mesh"(
	"nodes" jsonb, /* Option < JsonB > */
	"tables" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"criterion" TEXT, /* Option < String > */
	"method" TEXT, /* Option < String > */
	"preferred_node" INT, /* Option < i32 > */
	"repair" bool, /* Option < bool > */
	"delta_columns" jsonb /* Option < JsonB > */
) RETURNS void
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_create_mesh_wrapper';

CREATE FUNCTION mm_conflict."_conflict_counters"() RETURNS TABLE (
	"relid" oid,  /* pg_sys :: Oid */
	"applied" bigint,  /* i64 */
	"kept_local" bigint,  /* i64 */
	"inserts_converted" bigint,  /* i64 */
	"deletes_applied" bigint,  /* i64 */
	"deletes_skipped" bigint,  /* i64 */
	"duplicates_dropped" bigint,  /* i64 */
	"unique_conflicts" bigint,  /* i64 */
	"deltas_merged" bigint,  /* i64 */
	"conflicts" bigint,  /* i64 */
	"counting_since" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_conflict_counters_wrapper';

CREATE FUNCTION mm_conflict.create_mesh(
    nodes jsonb,
    tables regclass[],
    criterion text DEFAULT 'last_xacttime',
    method text DEFAULT 'last',
    preferred_node integer DEFAULT NULL,
    repair boolean DEFAULT false,
    delta_columns jsonb DEFAULT NULL)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT mm_conflict._create_mesh(
        nodes,
        (SELECT array_agg(mm_conflict._table_name(t) ORDER BY o) FROM unnest(tables) WITH ORDINALITY AS u(t, o)),
        criterion, method, preferred_node, repair,
        -- {"table": ["column", ...]}: each table named as in the tables (qualified, or not),
        -- passed on by its stable name; a name that is none of them is passed as it is (and
        -- refused).
        CASE WHEN jsonb_typeof(delta_columns) = 'object'
             THEN (SELECT jsonb_object_agg(coalesce(
                          (SELECT mm_conflict._table_name(c.oid::pg_catalog.regclass)
                             FROM pg_catalog.unnest(tables) AS u(t)
                             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) u.t::oid
                             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                            WHERE d.key OPERATOR(pg_catalog.=) ANY (ARRAY[c.relname::text,
                                      n.nspname::text || '.' || c.relname::text,
                                      u.t::text, mm_conflict._table_name(c.oid::pg_catalog.regclass)])
                            ORDER BY d.key OPERATOR(pg_catalog.=) c.relname::text
                            LIMIT 1),
                          d.key), d.value)
                     FROM pg_catalog.jsonb_each(delta_columns) AS d)
             ELSE delta_columns END)
$$;


-- Counters of every replicated change each table's trigger resolved, from shared memory.
CREATE VIEW mm_conflict.conflict_stats AS
WITH state AS (SELECT mm_conflict._conflict_counters_state() AS s),
tables AS (
    SELECT tg.tgrelid AS relid
      FROM pg_catalog.pg_trigger tg
      JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
     WHERE p.proname = 'mm_resolve' AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
       AND tg.tgparentid = 0     -- a partitioned table is counted as its root
    UNION
    SELECT c.relid FROM mm_conflict._conflict_counters() c
     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = c.relid)
)
SELECT t.relid::pg_catalog.regclass AS table_name,
       CASE WHEN k.counted THEN coalesce(c.applied, 0) END AS applied,
       CASE WHEN k.counted THEN coalesce(c.kept_local, 0) END AS kept_local,
       CASE WHEN k.counted THEN coalesce(c.inserts_converted, 0) END AS inserts_converted,
       CASE WHEN k.counted THEN coalesce(c.deletes_applied, 0) END AS deletes_applied,
       CASE WHEN k.counted THEN coalesce(c.deletes_skipped, 0) END AS deletes_skipped,
       CASE WHEN k.counted THEN coalesce(c.duplicates_dropped, 0) END AS duplicates_dropped,
       CASE WHEN k.counted THEN coalesce(c.unique_conflicts, 0) END AS unique_conflicts,
       CASE WHEN k.counted THEN coalesce(c.deltas_merged, 0) END AS deltas_merged,
       CASE WHEN k.counted THEN coalesce(c.conflicts, 0) END AS conflicts,
       c.counting_since,
       CASE WHEN state.s = 'not_loaded'
                THEN 'not available: add mm_conflict to shared_preload_libraries and restart'
            WHEN NOT k.counted
                THEN 'not counted: no free counter slot (1024 tables); run mm_conflict.reset_conflict_stats()'
       END AS note
  FROM tables t
  CROSS JOIN state
  LEFT JOIN mm_conflict._conflict_counters() c ON c.relid = t.relid
  CROSS JOIN LATERAL (SELECT state.s = 'ok' OR (state.s = 'full' AND c.relid IS NOT NULL) AS counted) k
 ORDER BY t.relid::pg_catalog.regclass::text;
COMMENT ON VIEW mm_conflict.conflict_stats IS
    'mm_conflict: replicated changes resolved per table since the last reset or server start';
