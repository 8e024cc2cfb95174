#!/usr/bin/env bash
# The main job: installs what is missing, builds and installs mm_conflict into the system
# PostgreSQL 15, then starts a local cluster, creates the extension, shows mm_resolve at work on the
# article's table (stamping, resolution, a versioned delete), and stops the cluster (also when a
# step fails).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
ensure_deps
install_extension

trap stop_started_clusters EXIT
port="$(free_port 55440)"
rm -rf "$CLUSTER_ROOT/demo1"
log "starting a cluster on port $port"
start_cluster demo1 "$port"

psql_at "$port" <<'SQL'
\pset footer off
CREATE EXTENSION mm_conflict CASCADE;
SELECT extversion AS "mm_conflict version" FROM pg_extension WHERE extname = 'mm_conflict';
-- The article's table, unchanged, with mm_resolve in place of its plpgsql trigger.
CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp,
                mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp);
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 2);
ALTER TABLE mm ENABLE ALWAYS TRIGGER mm_resolve;
INSERT INTO mm(id, info, mod_time) VALUES (1, 'written here', now());
-- A change arriving from node 2 (as an apply worker would apply it), newer than ours:
SELECT pg_replication_origin_create('demo_peer_2') > 0 AS origin_created \gset
SELECT pg_replication_origin_session_setup('demo_peer_2');
INSERT INTO mm VALUES (1, 'from node 2, newer', now(), true, 2, now() + interval '1 second', clock_timestamp());
-- ... and an older one, which loses:
INSERT INTO mm VALUES (1, 'from node 2, older', now(), true, 2, '2000-01-01', '2000-01-01');
SELECT pg_replication_origin_session_reset();
\echo 'node 1 keeps the newest version, without a duplicate-key error:'
SELECT id, info, mm_islocal, mm_nodeid FROM mm;
-- A delete is a versioned write: it leaves a tombstone, which a late, older insert does not beat.
DELETE FROM mm WHERE id = 1;
SELECT table_name, encode(pk, 'hex') AS pk, mm_nodeid FROM mm_conflict.tombstone;
SELECT pg_replication_origin_session_setup('demo_peer_2');
INSERT INTO mm VALUES (1, 'late insert from node 2', now(), true, 2, now(), clock_timestamp());
SELECT pg_replication_origin_session_reset();
\echo 'the late insert did not bring the deleted row back:'
SELECT count(*) AS rows_with_id_1 FROM mm WHERE id = 1;
SQL
log "demo done; stopping the cluster"
