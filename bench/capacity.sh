#!/usr/bin/env bash
# What a mesh can absorb: the highest write rate each configuration sustains. Every node offers
# transactions at a fixed rate with pgbench --rate (CLIENTS clients, STEP_SECONDS per step); each
# transaction inserts a new row, updates the row inserted 100 transactions earlier and deletes the
# one inserted 1000 earlier (3 row writes; keys are node-safe, so no two nodes ever write the same
# key and no configuration meets a conflict). The rate per node starts at START_RATE and doubles
# until a step fails, then is bisected REFINE times between the last step that held and the first
# that failed. A step holds when
#   - every node's pgbench completed at least 90% of the offered rate, with an average schedule
#     lag (pgbench's "rate limit schedule lag") of at most 100 ms: the node itself keeps up; and
#   - on a mesh, replication lag stayed bounded: once the load ends, every node inserts a marker
#     row, and every marker is on every node at most STEP_SECONDS/20 (1 s for 20 s steps) later
#     than a marker round takes on the idle mesh. An apply that falls behind by more than 5% of
#     the offered rate leaves a backlog longer than that.
# Configurations (CONFIGS, space-separated, default all that this major can run):
#   single:none single:floor single:mm_resolve   one node, no replication: the physical limit with
#                                                no trigger, the C floor (insert_username), mm_resolve
#   mesh:none mesh:floor                         3 nodes, full mesh by hand, subscriptions with
#                                                origin = none (PostgreSQL 16+; without it changes
#                                                loop), no trigger or the C floor, ENABLE ALWAYS, in
#                                                mm_resolve's role
#   mesh:mm_resolve                              3 nodes built by one create_mesh call (dblink)
#   mesh:mm_resolve-no-relay                     not run unless named: mm_resolve's triggers on 3
#                                                nodes meshed by hand with origin = none (16+), the
#                                                tombstone table published too. Not a set-up to use
#                                                (no node relays what it applied, so a change one
#                                                node missed never reaches it by another): it
#                                                shows what the relayed copies cost a mesh
# All nodes share this machine's cores: a mesh's rate per node is what one third of the machine
# gives while it also applies the other two nodes' writes.
# Measures whatever build is installed: install a release build first.
#
# Usage: [CONFIGS="..."] STEP_SECONDS=20 START_RATE=100 REFINE=3 bash bench/capacity.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
STEP_SECONDS="${STEP_SECONDS:-20}"
START_RATE="${START_RATE:-100}"
REFINE="${REFINE:-3}"
CLIENTS="${CLIENTS:-2}"
MAX_DRAIN_MS=$((STEP_SECONDS * 1000 / 20))
trap stop_started_clusters EXIT

has_contrib() { [ -f "$("$PG_CONFIG" --sharedir)/extension/$1.control" ]; }
why_not() { # CONFIG: why this major cannot run CONFIG (nothing when it can)
    case "$1" in
        *:floor) has_contrib insert_username || { echo "no contrib (insert_username) in this build"; return; } ;;
    esac
    case "$1" in
        mesh:none | mesh:floor | mesh:mm_resolve-no-relay) [ "$PG_MAJOR" -ge 16 ] || echo "needs origin = none (PostgreSQL 16+): without it every change loops" ;;
        mesh:mm_resolve) has_dblink || echo "create_mesh needs dblink, which this build lacks" ;;
    esac
}
if [ -z "${CONFIGS:-}" ]; then
    CONFIGS=""
    for c in single:none single:floor single:mm_resolve mesh:none mesh:floor mesh:mm_resolve; do
        reason="$(why_not "$c")"
        if [ -n "$reason" ]; then echo "skipping $c on PostgreSQL $PG_MAJOR: $reason"; else CONFIGS+=" $c"; fi
    done
fi

TABLE_SQL="CREATE TABLE cap(id bigint PRIMARY KEY, info text, mm_islocal boolean, mm_nodeid int2,
    mm_last_xacttime timestamptz, mm_last_stattime timestamptz); CREATE SEQUENCE cap_ids;"
BASE=1000000000000 # node i's keys are i * BASE + n; markers are negative

# setup CONFIG: fresh clusters for CONFIG, the table on each, the trigger and the mesh. Sets PORTS.
setup() {
    local shape="${1%%:*}" variant="${1#*:}" count=1 i j tables=cap
    variant="${variant%-no-relay}"
    [ "$1" = mesh:mm_resolve-no-relay ] && tables="cap, mm_conflict.tombstone"
    [ "$shape" = mesh ] && count=3
    stop_started_clusters
    start_fresh_clusters bench_capacity "$count" 25490
    PORTS=("${CLUSTER_PORTS[@]}")
    for i in "${!PORTS[@]}"; do
        { echo "$TABLE_SQL"; [ "$1" = mesh:mm_resolve ] || variant_sql "$variant" $((i + 1)) cap; } |
            psql_at "${PORTS[$i]}" -q
    done
    if [ "$1" = mesh:mm_resolve ]; then
        for i in "${!PORTS[@]}"; do psql_at "${PORTS[$i]}" -q -c "CREATE EXTENSION mm_conflict" -c "CREATE EXTENSION dblink"; done
        psql_at "${PORTS[0]}" -q -c "SELECT mm_conflict.create_mesh('$(mesh_nodes_json "${PORTS[@]}")', ARRAY['cap']::regclass[], 'last_xacttime', 'last')"
    elif [ "$shape" = mesh ]; then
        for i in "${!PORTS[@]}"; do psql_at "${PORTS[$i]}" -q -c "CREATE PUBLICATION cap FOR TABLE $tables"; done
        for i in "${!PORTS[@]}"; do
            for j in "${!PORTS[@]}"; do
                [ "$i" = "$j" ] && continue
                psql_at "${PORTS[$i]}" -q -c "CREATE SUBSCRIPTION cap_$((i + 1))_from_$((j + 1)) CONNECTION 'host=127.0.0.1 port=${PORTS[$j]} user=postgres dbname=postgres'
                    PUBLICATION cap WITH (origin = none, copy_data = false)"
            done
        done
    fi
    for i in "${!PORTS[@]}"; do
        cat >"$CLUSTER_ROOT/bench_capacity$((i + 1))/load.sql" <<EOF
BEGIN;
INSERT INTO cap(id, info) VALUES (nextval('cap_ids') + $(((i + 1) * BASE)), 'capacity') RETURNING id AS k \gset
UPDATE cap SET info = info || '+' WHERE id = :k - 100;
DELETE FROM cap WHERE id = :k - 1000;
COMMIT;
EOF
    done
    MARKER=0
    wait_markers # the subscriptions are up and replicating before the first step
    # What a marker round takes on the idle mesh (the least of three): a step's drain is
    # compared with it.
    IDLE_MS=1000000
    for _ in 1 2 3; do
        wait_markers
        [ "$DRAIN_MS" -ge "$IDLE_MS" ] || IDLE_MS="$DRAIN_MS"
    done
}

# wait_markers: every node inserts a marker row, all at once; then every node waits, in one
# statement, until it holds every marker. Sets DRAIN_MS (from the first insert), or fails after 600 s.
wait_markers() {
    local start i want=${#PORTS[@]} pids=() low high
    MARKER=$((MARKER + 1))
    low=$((MARKER * 10 + 1)) high=$((MARKER * 10 + 9))
    start="$(ms)"
    for i in "${!PORTS[@]}"; do
        psql_at "${PORTS[$i]}" -q -c "INSERT INTO cap(id, info) VALUES (-$((MARKER * 10 + i + 1)), 'marker')" &
        pids+=($!)
    done
    for i in "${!PORTS[@]}"; do
        wait "${pids[$i]}" || return 1
    done
    pids=()
    for i in "${!PORTS[@]}"; do
        psql_at "${PORTS[$i]}" -q -c "SET statement_timeout = '600s'" -c "DO \$\$ BEGIN
            WHILE (SELECT count(*) FROM cap WHERE id BETWEEN -$high AND -$low) < $want LOOP
                PERFORM pg_sleep(0.005);
            END LOOP; END \$\$" &
        pids+=($!)
    done
    for i in "${!PORTS[@]}"; do
        wait "${pids[$i]}" || { echo "the markers of round $MARKER did not all reach the node on port ${PORTS[$i]} in 600 s" >&2; return 1; }
    done
    DRAIN_MS=$(($(ms) - start))
}

# step RATE: offers RATE transactions/s on every node for STEP_SECONDS; true when the step holds.
step() {
    local rate="$1" i pids=() out tps lag ok=1 tpss=() lags=()
    for i in "${!PORTS[@]}"; do
        out="$CLUSTER_ROOT/bench_capacity$((i + 1))/pgbench.out"
        "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "${PORTS[$i]}" -c "$CLIENTS" -j "$CLIENTS" \
            -R "$rate" -T "$STEP_SECONDS" -f "$CLUSTER_ROOT/bench_capacity$((i + 1))/load.sql" postgres >"$out" 2>&1 &
        pids+=($!)
    done
    for i in "${!PORTS[@]}"; do
        out="$CLUSTER_ROOT/bench_capacity$((i + 1))/pgbench.out"
        wait "${pids[$i]}" || { tail -5 "$out" >&2; return 2; }
        tps="$(awk '/^tps = / {print $3; exit}' "$out")"
        lag="$(awk '/rate limit schedule lag/ {print $6; exit}' "$out")"
        tpss+=("$tps"); lags+=("$lag")
        python3 -c "import sys; sys.exit(0 if $tps >= 0.9 * $rate and $lag <= 100 else 1)" || ok=0
    done
    DRAIN_MS=0
    if [ "${#PORTS[@]}" -gt 1 ]; then
        wait_markers || return 2
        [ "$DRAIN_MS" -le $((IDLE_MS + MAX_DRAIN_MS)) ] || ok=0
    fi
    local replication="no replication"
    [ "${#PORTS[@]}" -gt 1 ] && replication="markers everywhere after $DRAIN_MS ms (idle $IDLE_MS)"
    printf '  %-24s %6d/s per node: tps %s; schedule lag ms %s; %s: %s\n' \
        "$CONFIG" "$rate" "$(printf '%.0f ' "${tpss[@]}")" "$(printf '%.1f ' "${lags[@]}")" "$replication" \
        "$([ "$ok" = 1 ] && echo holds || echo fails)"
    [ "$ok" = 1 ]
}

results="$(mktemp)"
for CONFIG in $CONFIGS; do
    setup "$CONFIG"
    good=0 rate="$START_RATE" bad=""
    while true; do
        if step "$rate"; then good="$rate"; rate=$((rate * 2)); else [ $? = 1 ] || exit 1; bad="$rate"; break; fi
        [ "$rate" -le 1000000 ] || break
    done
    for _ in $(seq "$REFINE"); do
        [ -n "$bad" ] && [ $((bad - good)) -gt 1 ] || break
        rate=$(((good + bad) / 2))
        if step "$rate"; then good="$rate"; else [ $? = 1 ] || exit 1; bad="$rate"; fi
    done
    echo "$CONFIG $good ${#PORTS[@]} ${bad:-none}" >>"$results"
done
stop_started_clusters

python3 - "$results" "$STEP_SECONDS" "$CLIENTS" "$PG_MAJOR" <<'PY'
import sys
path, step, clients, major = sys.argv[1:5]
rows = [line.split() for line in open(path)]
best = {config: int(good) for config, good, _, _ in rows}
print(f"highest sustained rate, PostgreSQL {major} (transactions/s of 1 INSERT + 1 UPDATE + 1 DELETE, "
      f"{step} s steps, {clients} clients per node; writes/s = 3x; ratio to one node without trigger"
      f"{', and to the C floor in the same role' if any(c.endswith(':floor') for c in best) else ''}):")
for config, good, nodes, bad in rows:
    good, nodes = int(good), int(nodes)
    shape = config.split(":")[0]
    base = best.get("single:none")
    floor = best.get(f"{shape}:floor")
    to_base = f"  {nodes * good / base:5.2f}x" if base else ""
    to_floor = f"  {good / floor:5.2f}x floor" if floor and not config.endswith(":floor") else ""
    print(f"  {config:24} {good:7d} per node {nodes * good:7d} in all (first failing: {bad}/node){to_base}{to_floor}")
PY
rm -f "$results"
