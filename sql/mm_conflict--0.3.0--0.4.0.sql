-- mm_conflict 0.3.0 -> 0.4.0
--
-- What changes: security. Every Rust function pins search_path (SET search_path TO pg_catalog,
-- pg_temp, as the hand-written ones did); the tombstone table's trigger functions are no longer
-- executable by PUBLIC (nobody else may attach them); conflict_log gets a detail column (why a
-- replicated tombstone was ignored); purge_tombstones is bounded by what each subscription that
-- carries tombstones has applied (two new helpers, _progress_tracked and _applied_until); dblink
-- sessions on peers pin the settings values print with (_connect). Data is kept as it is.
--
-- Made with scripts/upgrade_sql.py from the 0.4.0 schema:
--   scripts/upgrade_sql.py SCHEMA config:NAME... pgrx:_progress_tracked pgrx:_applied_until \
--     replace:sql/tombstones.sql:purge_tombstones replace:sql/mesh.sql:_connect
-- (config: every Rust function of 0.3.0), plus the three statements below it by hand.

\echo Use "ALTER EXTENSION mm_conflict UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE mm_conflict.conflict_log ADD COLUMN detail text;
REVOKE EXECUTE ON FUNCTION mm_conflict.tombstone_resolve() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mm_conflict.tombstone_settle() FROM PUBLIC;

ALTER FUNCTION mm_conflict."_check_mesh_node"(jsonb, INT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_check_node_id"(INT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_check_peer"(INT, TEXT, jsonb) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_conflict_counters"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_conflict_counters_state"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_create_mesh_failure"(TEXT, TEXT, TEXT, TEXT, TEXT[], TEXT[]) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_create_mesh_plan"(jsonb, jsonb[], TEXT[], TEXT, TEXT, INT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_contents"(regclass, bytea[]) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_judge"(regclass, TEXT, bigint, bigint, smallint, TEXT, bigint, bigint, smallint) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_key"(regclass, bytea) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_rows"(regclass, INT, bigint[], bytea[]) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_summary"(regclass, INT, bigint[]) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_diff_tombstones"(regclass, bytea[], bool) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_fail"(jsonb) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_guard_new_partitions"(oid) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_inspect_query"(TEXT[]) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_notice"(jsonb) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_peer_identity_query"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_peer_query"(TEXT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_repair_apply"(regclass, TEXT, bool) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_require_superuser"(TEXT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_reset_conflict_counters"(oid) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_sequences"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_subscription_origin"(oid) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_subscription_sql"(TEXT, TEXT, bool) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_table_name"(regclass) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."_warn"(jsonb) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."channel_name"(INT, INT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."check_table"(regclass) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."make_sequences_node_safe"(regclass) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."mesh_nodes"(jsonb) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."node_init"(INT, TEXT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."publication_name"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."replicate_table"(regclass, TEXT, TEXT, INT) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."table_checksum"(regclass) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."this_node"() SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."unreplicate_table"(regclass) SET search_path TO pg_catalog, pg_temp;

ALTER FUNCTION mm_conflict."version"() SET search_path TO pg_catalog, pg_temp;

CREATE FUNCTION mm_conflict."_progress_tracked"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_progress_tracked_wrapper';

CREATE FUNCTION mm_conflict."_applied_until"() RETURNS TABLE (
	"origin" TEXT,  /* String */
	"applied_until" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_applied_until_wrapper';

CREATE OR REPLACE FUNCTION mm_conflict.purge_tombstones(retention interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := now() - coalesce(
        retention,
        current_setting('mm_conflict.tombstone_retention', true)::interval,
        interval '1 day');
    peers_seen_until timestamptz;
    purged bigint;
BEGIN
    IF mm_conflict._progress_tracked() THEN
        SELECT CASE WHEN bool_or(a.applied_until IS NULL) THEN '-infinity'
                    ELSE min(timestamptz '2000-01-01 00:00:00+00' OPERATOR(pg_catalog.+)
                             (a.applied_until OPERATOR(pg_catalog.*) interval '1 microsecond'))
               END
          INTO peers_seen_until
          FROM pg_subscription s
          LEFT JOIN mm_conflict._applied_until() a
                 ON a.origin OPERATOR(pg_catalog.=) ('pg_' OPERATOR(pg_catalog.||) s.oid)
         WHERE s.subdbid OPERATOR(pg_catalog.=)
               (SELECT oid FROM pg_database WHERE datname OPERATOR(pg_catalog.=) current_database())
           -- only subscriptions that carry tombstones (a subscription of something else, enabled
           -- or not, cannot bring a change that a tombstone must outlive)
           AND EXISTS (SELECT 1 FROM pg_subscription_rel r
                        WHERE r.srsubid OPERATOR(pg_catalog.=) s.oid
                          AND r.srrelid OPERATOR(pg_catalog.=) 'mm_conflict.tombstone'::regclass);
    ELSE
        SELECT CASE WHEN bool_or(w.pid IS NULL OR w.last_msg_send_time IS NULL) THEN '-infinity'
                    ELSE min(w.last_msg_send_time) END
          INTO peers_seen_until
          FROM pg_subscription s
          LEFT JOIN pg_stat_subscription w
                 ON w.subid OPERATOR(pg_catalog.=) s.oid AND w.relid IS NULL
                AND (to_jsonb(w) OPERATOR(pg_catalog.->>) 'leader_pid') IS NULL
         WHERE s.subdbid OPERATOR(pg_catalog.=)
               (SELECT oid FROM pg_database WHERE datname OPERATOR(pg_catalog.=) current_database())
           AND EXISTS (SELECT 1 FROM pg_subscription_rel r
                        WHERE r.srsubid OPERATOR(pg_catalog.=) s.oid
                          AND r.srrelid OPERATOR(pg_catalog.=) 'mm_conflict.tombstone'::regclass);
    END IF;
    cutoff := least(cutoff, coalesce(peers_seen_until, cutoff));
    DELETE FROM mm_conflict.tombstone WHERE deleted_at OPERATOR(pg_catalog.<) cutoff;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
COMMENT ON FUNCTION mm_conflict.purge_tombstones(interval) IS
    'mm_conflict: removes tombstones older than the retention (default mm_conflict.tombstone_retention) on this node';

CREATE OR REPLACE FUNCTION mm_conflict._connect(conn text, conninfo text, who text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    msg text;
    detail text;
BEGIN
    PERFORM mm_conflict._disconnect(conn);
    BEGIN
        -- An unreachable host must not hang the call for the OS's TCP timeout.
        EXECUTE format('SELECT %s($1, $2)', mm_conflict._dblink('dblink_connect'))
          USING conn,
                CASE WHEN conninfo ~* '^\s*postgres(ql)?://' OR conninfo ~ 'connect_timeout'
                     THEN conninfo ELSE conninfo || ' connect_timeout=10' END;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
        PERFORM mm_conflict._fail(jsonb_build_object(
            'error', 'cannot_connect', 'who', who, 'detail', coalesce(nullif(detail, ''), msg)));
    END;
    -- Statements sent to peers can carry conninfos: keep them out of the peer's log. Remote
    -- sessions resolve names only in pg_catalog, and print values the same way whatever the
    -- peer's defaults (floats with every digit, times in ISO form and UTC).
    PERFORM mm_conflict._remote_exec(conn,
        'SET log_min_error_statement = panic; SET log_statement = none; SET log_min_duration_statement = -1; '
        'SET application_name = mm_conflict; SET search_path = pg_catalog, pg_temp; '
        'SET extra_float_digits = 3; SET DateStyle = ISO; SET IntervalStyle = postgres; '
        'SET TimeZone = UTC; SET bytea_output = hex; SET lc_monetary = ''C''; SET xmloption = content');
END
$$;

