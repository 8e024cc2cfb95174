-- mm_conflict 0.2.0 -> 0.3.0
--
-- What changes: verify and repair. table_diff(tbl, peer_node_id) lists the keys whose rows
-- differ between this node and a peer; repair(tbl) writes each differing key's winning version on
-- every node; create_mesh gets repair => true. All new functions; create_mesh is replaced (its
-- signature grows). Data is kept as it is.
--
-- Made with scripts/upgrade_sql.py from the 0.3.0 schema:
--   scripts/upgrade_sql.py SCHEMA pgrx:_diff_summary pgrx:_diff_rows pgrx:_diff_contents pgrx:_diff_tombstones \
--     pgrx:_diff_key pgrx:_diff_judge pgrx:_repair_apply file:sql/repair.sql \
--     function:sql/mesh.sql:create_mesh

\echo Use "ALTER EXTENSION mm_conflict UPDATE TO '0.3.0'" to load this file. \quit

CREATE FUNCTION mm_conflict."_diff_summary"(
	"tbl" regclass, /* PgRelation */
	"bits" INT, /* i32 */
	"parents" bigint[] /* :: std :: option :: Option < Vec < i64 > > */
) RETURNS TABLE (
	"bucket" bigint,  /* i64 */
	"rows" bigint,  /* i64 */
	"hash" bigint  /* i64 */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_summary_wrapper';

CREATE FUNCTION mm_conflict."_diff_rows"(
	"tbl" regclass, /* PgRelation */
	"bits" INT, /* i32 */
	"buckets" bigint[], /* :: std :: option :: Option < Vec < i64 > > */
	"keys" bytea[] /* :: std :: option :: Option < Array < & [u8] > > */
) RETURNS TABLE (
	"pk" bytea,  /* Vec < u8 > */
	"hash" bigint,  /* i64 */
	"criterion" bigint,  /* Option < i64 > */
	"stattime" bigint,  /* Option < i64 > */
	"node" smallint  /* Option < i16 > */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_rows_wrapper';

CREATE FUNCTION mm_conflict."_diff_contents"(
	"tbl" regclass, /* PgRelation */
	"keys" bytea[] /* Array < & [u8] > */
) RETURNS TABLE (
	"pk" bytea,  /* Vec < u8 > */
	"content" TEXT  /* String */
)
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_contents_wrapper';

CREATE FUNCTION mm_conflict."_diff_tombstones"(
	"tbl" regclass, /* PgRelation */
	"keys" bytea[], /* Array < & [u8] > */
	"content" bool /* bool */
) RETURNS TABLE (
	"pk" bytea,  /* Vec < u8 > */
	"criterion" bigint,  /* Option < i64 > */
	"stattime" bigint,  /* Option < i64 > */
	"node" smallint,  /* Option < i16 > */
	"content" TEXT  /* Option < String > */
)
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_tombstones_wrapper';

CREATE FUNCTION mm_conflict."_diff_key"(
	"tbl" regclass, /* PgRelation */
	"pk" bytea /* Vec < u8 > */
) RETURNS jsonb /* JsonB */
STRICT STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_key_wrapper';

CREATE FUNCTION mm_conflict."_diff_judge"(
	"tbl" regclass, /* PgRelation */
	"local_kind" TEXT, /* Option < String > */
	"local_criterion" bigint, /* Option < i64 > */
	"local_stattime" bigint, /* Option < i64 > */
	"local_node" smallint, /* Option < i16 > */
	"peer_kind" TEXT, /* Option < String > */
	"peer_criterion" bigint, /* Option < i64 > */
	"peer_stattime" bigint, /* Option < i64 > */
	"peer_node" smallint /* Option < i16 > */
) RETURNS TABLE (
	"local_version" TEXT,  /* Option < String > */
	"peer_version" TEXT,  /* Option < String > */
	"winner" TEXT  /* String */
)
STABLE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_diff_judge_wrapper';

CREATE FUNCTION mm_conflict."_repair_apply"(
	"tbl" regclass, /* PgRelation */
	"items" TEXT, /* & str */
	"same_version" bool /* bool */
) RETURNS bigint /* i64 */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_repair_apply_wrapper';

-- table_diff and repair (sql/repair.sql).
-- Verify and repair: table_diff (where this node and a peer differ) and repair (the winning
-- versions written again on every node that lacks them). How rows are hashed, bucketed, compared
-- and written is Rust (src/verify/diff.rs); this carries its results between nodes over dblink,
-- as the mesh functions do (sql/mesh.sql: same connection helpers, same rules).

-- This node's peers and their conninfos: those of its subscriptions to them.
CREATE FUNCTION mm_conflict._peers() RETURNS TABLE(node_id integer, conninfo text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.node_id, s.subconninfo
      FROM mm_conflict.peer p
      JOIN pg_subscription s ON s.subname = p.subscription
     WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
     ORDER BY p.node_id
$$;

-- The conninfo of peer `peer_node_id`.
CREATE FUNCTION mm_conflict._peer_conninfo(peer_node_id integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conninfo text;
BEGIN
    SELECT p.conninfo INTO conninfo FROM mm_conflict._peers() p WHERE p.node_id = peer_node_id;
    IF conninfo IS NULL THEN
        PERFORM mm_conflict._fail(jsonb_build_object('error', 'not_a_peer', 'node', peer_node_id));
    END IF;
    RETURN conninfo;
END
$$;

-- The rows of `tbl` that differ between this node and the node behind dblink connection `conn`
-- (node `peer`): each side's entry hash and version (NULL: no row there). Buckets of the key's
-- hash are compared level by level, 256 children at a time; a differing bucket of at most 64 rows
-- on either side (or one at the deepest level) has its rows listed and compared. Each step sends
-- the peer its query first and reads this node's side while the peer reads its own.
CREATE FUNCTION mm_conflict._diff_between(tbl regclass, conn text, peer integer)
RETURNS TABLE(pk bytea, local_hash bigint, local_criterion bigint, local_stattime bigint,
              local_node smallint, peer_hash bigint, peer_criterion bigint, peer_stattime bigint,
              peer_node smallint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tname text := mm_conflict._table_name(tbl);
    send text := mm_conflict._dblink('dblink_send_query');
    result text := mm_conflict._dblink('dblink_get_result');
    leaf_rows constant int := 64;
    max_bits constant int := 56;
    bits int := 0;
    parents bigint[];
    descend bigint[];
    leaves bigint[];
    mine jsonb;
    compared bigint;
    ranges bigint := 0;
    differing bigint := 0;
    listed bigint;
    noticed timestamptz := clock_timestamp();
BEGIN
    LOOP
        EXECUTE format('SELECT %s($1, $2)', send) USING conn,
            format('SELECT bucket, rows, hash FROM mm_conflict._diff_summary(%L::regclass, %s, %L::bigint[])',
                   tname, bits, parents);
        SELECT coalesce(jsonb_agg(jsonb_build_array(s.bucket, s.rows, s.hash)), '[]') INTO mine
          FROM mm_conflict._diff_summary(tbl, bits, parents) s;
        EXECUTE format($q$
            WITH l AS (SELECT (e->>0)::bigint AS bucket, (e->>1)::bigint AS rows, (e->>2)::bigint AS hash
                         FROM jsonb_array_elements($1) e),
                 r AS (SELECT * FROM %s($2) AS r(bucket bigint, rows bigint, hash bigint)),
                 j AS (SELECT coalesce(l.bucket, r.bucket) AS bucket, greatest(l.rows, r.rows) AS n,
                              l.hash IS DISTINCT FROM r.hash OR l.rows IS DISTINCT FROM r.rows AS differs
                         FROM l FULL JOIN r ON r.bucket = l.bucket)
            SELECT count(*),
                   array_agg(bucket) FILTER (WHERE differs AND n > $3 AND $5 < $4),
                   array_agg(bucket) FILTER (WHERE differs AND (n <= $3 OR $5 >= $4))
              FROM j$q$, result)
           INTO compared, descend, leaves
          USING mine, conn, leaf_rows, max_bits, bits;
        EXECUTE format('SELECT * FROM %s($1) AS r(bucket bigint, rows bigint, hash bigint)', result) USING conn;
        ranges := ranges + compared;
        IF leaves IS NOT NULL THEN
            RETURN QUERY SELECT * FROM mm_conflict._diff_rows_between(tbl, conn, bits, leaves, NULL);
            GET DIAGNOSTICS listed = ROW_COUNT;
            differing := differing + listed;
        END IF;
        EXIT WHEN descend IS NULL;
        bits := bits + 8;
        parents := descend;
        IF clock_timestamp() - noticed > interval '5 seconds' THEN
            PERFORM mm_conflict._notice(jsonb_build_object(
                'error', 'diff_progress', 'table', tname, 'peer', peer, 'ranges', ranges, 'rows', differing));
            noticed := clock_timestamp();
        END IF;
    END LOOP;
END
$$;

-- The rows of `tbl` in `buckets` of level `bits`, or with a key in `keys`, that differ between
-- this node and the node behind `conn`, as _diff_between returns them. The peer gets its query
-- first and reads its table while this node reads its own.
CREATE FUNCTION mm_conflict._diff_rows_between(tbl regclass, conn text, bits integer, buckets bigint[],
                                                keys bytea[])
RETURNS TABLE(pk bytea, local_hash bigint, local_criterion bigint, local_stattime bigint,
              local_node smallint, peer_hash bigint, peer_criterion bigint, peer_stattime bigint,
              peer_node smallint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text := mm_conflict._dblink('dblink_get_result');
    mine jsonb;
BEGIN
    EXECUTE format('SELECT %s($1, $2)', mm_conflict._dblink('dblink_send_query')) USING conn,
        format('SELECT pk, hash, criterion, stattime, node '
               'FROM mm_conflict._diff_rows(%L::regclass, %s, %L::bigint[], %L::bytea[])',
               mm_conflict._table_name(tbl), bits, buckets, keys);
    SELECT coalesce(jsonb_agg(jsonb_build_array(encode(r.pk, 'hex'), r.hash, r.criterion, r.stattime, r.node)), '[]')
      INTO mine
      FROM mm_conflict._diff_rows(tbl, bits, buckets, keys) r;
    RETURN QUERY EXECUTE format($q$
        WITH l AS (SELECT decode(e->>0, 'hex') AS pk, (e->>1)::bigint AS hash, (e->>2)::bigint AS criterion,
                          (e->>3)::bigint AS stattime, (e->>4)::smallint AS node
                     FROM jsonb_array_elements($1) e),
             r AS (SELECT * FROM %s($2) AS r(pk bytea, hash bigint, criterion bigint,
                                             stattime bigint, node smallint))
        SELECT coalesce(l.pk, r.pk), l.hash, l.criterion, l.stattime, l.node,
               r.hash, r.criterion, r.stattime, r.node
          FROM l FULL JOIN r ON r.pk = l.pk
         WHERE l.hash IS DISTINCT FROM r.hash$q$, result)
      USING mine, conn;
    EXECUTE format('SELECT * FROM %s($1) AS r(pk bytea, hash bigint, criterion bigint, '
                   'stattime bigint, node smallint)', result) USING conn;
END
$$;

-- The keys of `tbl` that differ between this node and the node behind `conn` (node `peer`), each
-- with both sides' versions and the winner, as table_diff shows them; plus the binary key and
-- the node that wrote each side's version (for repair). Among `keys` only, when given.
CREATE FUNCTION mm_conflict._diff_judged(tbl regclass, conn text, peer integer, keys bytea[] DEFAULT NULL)
RETURNS TABLE(pk bytea, key jsonb, local_version text, peer_version text, winner text,
              local_node smallint, peer_node smallint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- A key with a row on one side only is compared with the other side's tombstone, if any.
    RETURN QUERY EXECUTE format($q$
        WITH d AS MATERIALIZED (SELECT * FROM %s),
             lt AS (SELECT * FROM mm_conflict._diff_tombstones(
                        $1, coalesce((SELECT array_agg(d.pk) FROM d WHERE d.local_hash IS NULL), '{}'), false)),
             rt AS (SELECT * FROM %s($2, (SELECT format(
                        'SELECT pk, criterion, stattime, node, content '
                        'FROM mm_conflict._diff_tombstones(%%L::regclass, %%L::bytea[], false)',
                        $4, coalesce(array_agg(d.pk), '{}')) FROM d WHERE d.peer_hash IS NULL))
                        AS t(pk bytea, criterion bigint, stattime bigint, node smallint, content text)),
             s AS (SELECT d.pk,
                          CASE WHEN d.local_hash IS NOT NULL THEN 'row'
                               WHEN lt.pk IS NOT NULL THEN 'tombstone' END AS l_kind,
                          coalesce(d.local_criterion, lt.criterion) AS l_criterion,
                          coalesce(d.local_stattime, lt.stattime) AS l_stattime,
                          coalesce(d.local_node, lt.node) AS l_node,
                          CASE WHEN d.peer_hash IS NOT NULL THEN 'row'
                               WHEN rt.pk IS NOT NULL THEN 'tombstone' END AS p_kind,
                          coalesce(d.peer_criterion, rt.criterion) AS p_criterion,
                          coalesce(d.peer_stattime, rt.stattime) AS p_stattime,
                          coalesce(d.peer_node, rt.node) AS p_node
                     FROM d LEFT JOIN lt ON lt.pk = d.pk LEFT JOIN rt ON rt.pk = d.pk)
        SELECT s.pk, mm_conflict._diff_key($1, s.pk), j.local_version, j.peer_version, j.winner,
               s.l_node, s.p_node
          FROM s CROSS JOIN LATERAL mm_conflict._diff_judge($1, s.l_kind, s.l_criterion, s.l_stattime,
                                                            s.l_node, s.p_kind, s.p_criterion,
                                                            s.p_stattime, s.p_node) j$q$,
        CASE WHEN keys IS NULL THEN 'mm_conflict._diff_between($1, $2, $3)'
             ELSE 'mm_conflict._diff_rows_between($1, $2, 0, NULL, $5)' END,
        mm_conflict._dblink('dblink'))
      USING tbl, conn, peer, mm_conflict._table_name(tbl), keys;
END
$$;

CREATE FUNCTION mm_conflict.table_diff(tbl regclass, peer_node_id integer)
RETURNS TABLE(key jsonb, local_version text, peer_version text, winner text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conn text := 'mm_conflict_diff';
    conninfo text;
BEGIN
    PERFORM mm_conflict._require_superuser('table_diff()');
    IF tbl IS NULL OR peer_node_id IS NULL THEN
        PERFORM mm_conflict._fail(jsonb_build_object(
            'error', 'null_argument', 'function', 'table_diff()',
            'argument', CASE WHEN tbl IS NULL THEN 'tbl' ELSE 'peer_node_id' END));
    END IF;
    conninfo := mm_conflict._peer_conninfo(peer_node_id);
    PERFORM mm_conflict._require_dblink('table_diff()');
    PERFORM mm_conflict._connect(conn, conninfo, format('node %s', peer_node_id));
    RETURN QUERY
        SELECT d.key, d.local_version, d.peer_version, d.winner
          FROM mm_conflict._diff_judged(tbl, conn, peer_node_id) d
         ORDER BY d.key;
    PERFORM mm_conflict._disconnect(conn);
END
$$;
COMMENT ON FUNCTION mm_conflict.table_diff(regclass, integer) IS
    'mm_conflict: the keys whose rows differ between this node and a peer, with both versions and the winner';

-- This node's state of `keys` of `tbl` as repair items (a JSON array): a key's row if it has one,
-- else its tombstone, if any.
CREATE FUNCTION mm_conflict._repair_items(tbl regclass, keys bytea[]) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (SELECT pk, content FROM mm_conflict._diff_contents(tbl, keys)),
         t AS (SELECT pk, content FROM mm_conflict._diff_tombstones(tbl, keys, true)
                WHERE pk NOT IN (SELECT pk FROM r))
    SELECT coalesce(json_agg(i), '[]')::text
      FROM (SELECT json_build_object('row', content::json) AS i FROM r
            UNION ALL
            SELECT json_build_object('tombstone', content::json) FROM t) items
$$;

-- Reconciles `tbl` across the mesh from this node. 1. Where does each peer differ from this node?
-- 2. Let every change already on its way arrive (wait_for_sync here and on every peer), so that
-- only keys that still differ are repaired, not changes replication is about to deliver. 3. Which
-- of those keys still differ? 4. In rounds, with every peer in turn: the keys where the peer's
-- version wins (or, for two rows with one version, the content of the node that wrote it) are
-- written here, those where this node's wins there; until a round writes nothing (a version taken
-- from a later peer must still reach the earlier ones). Every write is resolved by the trigger as
-- a replicated change, so a version a concurrent write has beaten meanwhile changes nothing.
-- Nothing is written before step 4: waiting in step 2 with keys locked here could wait on this
-- node's own apply workers.
CREATE FUNCTION mm_conflict.repair(tbl regclass) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conns text[];                 -- one dblink connection per peer, for the whole repair
    tname text;
    batch constant int := 100;
    settle constant interval := '30 seconds';
    peer_ids int[];
    conninfos text[];
    peer int;
    suspects jsonb := '{}';
    found bytea[];
    confirmed bytea[] := '{}';
    todo jsonb;
    keys bytea[];
    chunk bytea[];
    items text;
    wrote bigint;
    repaired bytea[] := '{}';
    noticed timestamptz := clock_timestamp();
BEGIN
    PERFORM mm_conflict._require_superuser('repair()');
    IF tbl IS NULL THEN
        PERFORM mm_conflict._fail('{"error": "null_argument", "function": "repair()", "argument": "tbl"}');
    END IF;
    PERFORM mm_conflict.this_node();
    tname := mm_conflict._table_name(tbl);
    SELECT coalesce(array_agg(p.node_id ORDER BY p.node_id), '{}'),
           coalesce(array_agg(p.conninfo ORDER BY p.node_id), '{}'),
           coalesce(array_agg(format('mm_conflict_repair_%s', p.node_id) ORDER BY p.node_id), '{}')
      INTO peer_ids, conninfos, conns
      FROM mm_conflict._peers() p;
    IF cardinality(peer_ids) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM mm_conflict._require_dblink('repair()');

    -- 1. The keys where each peer differs from this node.
    FOR i IN 1..cardinality(peer_ids) LOOP
        peer := peer_ids[i];
        PERFORM mm_conflict._connect(conns[i], conninfos[i], format('node %s', peer));
        SELECT array_agg(d.pk) INTO found FROM mm_conflict._diff_between(tbl, conns[i], peer) d;
        IF found IS NOT NULL THEN
            suspects := suspects || jsonb_build_object(peer::text, to_jsonb(found::text[]));
        END IF;
    END LOOP;
    IF suspects = '{}' THEN
        FOR i IN 1..cardinality(conns) LOOP
            PERFORM mm_conflict._disconnect(conns[i]);
        END LOOP;
        RETURN 0;
    END IF;

    -- 2. What is on its way arrives.
    PERFORM mm_conflict.wait_for_sync(settle);
    FOR i IN 1..cardinality(peer_ids) LOOP
        PERFORM mm_conflict._remote_value(conns[i], format('SELECT mm_conflict.wait_for_sync(%L)', settle));
    END LOOP;

    -- 3. The keys that still differ.
    FOR i IN 1..cardinality(peer_ids) LOOP
        peer := peer_ids[i];
        CONTINUE WHEN NOT suspects ? peer::text;
        SELECT array_agg(d.pk) INTO found
          FROM mm_conflict._diff_judged(tbl, conns[i], peer,
                   ARRAY(SELECT jsonb_array_elements_text(suspects -> peer::text))::bytea[]) d;
        confirmed := confirmed || coalesce(found, '{}');
    END LOOP;
    confirmed := ARRAY(SELECT DISTINCT c FROM unnest(confirmed) c);

    -- 4. Rounds of taking and sending the winners, until one writes nothing.
    FOR round IN 1..cardinality(peer_ids) + 1 LOOP
        EXIT WHEN cardinality(confirmed) = 0;
        wrote := 0;
        FOR i IN 1..cardinality(peer_ids) LOOP
            peer := peer_ids[i];
            -- Keys to take from the peer, with the same version or not; to send it, likewise.
            SELECT jsonb_build_array(
                       coalesce(jsonb_agg(d.pk::text) FILTER (WHERE d.winner = 'peer'), '[]'),
                       coalesce(jsonb_agg(d.pk::text) FILTER (WHERE d.winner = 'equal' AND d.peer_node = peer), '[]'),
                       coalesce(jsonb_agg(d.pk::text) FILTER (WHERE d.winner = 'local'), '[]'),
                       coalesce(jsonb_agg(d.pk::text) FILTER (WHERE d.winner = 'equal'
                                                               AND d.peer_node IS DISTINCT FROM peer), '[]'))
              INTO todo
              FROM mm_conflict._diff_judged(tbl, conns[i], peer, confirmed) d;
            FOR kind IN 1..4 LOOP
                keys := ARRAY(SELECT jsonb_array_elements_text(todo -> (kind - 1)))::bytea[];
                CONTINUE WHEN cardinality(keys) = 0;
                FOR k IN 0..(cardinality(keys) - 1) / batch LOOP
                    chunk := keys[k * batch + 1 : (k + 1) * batch];
                    IF kind <= 2 THEN
                        items := mm_conflict._remote_value(conns[i], format(
                            'SELECT mm_conflict._repair_items(%L::regclass, %L::bytea[])', tname, chunk));
                        PERFORM mm_conflict._repair_apply(tbl, items, kind = 2);
                    ELSE
                        items := mm_conflict._repair_items(tbl, chunk);
                        PERFORM mm_conflict._remote_value(conns[i], format(
                            'SELECT mm_conflict._repair_apply(%L::regclass, %L, %L)', tname, items, kind = 4));
                    END IF;
                    wrote := wrote + cardinality(chunk);
                    repaired := repaired || chunk;
                    IF clock_timestamp() - noticed > interval '5 seconds' THEN
                        PERFORM mm_conflict._notice(jsonb_build_object(
                            'error', 'repair_progress', 'table', tname,
                            'keys', (SELECT count(DISTINCT r) FROM unnest(repaired) r)));
                        noticed := clock_timestamp();
                    END IF;
                END LOOP;
            END LOOP;
        END LOOP;
        EXIT WHEN wrote = 0;
    END LOOP;
    FOR i IN 1..cardinality(conns) LOOP
        PERFORM mm_conflict._disconnect(conns[i]);
    END LOOP;
    RETURN (SELECT count(DISTINCT r) FROM unnest(repaired) r);
END
$$;
COMMENT ON FUNCTION mm_conflict.repair(regclass) IS
    'mm_conflict: writes the winning version of every key that differs between nodes on every node (from this node), returns the keys repaired';

REVOKE EXECUTE ON FUNCTION mm_conflict._repair_apply(regclass, text, boolean) FROM PUBLIC;

-- create_mesh gets repair => true.
DROP FUNCTION mm_conflict.create_mesh(jsonb, regclass[], text, text, integer);
CREATE FUNCTION mm_conflict.create_mesh(
    nodes jsonb,
    tables regclass[],
    criterion text DEFAULT 'last_xacttime',
    method text DEFAULT 'last',
    preferred_node integer DEFAULT NULL,
    repair boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids smallint[];
    conninfos text[];
    labels text[];
    tnames text[];
    conns text[] := '{}';
    states jsonb[] := '{}';
    state jsonb;
    step record;
    done jsonb[] := '{}';         -- the steps run so far, as rows of _create_mesh_plan
    sums text[];
    node_label text := 'the first node';
    step_name text := 'read the node list';
    undone text[] := '{}';
    not_undone text[] := '{}';
    e_state text; e_msg text; e_detail text; e_hint text; u_msg text;
    failure record;
BEGIN
    IF txid_current_if_assigned() IS NOT NULL THEN
        PERFORM mm_conflict._fail('{"error": "mesh_in_written_transaction"}');
    END IF;
    PERFORM mm_conflict._require_superuser('create_mesh()');
    IF tables IS NULL OR cardinality(tables) = 0 THEN
        PERFORM mm_conflict._fail('{"error": "mesh_without_tables"}');
    END IF;
    PERFORM mm_conflict._require_dblink('create_mesh()', false);
    SELECT array_agg(m.node_id ORDER BY ord), array_agg(m.conninfo ORDER BY ord),
           array_agg(format('node %s', m.node_id) || CASE WHEN m.node_name IS NULL THEN ''
                                                           ELSE format(' (%s)', m.node_name) END ORDER BY ord),
           array_agg(format('mm_conflict_mesh_%s', m.node_id) ORDER BY ord)
      INTO ids, conninfos, labels, conns
      FROM mm_conflict.mesh_nodes(nodes) WITH ORDINALITY AS m(node_id, node_name, conninfo, ord);
    SELECT array_agg(mm_conflict._table_name(x) ORDER BY ord) INTO tnames
      FROM unnest(tables) WITH ORDINALITY AS u(x, ord);

    BEGIN
        -- 1. Reach and inspect every node; nothing is changed until all pass.
        FOR i IN 1..cardinality(ids) LOOP
            node_label := labels[i];
            step_name := 'connect';
            PERFORM mm_conflict._connect(conns[i], conninfos[i], node_label);
            step_name := 'inspect';
            state := mm_conflict._remote_value(conns[i], mm_conflict._inspect_query(tnames))::jsonb;
            IF (state->>'extension')::boolean THEN
                state := state || jsonb_build_object('node_id',
                    mm_conflict._remote_value(conns[i], 'SELECT node_id FROM mm_conflict.node')::int);
            END IF;
            PERFORM mm_conflict._check_mesh_node(state, ids[i]);
            states := states || state;
        END LOOP;

        -- 2. The plan's steps, in order.
        FOR step IN SELECT * FROM mm_conflict._create_mesh_plan(nodes, states, tnames, criterion, method,
                                                                 coalesce(preferred_node, 0)) LOOP
            node_label := labels[step.node];
            step_name := step.step;
            IF step.compare_table IS NOT NULL THEN
                -- Rows are not copied: say so when a table already differs between the nodes.
                sums := '{}';
                FOR i IN 1..cardinality(ids) LOOP
                    sums := sums || mm_conflict._remote_run(conns[i], step.command, true);
                END LOOP;
                IF NOT repair AND (SELECT count(DISTINCT s) FROM unnest(sums) s) > 1 THEN
                    PERFORM mm_conflict._warn(jsonb_build_object('error', 'tables_differ', 'table', step.compare_table));
                END IF;
                CONTINUE;
            END IF;
            PERFORM mm_conflict._remote_run(conns[step.node], step.command, step.command_is_query);
            done := done || to_jsonb(step);
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
        -- Undo what this call did, newest first; what existed before stays.
        FOR k IN REVERSE cardinality(done)..1 LOOP
            CONTINUE WHEN done[k]->>'undo' IS NULL;
            BEGIN
                u_msg := mm_conflict._remote_run(conns[(done[k]->>'node')::int], done[k]->>'undo',
                                                 (done[k]->>'undo_is_query')::boolean);
                undone := undone || (done[k]->>'undo_name');
                IF u_msg IS NOT NULL THEN
                    not_undone := not_undone || u_msg;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS u_msg = MESSAGE_TEXT;
                not_undone := not_undone || format('%s (%s)', done[k]->>'undo_name', u_msg);
            END;
        END LOOP;
        FOR i IN 1..cardinality(conns) LOOP
            BEGIN
                PERFORM mm_conflict._disconnect(conns[i]);
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
        SELECT * INTO failure
          FROM mm_conflict._create_mesh_failure(node_label, step_name, e_msg, e_detail, undone, not_undone);
        PERFORM mm_conflict._raise(e_state, failure.message, failure.detail, e_hint);
    END;
    -- Rows that existed before: each key's winning version written on every node, from the first
    -- node (the mesh stands; a failure here leaves it, and repair() can be run again).
    IF repair THEN
        FOR i IN 1..cardinality(tnames) LOOP
            PERFORM mm_conflict._notice(jsonb_build_object('error', 'mesh_repaired', 'table', tnames[i],
                'keys', mm_conflict._remote_value(conns[1],
                            format('SELECT mm_conflict.repair(%L::regclass)', tnames[i]))::bigint));
        END LOOP;
    END IF;
    FOR i IN 1..cardinality(conns) LOOP
        PERFORM mm_conflict._disconnect(conns[i]);
    END LOOP;
END
$$;

