-- Verify and repair: table_diff (where this node and a peer differ) and the comparison repair
-- uses. How rows are hashed, bucketed, compared and written is Rust (src/verify/diff.rs), and so
-- is repair itself (src/verify/repair.rs); this carries the comparison between nodes over
-- dblink, as the mesh functions do (sql/mesh.sql: same connection helpers, same rules).

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

-- repair(tbl) and _repair_items are Rust (src/verify/repair.rs runs the planner of
-- core/src/repair.rs against this node's peers; it compares through the functions above).
COMMENT ON FUNCTION mm_conflict.repair(regclass) IS
    'mm_conflict: writes the winning version of every key that differs between nodes on every node (from this node), returns the keys repaired';

REVOKE EXECUTE ON FUNCTION mm_conflict._repair_apply(regclass, text, boolean) FROM PUBLIC;
