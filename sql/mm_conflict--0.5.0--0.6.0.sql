-- mm_conflict 0.5.0 -> 0.6.0
--
-- What changes: add_node() and remove_node() (Rust: their plans in core/src/membership.rs,
-- their runs in src/mesh/add.rs and src/mesh/remove.rs), and remove_node's catch-up wait
-- _wait_for_peers(); wait_for_sync(), drop_mesh() (its plan in core/src/membership.rs too) and
-- its helpers _drop_local_slots(), _unsubscribe() and _unsubscribe_all() become Rust, with the
-- same signatures and results; the PL/pgSQL helper _on_peers() goes; the view status gains
-- retained_wal_bytes, wal_status and peer_down_since, and its problem column reports lost slots
-- and peers gone longer than mm_conflict.peer_down_after. Data is kept as it is.
--
-- Made with scripts/upgrade_sql.py from the 0.6.0 schema:
--   scripts/upgrade_sql.py SCHEMA pgrx:wait_for_sync pgrx:_wait_for_peers pgrx:remove_node pgrx:add_node \
--     pgrx:_drop_local_slots pgrx:drop_mesh pgrx:_unsubscribe pgrx:_unsubscribe_all
-- plus the DROP statements and the view (sql/mesh.sql) by hand.

\echo Use "ALTER EXTENSION mm_conflict UPDATE TO '0.6.0'" to load this file. \quit

DROP FUNCTION mm_conflict.wait_for_sync(interval);
DROP FUNCTION mm_conflict._drop_local_slots(smallint);
DROP FUNCTION mm_conflict.drop_mesh(boolean);
DROP FUNCTION mm_conflict._on_peers(integer[], text[], text);
DROP FUNCTION mm_conflict._unsubscribe_all();
DROP FUNCTION mm_conflict._unsubscribe(integer);

CREATE FUNCTION mm_conflict."wait_for_sync"(
	"timeout" interval DEFAULT '60 seconds' /* Option < pgrx :: datum :: Interval > */
) RETURNS bool /* bool */
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wait_for_sync_wrapper';

CREATE FUNCTION mm_conflict."_wait_for_peers"(
	"peers" bigint[], /* :: std :: option :: Option < Vec < Option < i64 > > > */
	"timeout" interval /* Option < pgrx :: datum :: Interval > */
) RETURNS bool /* bool */
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_wait_for_peers_wrapper';

CREATE FUNCTION mm_conflict."remove_node"(
	"node_id" INT, /* Option < i32 > */
	"force" bool DEFAULT false, /* Option < bool > */
	"timeout" interval DEFAULT '5 minutes' /* Option < pgrx :: datum :: Interval > */
) RETURNS TABLE (
	"node" INT,  /* i32 */
	"removed" bool,  /* bool */
	"detail" TEXT  /* String */
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'remove_node_wrapper';


CREATE FUNCTION mm_conflict."add_node"(
	"node_id" INT, /* Option < i32 > */
	"conninfo" TEXT, /* Option < & str > */
	"copy_from" INT DEFAULT NULL, /* Option < i32 > */
	"node_name" TEXT DEFAULT NULL, /* Option < & str > */
	"timeout" interval DEFAULT '1 hour' /* Option < pgrx :: datum :: Interval > */
) RETURNS TABLE (
	"node" INT,  /* i32 */
	"step" TEXT  /* String */
)
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_node_wrapper';


CREATE FUNCTION mm_conflict."_drop_local_slots"(
	"me" smallint /* i16 */
) RETURNS TEXT[] /* Vec < String > */
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_drop_local_slots_wrapper';


CREATE FUNCTION mm_conflict."drop_mesh"(
	"everywhere" bool DEFAULT false /* Option < bool > */
) RETURNS void
VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_mesh_wrapper';


CREATE FUNCTION mm_conflict."_unsubscribe"(
	"peer_node_id" INT /* i32 */
) RETURNS TEXT /* Option < String > */
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_unsubscribe_wrapper';

CREATE FUNCTION mm_conflict."_unsubscribe_all"() RETURNS TEXT[] /* Vec < String > */
STRICT VOLATILE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_unsubscribe_all_wrapper';


CREATE OR REPLACE VIEW mm_conflict.status AS
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
