-- Conflict visibility. With mm_conflict.log_conflicts = table, every conflict a replicated change
-- meets is a row here, written in the applying transaction (so a retried apply logs once). The
-- table is this node's own: it is never added to the publication. Empty it with DELETE or TRUNCATE.
CREATE TABLE mm_conflict.conflict_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    logged_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    table_name     text        NOT NULL,  -- quoted, schema-qualified, as in mm_conflict.tombstone
    key            jsonb       NOT NULL,  -- the primary key: {"column": value, ...}
    decision       text        NOT NULL,  -- applied, kept_local, insert_converted_to_update, delete_applied, delete_skipped, unique_conflict, delta_merged, tombstone_ignored
    criterion      text        NOT NULL,  -- the column the versions are compared on
    stored_value   timestamptz,           -- stored version (row or tombstone): criterion value,
    stored_node    smallint,              --   node that wrote it (both NULL: the key had none)
    incoming_value timestamptz,           -- incoming version: criterion value,
    incoming_node  smallint,              --   node that wrote it
    stored_row     jsonb,                 -- the stored row (NULL: a tombstone, or none)
    incoming_row   jsonb,                 -- the incoming row (NULL: a delete)
    origin         text,                  -- replication origin of the change (pg_<subscription oid>)
    subscription   name,                  -- that subscription's name, when it is one
    detail         text                   -- why, for tombstone_ignored (a tombstone not resolved)
);
CREATE INDEX ON mm_conflict.conflict_log (table_name, logged_at);
COMMENT ON TABLE mm_conflict.conflict_log IS
    'mm_conflict: conflicts met by replicated changes on this node (mm_conflict.log_conflicts = table); not replicated';
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.conflict_log', '');
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.conflict_log_id_seq', '');

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

CREATE FUNCTION mm_conflict.reset_conflict_stats(table_name regclass DEFAULT NULL)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$ SELECT mm_conflict._reset_conflict_counters(table_name::oid) $$;
COMMENT ON FUNCTION mm_conflict.reset_conflict_stats(regclass) IS
    'mm_conflict: zeroes the conflict counters of one table, or of every table of this database';
REVOKE EXECUTE ON FUNCTION mm_conflict.reset_conflict_stats(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mm_conflict._reset_conflict_counters(oid) FROM PUBLIC;
