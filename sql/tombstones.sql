-- Versioned deletes. A local DELETE through mm_resolve records the deleted key's version here, in
-- the same transaction; the table is replicated with the user tables (add it to the publication),
-- so every node learns of the delete and resolves it against its own row.
CREATE TABLE mm_conflict.tombstone (
    table_name       text        NOT NULL,  -- quote_ident(schema) || '.' || quote_ident(table), never an OID
    pk               bytea       NOT NULL,  -- the primary key: per column, 4-byte length + binary send output
    criterion        timestamptz,           -- the delete's version: criterion value,
    mm_last_stattime timestamptz,           --   wall-clock stamp,
    mm_nodeid        smallint,              --   origin node;
    mm_last_xacttime timestamptz,           -- its transaction stamp (a later write is stamped above it)
    order_last       boolean     NOT NULL,  -- the table's order: last (true) or first,
    order_winner     smallint,              --   winning node (criterion nodeid),
    order_preferred  smallint,              --   preferred node
    deleted_at       timestamptz NOT NULL DEFAULT now(),  -- when the delete happened (for retention)
    PRIMARY KEY (table_name, pk)
);
COMMENT ON TABLE mm_conflict.tombstone IS
    'mm_conflict: versioned deletes (tombstones), replicated; purge with mm_conflict.purge_tombstones()';

CREATE TRIGGER tombstone_resolve BEFORE INSERT OR UPDATE OR DELETE ON mm_conflict.tombstone
    FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_resolve();
ALTER TABLE mm_conflict.tombstone ENABLE ALWAYS TRIGGER tombstone_resolve;
CREATE TRIGGER tombstone_settle AFTER INSERT OR UPDATE ON mm_conflict.tombstone
    FOR EACH ROW EXECUTE FUNCTION mm_conflict.tombstone_settle();
ALTER TABLE mm_conflict.tombstone ENABLE ALWAYS TRIGGER tombstone_settle;

-- These two fire only on mm_conflict.tombstone (firing does not check EXECUTE; attaching does):
-- no other role may attach them to a table of its own.
REVOKE EXECUTE ON FUNCTION mm_conflict.tombstone_resolve() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mm_conflict.tombstone_settle() FROM PUBLIC;

-- Tombstones are data: keep them in dumps.
SELECT pg_catalog.pg_extension_config_dump('mm_conflict.tombstone', '');

-- Removes tombstones older than the retention, on this node only (peers skip replicated deletes
-- of tombstones). A tombstone is still needed while a change made before it may arrive: so the
-- cut-off never passes what every subscription that carries tombstones has applied. With
-- mm_conflict in shared_preload_libraries that is the peer's commit time of the last transaction
-- applied from it (mm_conflict._applied_until(): peers send in commit order, so everything they
-- committed before it is here); nothing is purged for a subscription that applied nothing since
-- the server started. Without it, the send time of the last message received from the peer
-- (pg_stat_subscription, where keepalives move it even while the peer is behind), and nothing is
-- purged while such a subscription has no running worker. Only leader apply workers count: from
-- PostgreSQL 16 on, parallel apply workers have rows of their own (with a leader_pid).
CREATE FUNCTION mm_conflict.purge_tombstones(retention interval DEFAULT NULL)
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
