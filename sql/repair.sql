-- Verify and repair: table_diff (where this node and a peer differ) and repair (the winning
-- versions written again on every node that lacks them) are Rust: src/verify/ runs the plans of
-- core/src/diff.rs and core/src/repair.rs over dblink (src/mesh/remote.rs, with the connection
-- helpers of sql/mesh.sql). What is left here: the list of peers and table_diff's ordering.

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

-- The keys whose rows differ between this node and a peer, in key order (src/verify/compare.rs
-- finds and judges them).
CREATE FUNCTION mm_conflict.table_diff(tbl regclass, peer_node_id integer)
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

REVOKE EXECUTE ON FUNCTION mm_conflict._repair_apply(regclass, text, boolean) FROM PUBLIC;
