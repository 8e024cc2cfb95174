#!/usr/bin/env bash
# The live demo (README command 1): installs what is missing, builds and installs mm_conflict into
# the system PostgreSQL 15, starts 3 local clusters, builds the mesh with one create_mesh call, runs
# the article's workload on all three at once (progress every second: per-node tps and replication
# lag) with a schema change from node 2 halfway through (mm_conflict.replicate_ddl), waits for
# sync, and prints each node's row count and checksum, the conflict counters of
# each node, and what table_diff finds between node 1 and the others, with a verdict. The clusters
# are stopped at the end (also when a step fails) unless --keep is given.
#
# Usage: bash scripts/demo.sh [--keep] [--seconds N]      (default 30 s; or MM_DEMO_SECONDS=N)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

keep=false
seconds="${MM_DEMO_SECONDS:-30}"
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=true ;;
        --seconds) seconds="$2"; shift ;;
        *) echo "usage: $0 [--keep] [--seconds N]" >&2; exit 2 ;;
    esac
    shift
done

ensure_deps
# The release build: what the demo shows is what the extension really costs.
install_extension --release

if ! $keep; then trap stop_started_clusters EXIT; fi
start_fresh_clusters demo 3 25440
ports=("${CLUSTER_PORTS[@]}")
log "3 clusters on ports ${ports[*]}"

# The article's table, unchanged, on every node.
for p in "${ports[@]}"; do psql_at "$p" -c "$ARTICLE_TABLE_SQL"; done
nodes="$(mesh_nodes_json "${ports[@]}")"
log "one call on node 1: mm_conflict.create_mesh(...)"
# create_mesh reaches the nodes through dblink, which it needs here first (in a transaction of
# its own); it creates the extension on the other nodes itself.
psql_at "${ports[0]}" -c "CREATE EXTENSION mm_conflict" -c "CREATE EXTENSION dblink" \
    -c "SELECT mm_conflict.create_mesh('$nodes', ARRAY['mm']::regclass[], 'last_xacttime', 'last', 2)"
psql_at "${ports[0]}" -c "SELECT node_id, node_name, subscription, peer_slot FROM mm_conflict.status"

log "running the article's workload (test1/2/3.sql, 2 clients each) on the three nodes for $seconds s"
start_article_load "$seconds" demo "${ports[@]}" -P 1
pids=("${LOAD_PIDS[@]}")
# Halfway through, a schema change from node 2 in one call, while every node writes.
(sleep $((seconds / 2)); psql_at "${ports[1]}" -Atc "SELECT node || ': ' || detail FROM mm_conflict.replicate_ddl(
    'ALTER TABLE mm ADD COLUMN note text NOT NULL DEFAULT ''added under load''')" \
    >"$CLUSTER_ROOT/demo2/ddl.out" 2>&1) &
ddl_pid=$!

# pgbench -P 1 reports each second's tps; the lag is the WAL a node's peers have not confirmed.
tps_of() { grep -o 'progress: [0-9.]* s, [0-9.]* tps' "$CLUSTER_ROOT/demo$1/pgbench.out" 2>/dev/null | tail -1 | awk '{print $4}' | grep . || echo -; }
lag() { psql_at "$1" -Atc "SELECT coalesce(max(lag_bytes), 0) FROM mm_conflict.status"; }
printf '%6s  %-24s  %-32s\n' "time" "tps node1/node2/node3" "lag bytes node1/node2/node3"
load_start=$SECONDS
while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null || kill -0 "${pids[2]}" 2>/dev/null; do
    sleep 0.5   # the three status queries take about as long again
    printf '%5ss  %-24s  %-32s\n' "$((SECONDS - load_start))" "$(tps_of 1)/$(tps_of 2)/$(tps_of 3)" \
        "$(lag "${ports[0]}")/$(lag "${ports[1]}")/$(lag "${ports[2]}")"
done
for i in 0 1 2; do
    wait "${pids[$i]}" || { log "pgbench on node$((i + 1)) failed:"; tail -5 "$CLUSTER_ROOT/demo$((i + 1))/pgbench.out"; exit 1; }
done

wait "$ddl_pid" || true
log "halfway through, node2 changed the schema of every node: mm_conflict.replicate_ddl('ALTER TABLE mm ADD COLUMN note ...')"
cat "$CLUSTER_ROOT/demo2/ddl.out"
grep -q "changed" "$CLUSTER_ROOT/demo2/ddl.out" || { log "replicate_ddl failed"; exit 1; }
log "load done; waiting for sync (mm_conflict.wait_for_sync on every node, twice)"
start_ms="$(ms)"
sync_all "${ports[@]}" || exit 1
took_ms=$(($(ms) - start_ms))
log "synced $((took_ms / 1000)).$(printf '%03d' $((took_ms % 1000))) s after the load"

results=()
for i in 0 1 2; do
    r="$(psql_at "${ports[$i]}" -Atc "SELECT count(*) || ' rows, checksum ' || mm_conflict.table_checksum('mm') FROM mm")"
    extra="$(psql_at "${ports[$i]}" -Atc "SELECT (SELECT count(*) FROM mm_conflict.tombstone) || ' tombstones, '
        || (SELECT coalesce(sum(apply_error_count), 0) FROM pg_stat_subscription_stats) || ' apply errors'")"
    echo "node$((i + 1)): $r ($extra)"
    results+=("$r")
done
log "replicated changes each node resolved (mm_conflict.conflict_stats; conflict lines are in each server.log)"
printf '%-6s %8s %10s %10s %10s %10s %10s %10s\n' node applied kept_local converted del_appl del_skip duplicates conflicts
for i in 0 1 2; do
    printf '%-6s %8s %10s %10s %10s %10s %10s %10s\n' "node$((i + 1))" $(psql_at "${ports[$i]}" -Atc \
        "SELECT concat_ws(' ', applied, kept_local, inserts_converted, deletes_applied, deletes_skipped, duplicates_dropped, conflicts)
           FROM mm_conflict.conflict_stats WHERE table_name = 'mm'::regclass")
done
# Row by row too: mm_conflict.table_diff from node 1 to each peer (see README "Verify and repair").
diffs="$(psql_at "${ports[0]}" -Atc "SELECT (SELECT count(*) FROM mm_conflict.table_diff('mm', 2)) || ' '
                                         || (SELECT count(*) FROM mm_conflict.table_diff('mm', 3))")"
echo "table_diff from node1: ${diffs% *} keys differ with node2, ${diffs#* } with node3"
if [ "${results[0]}" = "${results[1]}" ] && [ "${results[1]}" = "${results[2]}" ] && [ "$diffs" = "0 0" ]; then
    log "VERDICT: the three nodes are identical"
else
    log "VERDICT: the nodes differ"
    exit 1
fi

if $keep; then
    log "clusters keep running; connect with:"
    for i in 0 1 2; do echo "  $PGBIN/psql -h 127.0.0.1 -p ${ports[$i]} -U postgres postgres"; done
    echo "  stop them with (as the user that runs them): $PGBIN/pg_ctl -D $CLUSTER_ROOT/demoN stop"
fi
