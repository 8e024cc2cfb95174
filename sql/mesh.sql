-- Mesh management: this node's identity, replicated tables, subscriptions, setup of a whole mesh
-- from one node, status, sync and tear-down.
--
-- How nodes talk to each other: through dblink (contrib, a required extension). It is the only
-- way a SQL function can run statements on another node *as separate, committed transactions*,
-- which the mesh needs: a logical replication slot must be created outside the caller's
-- transaction (CREATE SUBSCRIPTION cannot create it inside one), and a node being set up must
-- commit before its peers can subscribe to it. PostgreSQL's walreceiver API only speaks the
-- replication protocol, and a Rust client would block the backend without interrupt handling.
--
-- Rules kept throughout:
-- * conninfo strings never appear in messages (they may carry passwords); nodes are named by id
--   and name, and remote sessions turn statement logging off;
-- * every identifier put into SQL is quoted with %I / %L;
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

-- The publication every node offers its peers.
CREATE FUNCTION mm_conflict.publication_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT 'mm_conflict'::name $$;

-- Changes from node `publisher` to node `subscriber` travel through a slot on the publisher and
-- a subscription on the subscriber, both with this name.
CREATE FUNCTION mm_conflict.channel_name(publisher integer, subscriber integer) RETURNS name
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('mm_conflict_%s_to_%s', publisher, subscriber)::name $$;

-- This node's id; 55000 until node_init() ran.
CREATE FUNCTION mm_conflict.this_node() RETURNS smallint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id smallint;
BEGIN
    SELECT node_id INTO id FROM mm_conflict.node;
    IF id IS NULL THEN
        RAISE EXCEPTION 'mm_conflict: this node has no node id yet'
            USING ERRCODE = '55000',
                  HINT = 'Run SELECT mm_conflict.node_init(<node id>, <name>), or set up the whole mesh with mm_conflict.create_mesh().';
    END IF;
    RETURN id;
END
$$;

CREATE FUNCTION mm_conflict._require_superuser(what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('is_superuser') <> 'on' THEN
        RAISE EXCEPTION 'mm_conflict: % requires superuser', what
            USING ERRCODE = '42501',
                  DETAIL = 'PostgreSQL 15 lets only superusers create and drop subscriptions.';
    END IF;
END
$$;

-- Node ids are smallints 1..32767, taken as integer parameters (integer literals do not resolve
-- to smallint ones).
CREATE FUNCTION mm_conflict._check_node_id(node_id integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF node_id IS NULL OR node_id NOT BETWEEN 1 AND 32767 THEN
        RAISE EXCEPTION 'mm_conflict: node id must be between 1 and 32767, got %', coalesce(node_id::text, 'NULL')
            USING ERRCODE = '22003';
    END IF;
END
$$;

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

CREATE FUNCTION mm_conflict._dblink(fn text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schema name;
BEGIN
    SELECT n.nspname INTO schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'dblink';
    IF schema IS NULL THEN
        RAISE EXCEPTION 'mm_conflict: extension dblink is missing'
            USING ERRCODE = '55000', HINT = 'CREATE EXTENSION dblink;';
    END IF;
    RETURN format('%I.%I', schema, fn);
END
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
        RAISE EXCEPTION 'mm_conflict: cannot connect to %', who
            USING ERRCODE = '08001',
                  DETAIL = coalesce(nullif(detail, ''), msg),
                  HINT = 'Check that the node runs and that its conninfo works from this node''s host.';
    END;
    -- Statements sent to peers can carry conninfos: keep them out of the peer's log.
    PERFORM mm_conflict._remote_exec(conn,
        'SET log_min_error_statement = panic; SET log_statement = none; SET log_min_duration_statement = -1; '
        'SET application_name = mm_conflict');
END
$$;

-- Runs `cmd` on connection `conn`; a remote error is raised here with its SQLSTATE, message,
-- detail and hint.
CREATE FUNCTION mm_conflict._remote_exec(conn text, cmd text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('SELECT %s($1, $2)', mm_conflict._dblink('dblink_exec')) USING conn, cmd;
END
$$;

-- Runs PL/pgSQL statements `body` on connection `conn`, as one transaction there.
CREATE FUNCTION mm_conflict._remote_do(conn text, body text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM mm_conflict._remote_exec(conn, format('DO %L', format('BEGIN %s END', body)));
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
BEGIN
    PERFORM mm_conflict._remote_exec(conn, format($remote$
        DO $do$
        DECLARE
            holder int;
        BEGIN
            FOR attempt IN 1..100 LOOP
                SELECT active_pid INTO holder FROM pg_catalog.pg_replication_slots
                 WHERE slot_name = %1$L AND database = pg_catalog.current_database();
                IF NOT FOUND THEN
                    RETURN;
                ELSIF holder IS NULL THEN
                    PERFORM pg_catalog.pg_drop_replication_slot(%1$L);
                    RETURN;
                END IF;
                PERFORM pg_catalog.pg_terminate_backend(holder);
                PERFORM pg_catalog.pg_sleep(0.1);
            END LOOP;
            RAISE EXCEPTION 'replication slot %% is still in use', %1$L USING ERRCODE = '55006';
        END
        $do$
    $remote$, slot));
END
$$;

------------------------------------------------------------------------------------------------
-- This node.

CREATE FUNCTION mm_conflict.node_init(node_id integer, node_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current smallint;
BEGIN
    PERFORM mm_conflict._check_node_id(node_id);
    IF node_name IS NOT NULL AND btrim(node_name) = '' THEN
        RAISE EXCEPTION 'mm_conflict: node name must not be empty' USING ERRCODE = '22023';
    END IF;
    SELECT n.node_id INTO current FROM mm_conflict.node n;
    IF current IS NULL THEN
        INSERT INTO mm_conflict.node(node_id, node_name)
        VALUES (node_init.node_id, coalesce(node_init.node_name, 'node' || node_init.node_id));
    ELSIF current = node_init.node_id THEN
        UPDATE mm_conflict.node n SET node_name = coalesce(node_init.node_name, n.node_name);
    ELSE
        RAISE EXCEPTION 'mm_conflict: this node is already node %, not %', current, node_init.node_id
            USING ERRCODE = '55000',
                  DETAIL = 'Replicated tables and subscriptions carry the node id.',
                  HINT = 'Run SELECT mm_conflict.drop_mesh() first to change it.';
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Tables.

CREATE FUNCTION mm_conflict.replicate_table(
    tbl regclass,
    criterion text DEFAULT 'last_xacttime',
    method text DEFAULT 'last',
    preferred_node integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me smallint := mm_conflict.this_node();
    pub name := mm_conflict.publication_name();
    t text := mm_conflict._table_name(tbl);
    kind "char";
    other record;
    missing text[];
    args text;
BEGIN
    SELECT relkind INTO kind FROM pg_class WHERE oid = tbl;
    IF kind <> 'r' THEN
        RAISE EXCEPTION 'mm_conflict: % is not an ordinary table', t
            USING ERRCODE = '42809',
                  HINT = 'Partitioned tables, views and foreign tables cannot be replicated by mm_conflict.';
    END IF;
    IF (SELECT relnamespace FROM pg_class WHERE oid = tbl) = 'mm_conflict'::regnamespace THEN
        RAISE EXCEPTION 'mm_conflict: % belongs to mm_conflict itself', t USING ERRCODE = '42809';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        RAISE EXCEPTION 'mm_conflict: table % has no primary key', t
            USING ERRCODE = '55000',
                  DETAIL = 'Replicated inserts, updates and deletes find their row by primary key.',
                  HINT = format('Add one with ALTER TABLE %s ADD PRIMARY KEY (...).', t);
    END IF;
    FOR other IN
        SELECT tg.tgname FROM pg_trigger tg
         WHERE tg.tgrelid = tbl AND NOT tg.tgisinternal AND tg.tgname <> '!mm_resolve'
           AND tg.tgfoid IN (SELECT p.oid FROM pg_proc p WHERE p.proname = 'mm_resolve')
    LOOP
        RAISE EXCEPTION 'mm_conflict: table % already has an mm_resolve trigger, "%"', t, other.tgname
            USING ERRCODE = '42710',
                  HINT = format('Drop it first (DROP TRIGGER %I ON %s); replicate_table creates its own.', other.tgname, t);
    END LOOP;

    -- Bookkeeping columns (existing ones are checked by check_table below).
    SELECT array_agg(format('ADD COLUMN %I %s', c.name, c.type) ORDER BY c.ord) INTO missing
      FROM (VALUES (1, 'mm_islocal', 'boolean'), (2, 'mm_nodeid', 'smallint'),
                   (3, 'mm_last_xacttime', 'timestamptz'), (4, 'mm_last_stattime', 'timestamptz'))
           AS c(ord, name, type)
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = tbl AND a.attname = c.name AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s %s', t, array_to_string(missing, ', '));
    END IF;

    -- "!" sorts before letters, digits and "_": BEFORE triggers fire in name order, and the
    -- resolution must come first (a trigger before it would act on changes that then lose).
    args := concat_ws(', ', quote_literal(me), quote_literal(criterion), quote_literal(method),
                      quote_literal(preferred_node));
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER "!mm_resolve" BEFORE INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION %I.mm_resolve(%s)',
        t, (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
             WHERE e.extname = 'mm_conflict'), args);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER "!mm_resolve"', t);
    FOR other IN
        SELECT tg.tgname FROM pg_trigger tg
         WHERE tg.tgrelid = tbl AND NOT tg.tgisinternal
           AND tg.tgtype & 3 = 3              -- BEFORE ... FOR EACH ROW
           AND tg.tgname COLLATE "C" < '!mm_resolve'
    LOOP
        RAISE WARNING 'mm_conflict: trigger "%" on % fires before mm_resolve', other.tgname, t
            USING HINT = 'Rename it so that it sorts after "!mm_resolve", or it also runs for changes that lose.';
    END LOOP;
    -- Raises what the trigger would raise on its first row (bad policy, mistyped columns).
    PERFORM mm_conflict.check_table(tbl);

    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = pub) THEN
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE mm_conflict.tombstone', pub);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                    WHERE p.pubname = pub AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub, t);
    END IF;
END
$$;

CREATE FUNCTION mm_conflict.unreplicate_table(tbl regclass)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me smallint := mm_conflict.this_node();
    pub name := mm_conflict.publication_name();
    t text := mm_conflict._table_name(tbl);
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS "!mm_resolve" ON %s', t);
    IF EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                WHERE p.pubname = pub AND r.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', pub, t);
    END IF;
    -- Local only: peers skip replicated deletes of tombstones.
    DELETE FROM mm_conflict.tombstone WHERE table_name = t;
END
$$;

-- Tables this node replicates (those with the trigger replicate_table creates).
CREATE VIEW mm_conflict.replicated_tables AS
SELECT tg.tgrelid::regclass AS table_name,
       tg.tgenabled = 'A' AS enabled_always,
       EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                WHERE p.pubname = mm_conflict.publication_name() AND r.prrelid = tg.tgrelid) AS published,
       pg_get_triggerdef(tg.oid) AS trigger
  FROM pg_trigger tg
 WHERE tg.tgname = '!mm_resolve';

------------------------------------------------------------------------------------------------
-- Subscriptions.

CREATE FUNCTION mm_conflict.subscribe(peer_node_id integer, conninfo text, copy_data boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me smallint := mm_conflict.this_node();
    channel name;
    conn text := 'mm_conflict_subscribe';
    who text := format('node %s', peer_node_id);
    existing record;
    remote jsonb;
    peer_name text;
    slot_created boolean := false;
    e_state text; e_msg text; e_detail text; e_hint text;
BEGIN
    PERFORM mm_conflict._require_superuser('mm_conflict.subscribe()');
    IF peer_node_id IS NULL OR conninfo IS NULL OR copy_data IS NULL THEN
        RAISE EXCEPTION 'mm_conflict: subscribe() arguments must not be NULL' USING ERRCODE = '22004';
    END IF;
    PERFORM mm_conflict._check_node_id(peer_node_id);
    IF peer_node_id = me THEN
        RAISE EXCEPTION 'mm_conflict: node % cannot subscribe to itself', me USING ERRCODE = '22023';
    END IF;
    channel := mm_conflict.channel_name(peer_node_id, me);

    SELECT s.subconninfo, s.subenabled INTO existing
      FROM pg_subscription s
     WHERE s.subname = channel AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database());
    IF FOUND THEN
        IF existing.subconninfo = conninfo THEN
            RAISE NOTICE 'mm_conflict: node % already subscribes to node %', me, peer_node_id;
            RETURN;
        END IF;
        RAISE EXCEPTION 'mm_conflict: node % already subscribes to node % with another conninfo', me, peer_node_id
            USING ERRCODE = '42710',
                  HINT = format('Change it with ALTER SUBSCRIPTION %I CONNECTION ''...'', or drop the mesh first.', channel);
    END IF;

    PERFORM mm_conflict._connect(conn, conninfo, who);
    BEGIN
        remote := mm_conflict._remote_value(conn, $q$
            SELECT pg_catalog.json_build_object(
                'extension', (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'mm_conflict'),
                'wal_level', pg_catalog.current_setting('wal_level'))
        $q$)::jsonb;
        IF remote->>'extension' IS NULL THEN
            RAISE EXCEPTION 'mm_conflict: node % has no mm_conflict extension', peer_node_id
                USING ERRCODE = '42704', HINT = 'Run CREATE EXTENSION mm_conflict CASCADE there, then node_init() and replicate_table().';
        END IF;
        IF remote->>'wal_level' <> 'logical' THEN
            RAISE EXCEPTION 'mm_conflict: node % runs with wal_level = %', peer_node_id, remote->>'wal_level'
                USING ERRCODE = '55000', HINT = 'Set wal_level = logical there and restart it.';
        END IF;
        remote := mm_conflict._remote_value(conn, format($q$
            SELECT pg_catalog.json_build_object(
                'node_id', (SELECT node_id FROM mm_conflict.node),
                'node_name', (SELECT node_name FROM mm_conflict.node),
                'publication', EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %L),
                'slot_active', (SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %L),
                'slot_database', (SELECT database FROM pg_catalog.pg_replication_slots WHERE slot_name = %L),
                'database', pg_catalog.current_database())
        $q$, mm_conflict.publication_name(), channel, channel))::jsonb;
        IF remote->>'node_id' IS NULL THEN
            RAISE EXCEPTION 'mm_conflict: node % has no node id yet', peer_node_id
                USING ERRCODE = '55000', HINT = format('Run SELECT mm_conflict.node_init(%s) there.', peer_node_id);
        END IF;
        IF (remote->>'node_id')::smallint <> peer_node_id THEN
            RAISE EXCEPTION 'mm_conflict: the node at this conninfo is node %, not node %', remote->>'node_id', peer_node_id
                USING ERRCODE = '22023', HINT = 'Check the conninfo, or the node id passed to subscribe().';
        END IF;
        peer_name := remote->>'node_name';
        IF NOT (remote->>'publication')::boolean THEN
            RAISE EXCEPTION 'mm_conflict: node % has no publication %', peer_node_id, mm_conflict.publication_name()
                USING ERRCODE = '42704', HINT = 'Run SELECT mm_conflict.replicate_table(...) there first.';
        END IF;
        IF remote->>'slot_active' IS NOT NULL THEN
            IF (remote->>'slot_active')::boolean OR remote->>'slot_database' <> remote->>'database' THEN
                RAISE EXCEPTION 'mm_conflict: replication slot % on node % is in use', channel, peer_node_id
                    USING ERRCODE = '42710',
                          DETAIL = 'Another subscriber (or a mesh in another database of that cluster) uses it.';
            END IF;
            -- Left behind by an interrupted subscribe() or drop_mesh(): no subscription uses it.
            PERFORM mm_conflict._drop_remote_slot(conn, channel);
        END IF;

        -- The slot is created over the peer connection, in its own transaction there; so this
        -- function works inside a transaction block, where CREATE SUBSCRIPTION could not create it.
        PERFORM mm_conflict._remote_value(conn, format(
            'SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot(%L, %L)', channel, 'pgoutput'));
        slot_created := true;
        BEGIN
            EXECUTE format(
                'CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I '
                'WITH (create_slot = false, slot_name = %L, copy_data = %s, enabled = true)',
                channel, conninfo, mm_conflict.publication_name(), channel, copy_data::text);
        EXCEPTION WHEN OTHERS THEN
            -- Re-raised without the statement (and its conninfo) in the error context.
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                    e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
            e_msg := format('mm_conflict: cannot subscribe to node %s: %s', peer_node_id,
                            regexp_replace(e_msg, '^mm_conflict: ', ''));
            PERFORM mm_conflict._raise(e_state, e_msg, e_detail, e_hint);
        END;
        INSERT INTO mm_conflict.peer(node_id, node_name, subscription)
        VALUES (peer_node_id, peer_name, channel)
        ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name, subscription = excluded.subscription;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
        IF slot_created THEN
            BEGIN
                PERFORM mm_conflict._drop_remote_slot(conn, channel);
            EXCEPTION WHEN OTHERS THEN
                e_detail := concat_ws(E'\n', e_detail,
                    format('Replication slot %s on node %s could not be dropped; drop it there by hand.', channel, peer_node_id));
            END;
        END IF;
        PERFORM mm_conflict._disconnect(conn);
        PERFORM mm_conflict._raise(e_state, e_msg, e_detail, e_hint);
    END;
    PERFORM mm_conflict._disconnect(conn);
END
$$;

-- Drops this node's subscription to `peer_node_id` and its slot on the peer. Returns a
-- description of anything that could not be done (NULL when everything was).
CREATE FUNCTION mm_conflict._unsubscribe(peer_node_id integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    channel name := mm_conflict.channel_name(peer_node_id, mm_conflict.this_node());
    sub record;
    conn text := 'mm_conflict_unsubscribe';
    msg text;
BEGIN
    SELECT s.subname, s.subconninfo, s.subslotname INTO sub
      FROM pg_subscription s
     WHERE s.subname = channel AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database());
    DELETE FROM mm_conflict.peer WHERE node_id = peer_node_id;
    IF sub.subname IS NULL THEN
        RETURN NULL;
    END IF;
    -- DROP SUBSCRIPTION only stays transactional without a slot: detach it, drop the slot on
    -- the peer ourselves.
    EXECUTE format('ALTER SUBSCRIPTION %I DISABLE', channel);
    EXECUTE format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', channel);
    EXECUTE format('DROP SUBSCRIPTION %I', channel);
    IF sub.subslotname IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM mm_conflict._connect(conn, sub.subconninfo, format('node %s', peer_node_id));
        PERFORM mm_conflict._drop_remote_slot(conn, sub.subslotname);
        PERFORM mm_conflict._disconnect(conn);
        RETURN NULL;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        PERFORM mm_conflict._disconnect(conn);
        RETURN format('replication slot %s on node %s was not dropped (%s); drop it there with SELECT pg_drop_replication_slot(%L)',
                      sub.subslotname, peer_node_id, msg, sub.subslotname);
    END;
END
$$;

------------------------------------------------------------------------------------------------
-- Watching.

CREATE VIEW mm_conflict.status AS
SELECT p.node_id,
       p.node_name,
       s.subname                          AS subscription,
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
       r.replay_lag                       AS lag_time
  FROM mm_conflict.peer p
  LEFT JOIN pg_subscription s
         ON s.subname = p.subscription
        AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL
  LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid
  LEFT JOIN pg_replication_origin_status o ON o.external_id = 'pg_' || s.oid
  LEFT JOIN mm_conflict.node me ON true
  LEFT JOIN pg_replication_slots slot
         ON slot.slot_name = mm_conflict.channel_name(me.node_id, p.node_id)
        AND slot.database = current_database()
  LEFT JOIN pg_stat_replication r ON r.pid = slot.active_pid;
COMMENT ON VIEW mm_conflict.status IS
    'mm_conflict: one row per peer: this node''s subscription to it, and its slot on this node';

CREATE FUNCTION mm_conflict.wait_for_sync(timeout interval DEFAULT '60 seconds')
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me smallint := mm_conflict.this_node();
    -- The insert position: with synchronous_commit = off, a commit this session just made may
    -- not be written yet, so the write position (pg_current_wal_lsn) can lie before it.
    target pg_lsn := pg_current_wal_insert_lsn();
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_replication_slots
             WHERE database = current_database()
               AND slot_name ~ format('^mm_conflict_%s_to_[0-9]+$', me)
               AND (confirmed_flush_lsn IS NULL OR confirmed_flush_lsn < target)) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;

------------------------------------------------------------------------------------------------
-- Tear-down.

-- Drops all of this node's subscriptions (and their slots on the peers); returns what could not
-- be done.
CREATE FUNCTION mm_conflict._unsubscribe_all() RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    peer record;
    problem text;
    problems text[] := '{}';
BEGIN
    FOR peer IN SELECT node_id FROM mm_conflict.peer ORDER BY node_id LOOP
        problem := mm_conflict._unsubscribe(peer.node_id);
        IF problem IS NOT NULL THEN
            problems := problems || problem;
        END IF;
    END LOOP;
    RETURN problems;
END
$$;

-- Runs `query` on each peer (ids and conninfos in step); returns the problems met: a peer that
-- failed, and whatever text[] of problems the query itself returned.
CREATE FUNCTION mm_conflict._on_peers(peer_ids int[], conninfos text[], query text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conn text := 'mm_conflict_on_peers';
    result text;
    problem text;
    problems text[] := '{}';
BEGIN
    FOR k IN 1..cardinality(peer_ids) LOOP
        BEGIN
            PERFORM mm_conflict._connect(conn, conninfos[k], format('node %s', peer_ids[k]));
            result := nullif(mm_conflict._remote_value(conn, query), '');
            problems := problems || coalesce(result::text[], '{}');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            problems := problems || format('node %s: %s', peer_ids[k], problem);
        END;
        PERFORM mm_conflict._disconnect(conn);
    END LOOP;
    RETURN problems;
END
$$;

CREATE FUNCTION mm_conflict.drop_mesh(everywhere boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me smallint;
    peer_ids int[];
    peer_conninfos text[];
    tbl regclass;
    problems text[];
BEGIN
    PERFORM mm_conflict._require_superuser('mm_conflict.drop_mesh()');
    SELECT node_id INTO me FROM mm_conflict.node;
    IF me IS NULL THEN
        RAISE NOTICE 'mm_conflict: this node is not part of a mesh';
        RETURN;
    END IF;
    -- Peers' conninfos are known from this node's subscriptions to them.
    SELECT coalesce(array_agg(p.node_id ORDER BY p.node_id), '{}'),
           coalesce(array_agg(s.subconninfo ORDER BY p.node_id), '{}')
      INTO peer_ids, peer_conninfos
      FROM mm_conflict.peer p
      JOIN pg_subscription s ON s.subname = p.subscription
     WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database());
    IF NOT everywhere THEN
        peer_ids := '{}';
    END IF;
    -- Everywhere: first every subscription on every node, then the rest, so that no subscription
    -- is left pointing at a publication that is already gone.
    problems := mm_conflict._on_peers(peer_ids, peer_conninfos, 'SELECT mm_conflict._unsubscribe_all()');
    problems := problems || mm_conflict._unsubscribe_all();
    problems := problems || mm_conflict._on_peers(peer_ids, peer_conninfos, 'SELECT mm_conflict.drop_mesh(false)');
    FOR tbl IN SELECT tgrelid FROM pg_trigger WHERE tgname = '!mm_resolve' LOOP
        PERFORM mm_conflict.unreplicate_table(tbl);
    END LOOP;
    EXECUTE format('DROP PUBLICATION IF EXISTS %I', mm_conflict.publication_name());
    DELETE FROM mm_conflict.node;
    IF cardinality(problems) > 0 THEN
        RAISE WARNING 'mm_conflict: the mesh was dropped on this node, with problems'
            USING DETAIL = array_to_string(problems, E'\n');
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- A whole mesh in one call.

-- Everything happens over connections to the nodes (this one included), each step committed on
-- its node: a node must have committed its publication before a peer can subscribe to it, and a
-- slot cannot be created on a node while a transaction there that has written is still open.
-- That is also why the calling transaction must not have written anything.
CREATE FUNCTION mm_conflict.create_mesh(
    nodes jsonb,
    tables regclass[],
    criterion text DEFAULT 'last_xacttime',
    method text DEFAULT 'last',
    preferred_node integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids smallint[];
    names text[];
    conninfos text[];
    tnames text[];
    n int;
    conns text[] := '{}';
    labels text[] := '{}';        -- "node <id> (<name>)", for messages
    before jsonb[] := '{}';       -- per node: what existed before this call
    installed int[] := '{}';      -- nodes whose install step committed, in order
    sub_node int[] := '{}';       -- subscriptions created: node sub_node[k] to node sub_peer[k]
    sub_peer int[] := '{}';
    node_label text := 'the first node';
    step text := 'read the node list';
    state jsonb;
    cmd text;
    tables_added boolean := false;
    sums bigint[];
    t text;
    channel text;
    undone text[] := '{}';
    not_undone text[] := '{}';
    e_state text; e_msg text; e_detail text; e_hint text; u_msg text;
BEGIN
    IF txid_current_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'mm_conflict: create_mesh() cannot run in a transaction that has already written'
            USING ERRCODE = '25001',
                  DETAIL = 'Creating replication slots waits for every open transaction that has written, this one included.',
                  HINT = 'Call it on its own, outside an explicit transaction block.';
    END IF;
    PERFORM mm_conflict._require_superuser('mm_conflict.create_mesh()');
    IF tables IS NULL OR cardinality(tables) = 0 THEN
        RAISE EXCEPTION 'mm_conflict: create_mesh() needs at least one table' USING ERRCODE = '22023';
    END IF;
    SELECT array_agg(node_id ORDER BY ord), array_agg(node_name ORDER BY ord), array_agg(conninfo ORDER BY ord)
      INTO ids, names, conninfos
      FROM mm_conflict.mesh_nodes(nodes) WITH ORDINALITY AS m(node_id, node_name, conninfo, ord);
    SELECT array_agg(mm_conflict._table_name(x) ORDER BY ord) INTO tnames
      FROM unnest(tables) WITH ORDINALITY AS u(x, ord);
    n := cardinality(ids);
    FOR i IN 1..n LOOP
        conns := conns || format('mm_conflict_mesh_%s', ids[i]);
        labels := labels || format('node %s%s', ids[i], coalesce(format(' (%s)', names[i]), ''));
    END LOOP;

    BEGIN
        -- 1. Reach and inspect every node; nothing is changed until all pass.
        FOR i IN 1..n LOOP
            node_label := labels[i];
            step := 'connect';
            PERFORM mm_conflict._connect(conns[i], conninfos[i], node_label);
            step := 'inspect';
            state := mm_conflict._remote_value(conns[i], format($q$
                SELECT json_build_object(
                    'superuser', current_setting('is_superuser') = 'on',
                    'wal_level', current_setting('wal_level'),
                    'version', current_setting('server_version_num')::int,
                    'extension', EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'mm_conflict'),
                    'available', EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'mm_conflict'),
                    'missing', (SELECT coalesce(json_agg(t), '[]') FROM unnest(%1$L::text[]) t
                                 WHERE to_regclass(t) IS NULL),
                    'replicated', (SELECT coalesce(json_agg(t), '[]') FROM unnest(%1$L::text[]) t
                                    WHERE EXISTS (SELECT 1 FROM pg_trigger
                                                   WHERE tgrelid = to_regclass(t) AND tgname = '!mm_resolve')),
                    'publication', EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %2$L),
                    'subscriptions', (SELECT coalesce(json_agg(subname), '[]') FROM pg_subscription
                                       WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                                         AND subname ~ '^mm_conflict_[0-9]+_to_[0-9]+$'))
            $q$, tnames, mm_conflict.publication_name()))::jsonb;
            IF NOT (state->>'superuser')::boolean THEN
                RAISE EXCEPTION 'mm_conflict: the role of this conninfo is not a superuser there'
                    USING ERRCODE = '42501', DETAIL = 'PostgreSQL 15 lets only superusers create subscriptions.';
            ELSIF state->>'wal_level' <> 'logical' THEN
                RAISE EXCEPTION 'mm_conflict: wal_level is %, not logical', state->>'wal_level'
                    USING ERRCODE = '55000', HINT = 'Set wal_level = logical and restart the node.';
            ELSIF (state->>'version')::int < 150000 THEN
                RAISE EXCEPTION 'mm_conflict: PostgreSQL % is too old', state->>'version'
                    USING ERRCODE = '0A000', HINT = 'mm_conflict needs PostgreSQL 15 or later.';
            ELSIF NOT (state->>'available')::boolean THEN
                RAISE EXCEPTION 'mm_conflict: the extension is not installed on this server'
                    USING ERRCODE = '58P01', HINT = 'Install the mm_conflict package (cargo pgrx install) there.';
            ELSIF jsonb_array_length(state->'missing') > 0 THEN
                RAISE EXCEPTION 'mm_conflict: table % does not exist there', state->'missing'->>0
                    USING ERRCODE = '42P01', HINT = 'Create the tables on every node first (same schema, same columns).';
            END IF;
            IF (state->>'extension')::boolean THEN
                state := state || jsonb_build_object('node_id',
                    mm_conflict._remote_value(conns[i], 'SELECT node_id FROM mm_conflict.node'));
                IF state->>'node_id' IS NOT NULL AND (state->>'node_id')::smallint <> ids[i] THEN
                    RAISE EXCEPTION 'mm_conflict: the node at this conninfo is already node %', state->>'node_id'
                        USING ERRCODE = '55000', HINT = 'Fix the node list, or run mm_conflict.drop_mesh() there first.';
                END IF;
            END IF;
            before := before || state;
        END LOOP;

        -- 2. Install, identify, replicate the tables: one transaction per node.
        step := 'install the extension, node_init, replicate_table';
        FOR i IN 1..n LOOP
            node_label := labels[i];
            cmd := format('CREATE EXTENSION IF NOT EXISTS mm_conflict CASCADE; PERFORM mm_conflict.node_init(%s, %L);',
                          ids[i], names[i]);
            FOREACH t IN ARRAY tnames LOOP
                cmd := cmd || format(' PERFORM mm_conflict.replicate_table(%L, %L, %L, %L::integer);',
                                     t, criterion, method, preferred_node);
                tables_added := tables_added OR NOT (before[i]->'replicated' ? t);
            END LOOP;
            PERFORM mm_conflict._remote_do(conns[i], cmd);
            installed := installed || i;
        END LOOP;

        -- Rows are not copied: say so when the tables already differ.
        FOREACH t IN ARRAY tnames LOOP
            sums := '{}';
            FOR i IN 1..n LOOP
                sums := sums || mm_conflict._remote_value(conns[i],
                    format('SELECT mm_conflict.table_checksum(%L)', t))::bigint;
            END LOOP;
            IF (SELECT count(DISTINCT s) FROM unnest(sums) s) > 1 THEN
                RAISE WARNING 'mm_conflict: table % differs between the nodes', t
                    USING DETAIL = 'create_mesh() does not copy rows; rows that differ now stay different until written again.',
                          HINT = 'Make the tables identical first, or fill one node and join the others with subscribe(..., copy_data => true).';
            END IF;
        END LOOP;

        -- 3. The N-1 subscriptions of every node.
        FOR i IN 1..n LOOP
            node_label := labels[i];
            FOR j IN 1..n LOOP
                CONTINUE WHEN j = i;
                channel := mm_conflict.channel_name(ids[j], ids[i]);
                IF before[i]->'subscriptions' ? channel THEN
                    IF tables_added THEN
                        step := format('refresh the subscription to node %s', ids[j]);
                        PERFORM mm_conflict._remote_exec(conns[i], format(
                            'ALTER SUBSCRIPTION %I REFRESH PUBLICATION WITH (copy_data = false)', channel));
                    END IF;
                    CONTINUE;
                END IF;
                step := format('subscribe to node %s', ids[j]);
                PERFORM mm_conflict._remote_value(conns[i], format('SELECT mm_conflict.subscribe(%s, %L, false)',
                                                                   ids[j], conninfos[j]));
                sub_node := sub_node || i;
                sub_peer := sub_peer || j;
            END LOOP;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
        -- Undo what this call did, newest first; what existed before stays.
        FOR k IN REVERSE cardinality(sub_node)..1 LOOP
            BEGIN
                u_msg := mm_conflict._remote_value(conns[sub_node[k]],
                    format('SELECT mm_conflict._unsubscribe(%s)', ids[sub_peer[k]]));
                undone := undone || format('subscription of node %s to node %s', ids[sub_node[k]], ids[sub_peer[k]]);
                IF u_msg IS NOT NULL THEN
                    not_undone := not_undone || u_msg;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS u_msg = MESSAGE_TEXT;
                not_undone := not_undone || format('subscription of node %s to node %s (%s)',
                                                   ids[sub_node[k]], ids[sub_peer[k]], u_msg);
            END;
        END LOOP;
        FOR k IN REVERSE cardinality(installed)..1 LOOP
            DECLARE
                i int := installed[k];
                b jsonb := before[installed[k]];
            BEGIN
                cmd := '';
                FOREACH t IN ARRAY tnames LOOP
                    IF NOT (b->'replicated' ? t) THEN
                        cmd := cmd || format('PERFORM mm_conflict.unreplicate_table(%L); ', t);
                    END IF;
                END LOOP;
                IF NOT (b->>'publication')::boolean THEN
                    cmd := cmd || format('DROP PUBLICATION IF EXISTS %I; ', mm_conflict.publication_name());
                END IF;
                IF b->>'node_id' IS NULL THEN
                    cmd := cmd || 'DELETE FROM mm_conflict.node; ';
                END IF;
                IF NOT (b->>'extension')::boolean THEN
                    cmd := cmd || 'DROP EXTENSION mm_conflict; ';
                END IF;
                IF cmd <> '' THEN
                    PERFORM mm_conflict._remote_do(conns[i], cmd);
                    undone := undone || format('setup of node %s', ids[i]);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS u_msg = MESSAGE_TEXT;
                not_undone := not_undone || format('setup of node %s (%s)', ids[installed[k]], u_msg);
            END;
        END LOOP;
        FOR i IN 1..n LOOP
            PERFORM mm_conflict._disconnect(conns[i]);
        END LOOP;
        e_msg := format('mm_conflict: create_mesh() failed on %s at step "%s": %s',
                        node_label, step, regexp_replace(e_msg, '^mm_conflict: ', ''));
        e_detail := concat_ws(E'\n', nullif(e_detail, ''),
            CASE WHEN cardinality(undone) = 0 AND cardinality(not_undone) = 0 THEN 'Nothing was changed.'
                 ELSE 'Undone: ' || coalesce(nullif(array_to_string(undone, '; '), ''), 'nothing') || '.' END,
            'Could not undo: ' || nullif(array_to_string(not_undone, '; '), '') || '.');
        PERFORM mm_conflict._raise(e_state, e_msg, e_detail, e_hint);
    END;
    FOR i IN 1..n LOOP
        PERFORM mm_conflict._disconnect(conns[i]);
    END LOOP;
END
$$;
