-- Mesh management: the catalog of this node's identity and peers, the dblink helpers every
-- function that reaches other nodes goes through, the unsubscribe helpers drop_mesh runs on every
-- node, and the views that watch the mesh.
--
-- create_mesh, subscribe, add_node, remove_node and drop_mesh are Rust: their plans in
-- core/src/mesh.rs and core/src/membership.rs, their runners in src/mesh/ (over
-- src/mesh/remote.rs, which calls the helpers below); create_mesh here only passes its tables by
-- name. Messages are Rust too, raised through mm_conflict._fail. This node's own functions
-- (node_init, replicate_table, unreplicate_table, this_node, wait_for_sync) are Rust.
--
-- How nodes talk to each other: through dblink (contrib), the only way a SQL function can run
-- statements on another node *as separate, committed transactions*, which the mesh needs: a
-- logical replication slot must be created outside the caller's transaction (CREATE SUBSCRIPTION
-- cannot create it inside one), and a node being set up must commit before its peers can
-- subscribe to it. PostgreSQL's walreceiver API only speaks the replication protocol, and a Rust
-- client would block the backend without interrupt handling. dblink is not required by the
-- extension (the trigger never needs it): the functions below create it on first use, or say how.
--
-- Rules kept throughout:
-- * conninfo strings never appear in messages (they may carry passwords); nodes are named by id
--   and name, and remote sessions turn statement logging off;
-- * SQL sent to a peer is made by Rust with every value quoted once; here only %L/%I, once;
-- * no SECURITY DEFINER; every function pins search_path.

-- This node's identity: one row, set by node_init().
CREATE TABLE mm_conflict.node (
    node_id   smallint NOT NULL PRIMARY KEY CHECK (node_id BETWEEN 1 AND 32767),
    node_name text     NOT NULL,
    only_one  boolean  NOT NULL DEFAULT true UNIQUE CHECK (only_one)
);
COMMENT ON TABLE mm_conflict.node IS 'mm_conflict: this node''s id and name (set by mm_conflict.node_init)';
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.node', '');

-- The peers this node subscribes to (written by subscribe()).
CREATE TABLE mm_conflict.peer (
    node_id      smallint NOT NULL PRIMARY KEY,
    node_name    text     NOT NULL,
    subscription name     NOT NULL UNIQUE
);
COMMENT ON TABLE mm_conflict.peer IS 'mm_conflict: peers this node subscribes to (written by mm_conflict.subscribe)';
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.peer', '');

-- Raises an error caught earlier, again; empty detail and hint are left out.
CREATE FUNCTION mm_conflict._raise(state text, message text, detail text, hint text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    detail := nullif(detail, '');
    hint := nullif(hint, '');
    IF detail IS NOT NULL AND hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail, HINT = hint;
    ELSIF detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail;
    ELSIF hint IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, HINT = hint;
    ELSE
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Talking to other nodes (dblink, wherever it is installed).

-- Makes sure dblink is there: creates it when missing, allowed and `may_create`, else raises
-- with a HINT. create_mesh() may not: creating it writes, and a replication slot created on this
-- node during the call would then wait for the call's own transaction. (node_init() creates it
-- when it can, so a node set up by hand has it before subscribe() runs.)
CREATE FUNCTION mm_conflict._require_dblink(caller text, may_create boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'dblink') THEN
        IF NOT may_create THEN
            PERFORM mm_conflict._fail(jsonb_build_object('error', 'dblink_missing', 'function', caller));
        END IF;
        BEGIN
            -- Beside mm_conflict (search_path is pinned to pg_catalog here).
            EXECUTE format('CREATE EXTENSION IF NOT EXISTS dblink SCHEMA %I',
                           (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                             WHERE e.extname = 'mm_conflict'));
        EXCEPTION WHEN OTHERS THEN
            PERFORM mm_conflict._fail(jsonb_build_object('error', 'dblink_missing', 'function', caller));
        END;
    END IF;
END
$$;

-- The schema-qualified name of dblink function `fn`.
CREATE FUNCTION mm_conflict._dblink(fn text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('%I.%I', n.nspname, fn)
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink'
$$;

CREATE FUNCTION mm_conflict._disconnect(conn text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    open text[];
BEGIN
    EXECUTE format('SELECT %s()', mm_conflict._dblink('dblink_get_connections')) INTO open;
    IF conn = ANY (open) THEN
        EXECUTE format('SELECT %s($1)', mm_conflict._dblink('dblink_disconnect')) USING conn;
    END IF;
END
$$;

-- Opens dblink connection `conn`; 08001 naming `who` (never the conninfo) when the node cannot
-- be reached.
CREATE FUNCTION mm_conflict._connect(conn text, conninfo text, who text) RETURNS void
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

-- Runs command `cmd` (no rows returned) on connection `conn`; a remote error is raised here with
-- its SQLSTATE, message, detail and hint.
CREATE FUNCTION mm_conflict._remote_exec(conn text, cmd text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('SELECT %s($1, $2)', mm_conflict._dblink('dblink_exec')) USING conn, cmd;
END
$$;

-- The first column of the first row of `query` on connection `conn`, as text.
CREATE FUNCTION mm_conflict._remote_value(conn text, query text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format('SELECT v FROM %s($1, $2) AS r(v text) LIMIT 1', mm_conflict._dblink('dblink'))
       INTO result USING conn, query;
    RETURN result;
END
$$;

-- Drops replication slot `slot` on the node behind `conn`, ending the walsender that still holds
-- it (its subscriber is already gone). No-op when the slot does not exist.
CREATE FUNCTION mm_conflict._drop_remote_slot(conn text, slot name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    holder text;
BEGIN
    FOR attempt IN 1..100 LOOP
        holder := mm_conflict._remote_value(conn, format(
            'SELECT coalesce(active_pid::text, %L) FROM pg_catalog.pg_replication_slots '
            'WHERE slot_name = %L AND database = pg_catalog.current_database()', 'free', slot));
        IF holder IS NULL THEN
            RETURN;
        ELSIF holder = 'free' THEN
            PERFORM mm_conflict._remote_value(conn, format('SELECT pg_catalog.pg_drop_replication_slot(%L)', slot));
            RETURN;
        END IF;
        PERFORM mm_conflict._remote_value(conn, format('SELECT pg_catalog.pg_terminate_backend(%s)', holder::int));
        PERFORM pg_sleep(0.1);
    END LOOP;
    PERFORM mm_conflict._fail(jsonb_build_object('error', 'slot_still_active', 'slot', slot));
END
$$;

------------------------------------------------------------------------------------------------
-- Tables.

-- Tables this node replicates (those with the trigger replicate_table creates; a partitioned
-- table as its root).
CREATE VIEW mm_conflict.replicated_tables AS
SELECT tg.tgrelid::regclass AS table_name,
       tg.tgenabled = 'A' AS enabled_always,
       EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                WHERE p.pubname = mm_conflict.publication_name() AND r.prrelid = tg.tgrelid) AS published,
       pg_get_triggerdef(tg.oid) AS trigger
  FROM pg_trigger tg
 WHERE tg.tgname = '!mm_resolve'
   AND tg.tgparentid = 0;    -- not the clones on the partitions of a partitioned table

-- The sequences that feed columns of this node's replicated tables, and whether each is staggered
-- for this node (node-safe: its values never meet another node's).
CREATE VIEW mm_conflict.sequences AS
SELECT * FROM mm_conflict._sequences();
COMMENT ON VIEW mm_conflict.sequences IS
    'mm_conflict: sequences feeding columns of replicated tables; node_safe is false where nodes could draw the same values';

------------------------------------------------------------------------------------------------
-- Subscriptions.

-- subscribe(), _unsubscribe(peer) and _unsubscribe_all() are Rust (src/mesh/subscribe.rs).

------------------------------------------------------------------------------------------------
-- Watching.

-- One row per subscription of this database (the peers subscribe() made, and any other) and per
-- peer whose subscription is missing. Only leader apply workers count: from PostgreSQL 16 on, a
-- subscription's parallel apply workers have rows of their own (with a leader_pid).
CREATE VIEW mm_conflict.status AS
WITH subs AS (
    SELECT s.oid, s.subname, s.subenabled
      FROM pg_subscription s
     WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
), leaders AS (
    SELECT w.* FROM pg_stat_subscription w
     WHERE w.relid IS NULL AND (to_jsonb(w) ->> 'leader_pid') IS NULL
)
SELECT p.node_id,
       p.node_name,
       coalesce(s.subname, p.subscription) AS subscription,
       s.subenabled                       AS enabled,
       w.pid IS NOT NULL                  AS worker_running,
       w.received_lsn,
       o.remote_lsn                       AS replayed_lsn,
       w.last_msg_receipt_time,
       st.apply_error_count,
       st.sync_error_count,
       slot.slot_name                     AS peer_slot,
       slot.active                        AS peer_connected,
       slot.confirmed_flush_lsn           AS peer_confirmed_lsn,
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), slot.confirmed_flush_lsn)::bigint AS lag_bytes,
       r.replay_lag                       AS lag_time,
       mm_conflict._subscription_origin(s.oid) AS origin,
       CASE WHEN s.oid IS NULL THEN 'the subscription is missing'
            WHEN slot.wal_status = 'lost'
                THEN format('the slot through which node %s reads from this node is lost (max_slot_wal_keep_size): it cannot catch up; bring it back with SELECT mm_conflict.add_node(%s, ''<its conninfo>'')', p.node_id, p.node_id)
            WHEN mm_conflict._subscription_origin(s.oid) = 'none'
                THEN 'origin = none: this node drops the changes its peer applied from others, which the mesh needs to converge; ALTER SUBSCRIPTION ... SET (origin = any)'
            WHEN NOT s.subenabled THEN 'disabled'
            WHEN down.since < pg_catalog.now() - down.after
                THEN format('node %s has not read from this node since %s (longer than mm_conflict.peer_down_after = %s); this node keeps %s of WAL for it: if it is gone for good, run mm_conflict.remove_node(%s)',
                            p.node_id, down.since, down.after,
                            pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), slot.restart_lsn)), p.node_id)
            WHEN w.pid IS NULL THEN 'no apply worker running'
       END                                AS problem,
       pg_wal_lsn_diff(pg_current_wal_lsn(), slot.restart_lsn)::bigint AS retained_wal_bytes,
       slot.wal_status,
       down.since                         AS peer_down_since
  FROM subs s
  FULL JOIN mm_conflict.peer p ON p.subscription = s.subname
  LEFT JOIN leaders w ON w.subid = s.oid
  LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid
  LEFT JOIN pg_replication_origin_status o ON o.external_id = 'pg_' || s.oid
  LEFT JOIN mm_conflict.node me ON true
  LEFT JOIN pg_replication_slots slot
         ON slot.slot_name = mm_conflict.channel_name(me.node_id, p.node_id)
        AND slot.database = current_database()
  LEFT JOIN pg_stat_replication r ON r.pid = slot.active_pid
  -- Since when the peer's walsender is gone: the slot's inactive_since (PostgreSQL 17 on; NULL
  -- before, where no server view tells it).
  LEFT JOIN LATERAL (
      SELECT CASE WHEN NOT slot.active THEN (to_jsonb(slot) ->> 'inactive_since')::timestamptz END AS since,
             COALESCE(nullif(current_setting('mm_conflict.peer_down_after', true), ''), '300')::interval AS after
  ) down ON true;
COMMENT ON VIEW mm_conflict.status IS
    'mm_conflict: one row per subscription of this node (and per peer whose subscription is missing), and the peer''s slot on this node';

-- wait_for_sync() is Rust (src/mesh/local.rs: wait_for_peers).

------------------------------------------------------------------------------------------------
-- Tear-down.

-- _drop_local_slots(me) and drop_mesh() are Rust (src/mesh/local.rs: drop_slots_of; src/mesh/drop.rs).

------------------------------------------------------------------------------------------------
-- A whole mesh in one call.

-- The plan (core/src/mesh.rs) and its run (src/mesh/create.rs) are Rust; this passes the tables
-- by their stable names, as the nodes find them.
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

-- Partitions created after replicate_table take the root's mm_resolve trigger by themselves (row
-- triggers are cloned), but not its TRUNCATE guard (statement triggers are not): this event
-- trigger adds it. One catalog query per CREATE TABLE otherwise. Not on ALTER TABLE: a restore
-- runs ALTER TABLE ... ENABLE ALWAYS TRIGGER before it creates the guards it dumped (a table
-- attached with ATTACH PARTITION gets its guard from replicate_table on the root, run again).
CREATE FUNCTION mm_conflict._partitions_event() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
              WHERE classid = 'pg_catalog.pg_class'::regclass AND object_type = 'table'
    LOOP
        PERFORM mm_conflict._guard_new_partitions(c.objid);
    END LOOP;
END
$$;
CREATE EVENT TRIGGER mm_conflict_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION mm_conflict._partitions_event();
