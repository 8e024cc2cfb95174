#!/usr/bin/env bash
# The upgrade test: installs the previous release (0.1.0, built from git) into the system
# PostgreSQL 15, sets up a node with a replicated table, tombstones, a peer and conflict_log rows,
# installs this build, runs ALTER EXTENSION mm_conflict UPDATE, checks that the data is there and
# works, and compares the upgraded extension's catalog with a fresh install's (functions, tables,
# columns, views, constraints, indexes, triggers, comments, privileges: no difference).
#
# Leaves this build installed. Usage: scripts/upgrade_test.sh (called by scripts/test.sh, tier 3);
# with MM_UPGRADE_DEB=<package>, the new version is installed from that Debian package.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

FROM_VERSION=0.1.0
# The commit tagged v0.1.0 (CI clones carry the history, not always the tags).
FROM_COMMIT=5a1a5c499b0843aced2336ee0e5b285eea2c95d3
TO_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
WORK="$ROOT/target/upgrade"

log "upgrade test: $FROM_VERSION (commit ${FROM_COMMIT:0:7}) -> $TO_VERSION"
rm -rf "$WORK/src-$FROM_VERSION"
mkdir -p "$WORK/src-$FROM_VERSION"
git -C "$ROOT" archive "$FROM_COMMIT" | tar -x -C "$WORK/src-$FROM_VERSION"

# A target directory of its own: a cdylib's file name carries no hash, so a shared one would
# leave the old library where cargo expects the new one.
if is_root; then sudo_flag=(); else sudo_flag=(--sudo); fi
(cd "$WORK/src-$FROM_VERSION" &&
    CARGO_TARGET_DIR="$WORK/target" cargo pgrx install "${sudo_flag[@]}" --pg-config "$PG_CONFIG" >/dev/null)

trap stop_started_clusters EXIT
port="$(free_port 25460)"
rm -rf "$CLUSTER_ROOT/upgrade"
start_cluster upgrade "$port"
sql() { psql_at "$port" -Atq "$@"; }

log "set up a node with $FROM_VERSION"
sql -c "CREATE EXTENSION mm_conflict VERSION '$FROM_VERSION' CASCADE" \
    -c "SELECT mm_conflict.node_init(1, 'one')" \
    -c "CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp)" \
    -c "CREATE TABLE \"order\"(id int PRIMARY KEY, info text)" \
    -c "SELECT mm_conflict.replicate_table('mm')" \
    -c "SELECT mm_conflict.replicate_table('\"order\"')" \
    -c "INSERT INTO mm(id, info) SELECT g, 'row ' || g FROM generate_series(1, 10) g" \
    -c "INSERT INTO \"order\"(id, info) VALUES (1, 'a'), (2, 'b')" \
    -c "DELETE FROM mm WHERE id <= 3" \
    -c "DELETE FROM \"order\" WHERE id = 1" \
    -c "INSERT INTO mm_conflict.peer VALUES (2, 'two', 'mm_conflict_2_to_1')" \
    -c "SET mm_conflict.log_conflicts = 'table'" \
    -c "SELECT pg_replication_origin_create('upgrade_peer')" \
    -c "SELECT pg_replication_origin_session_setup('upgrade_peer')" \
    -c "INSERT INTO mm VALUES (5, 'older from 2', now(), true, 2, '2000-01-01', '2000-01-01')" \
    -c "UPDATE mm SET info = 'newer from 2', mm_nodeid = 2, mm_last_xacttime = '2100-01-01',
               mm_last_stattime = '2100-01-01' WHERE id = 6" \
    -c "SELECT pg_replication_origin_session_reset()"

# Everything a node keeps, in one text.
snapshot() {
    sql -c "SELECT 'node ' || node_id || ' ' || node_name FROM mm_conflict.node
            UNION ALL SELECT 'peer ' || node_id || ' ' || node_name || ' ' || subscription FROM mm_conflict.peer
            UNION ALL SELECT 'tombstone ' || encode(pk, 'hex') || ' ' || criterion || ' ' || mm_nodeid
                      FROM mm_conflict.tombstone WHERE table_name = 'public.mm'
            UNION ALL SELECT 'conflict ' || decision || ' ' || (key->>'id') || ' ' || coalesce(stored_node, 0)
                             || ' ' || incoming_node FROM mm_conflict.conflict_log
            UNION ALL SELECT 'rows ' || count(*) || ' ' || mm_conflict.table_checksum('mm') FROM mm
            ORDER BY 1"
}
before="$(snapshot)"
[ "$(sql -c "SELECT count(*) FROM mm_conflict.tombstone") $(sql -c "SELECT count(*) FROM mm_conflict.conflict_log")" = "4 2" ] ||
    die "the $FROM_VERSION node was not set up as expected"
# 0.1.0 named a table whose name is a keyword with quotes.
[ "$(sql -c "SELECT DISTINCT table_name FROM mm_conflict.tombstone WHERE table_name LIKE '%order%'")" = 'public."order"' ] ||
    die "0.1.0 named the keyword table unlike expected"
stop_started_clusters

if [ -n "${MM_UPGRADE_DEB:-}" ]; then
    # The package test: the new version from its Debian package (over the files of the old one).
    log "install $TO_VERSION from $(basename "$MM_UPGRADE_DEB") and ALTER EXTENSION mm_conflict UPDATE"
    as_root dpkg -i "$MM_UPGRADE_DEB" >/dev/null
else
    log "install $TO_VERSION and ALTER EXTENSION mm_conflict UPDATE"
    install_extension >/dev/null
fi
start_cluster upgrade "$port"
sql -c "ALTER EXTENSION mm_conflict UPDATE"
[ "$(sql -c "SELECT extversion FROM pg_extension WHERE extname = 'mm_conflict'")" = "$TO_VERSION" ] ||
    die "the extension is not at $TO_VERSION after the update"
after="$(snapshot)"
[ "$before" = "$after" ] || die "the data changed in the update:
--- before
$before
--- after
$after"
[ "$(sql -c "SELECT DISTINCT table_name FROM mm_conflict.tombstone WHERE table_name LIKE '%order%'")" = 'public.order' ] ||
    die "the keyword table's tombstone was not renamed to its stable name"

log "the upgraded node works"
# A re-insert of a deleted key is stamped above its tombstone; a delete records a tombstone; a
# replicated insert older than a tombstone loses; the views and the mesh functions answer.
sql -c "INSERT INTO mm(id, info) VALUES (1, 'again')" \
    -c "DELETE FROM mm WHERE id = 4" \
    -c "DELETE FROM \"order\" WHERE id = 2" \
    -c "SELECT pg_replication_origin_session_setup('upgrade_peer')" \
    -c "INSERT INTO mm VALUES (2, 'late and older', now(), true, 2, '2000-01-01', '2000-01-01')" \
    -c "SELECT pg_replication_origin_session_reset()" >/dev/null
got="$(sql -c "SELECT string_agg(id::text, ',' ORDER BY id) FROM mm")"
[ "$got" = "1,5,6,7,8,9,10" ] || die "after the update the table holds $got"
[ "$(sql -c "SELECT count(*) FROM mm_conflict.tombstone")" = 6 ] || die "tombstones after the update"
sql -c "SELECT count(*) FROM mm_conflict.status" -c "SELECT count(*) FROM mm_conflict.replicated_tables" \
    -c "SELECT count(*) FROM mm_conflict.conflict_stats" -c "SELECT mm_conflict.this_node()" >/dev/null
# table_diff's buckets see the table's rows (7), and repair on a node without peers has nothing to do.
[ "$(sql -c "SELECT sum(rows) FROM mm_conflict._diff_summary('mm', 8, '{0}')") $(sql -c "SELECT mm_conflict.repair('mm')")" = "7 0" ] ||
    die "table_diff's summary or repair does not work after the update"

# Every object of the extension and how it is defined.
catalog() {
    psql_db "$port" "$1" -Atq -c "
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'mm_conflict'),
members AS (SELECT d.classid, d.objid FROM pg_depend d, ext
             WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (SELECT objid AS oid FROM members WHERE classid = 'pg_class'::regclass)
SELECT 'function ' || p.oid::regprocedure || ' -> ' || pg_get_function_result(p.oid) || ' ' || l.lanname
       || ' ' || p.provolatile::text || p.proisstrict::text || ' ' || p.prosrc || ' ' || coalesce(p.probin, '')
       || ' config ' || coalesce(array_to_string(p.proconfig, ','), '')
       || ' acl ' || coalesce(p.proacl::text, '') || ' args ' || coalesce(pg_get_function_arguments(p.oid), '')
       || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '')
       || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
  FROM pg_class c JOIN rels r ON r.oid = c.oid
UNION ALL
SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || ' identity ' || a.attidentity::text
  FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid IN (SELECT oid FROM rels)
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM rels)
UNION ALL
SELECT 'view ' || c.oid::regclass || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c JOIN rels r ON r.oid = c.oid WHERE c.relkind = 'v'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
  FROM pg_trigger t WHERE t.tgrelid IN (SELECT oid FROM rels) AND NOT t.tgisinternal
UNION ALL
SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regprocedure
       || ' ' || e.evtenabled::text || ' tags ' || coalesce(array_to_string(e.evttags, ','), '')
  FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
UNION ALL
SELECT 'dumped ' || unnest(extconfig)::regclass FROM pg_extension WHERE extname = 'mm_conflict'
UNION ALL
SELECT 'schema ' || n.nspname || ' comment ' || coalesce(obj_description(n.oid, 'pg_namespace'), '')
  FROM pg_namespace n JOIN members m ON m.classid = 'pg_namespace'::regclass AND m.objid = n.oid
ORDER BY 1"
}

log "compare the upgraded catalog with a fresh install's"
sql -c "CREATE DATABASE mm_fresh"
psql_db "$port" mm_fresh -q -c "CREATE EXTENSION mm_conflict"
mkdir -p "$WORK"
catalog postgres >"$WORK/upgraded.txt"
catalog mm_fresh >"$WORK/fresh.txt"
[ -s "$WORK/fresh.txt" ] || die "the catalog query returned nothing"
if ! diff -u "$WORK/fresh.txt" "$WORK/upgraded.txt" >"$WORK/catalog.diff"; then
    cat "$WORK/catalog.diff"
    die "the upgraded catalog differs from a fresh install's (diff above: - fresh, + upgraded)"
fi
log "upgrade $FROM_VERSION -> $TO_VERSION: data kept, node works, catalog identical to a fresh install ($(wc -l <"$WORK/fresh.txt") objects and properties compared)"
