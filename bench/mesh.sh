#!/usr/bin/env bash
# The whole mesh, with mm_resolve (other variants cannot run a mesh: without mm_resolve changes loop
# or conflicts halt replication).
#
# Part 1: 3 nodes built with create_mesh run the article's workload (test1/2/3.sql on nodes 1/2/3,
# 2 clients each) for LOAD_SECONDS, ROUNDS times: aggregate tps, and the time from the end of the
# load until the three nodes' checksums and row counts match (polled every 0.1 s; the match is
# then confirmed after wait_for_sync on every node, twice).
# Part 2: for 2, 3, 4 and 5 nodes, every node inserts K rows in single-row transactions (distinct
# keys, no conflicts); the replication slots' decoded transactions and bytes (pg_stat_replication_slots)
# and the changes mm_resolve resolved (mm_conflict.conflict_stats) are summed over all nodes and
# divided by the N*K writes: the replicated-message volume per write.
# Measures whatever build is installed: install a release build first.
#
# Usage: ROUNDS=3 LOAD_SECONDS=30 K=2000 bash bench/mesh.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
ROUNDS="${ROUNDS:-3}"
LOAD_SECONDS="${LOAD_SECONDS:-30}"
K="${K:-2000}"
trap stop_started_clusters EXIT

start_fresh_clusters bench_mesh 5 25480
ports=("${CLUSTER_PORTS[@]}")
for p in "${ports[@]}"; do psql_at "$p" -q -c "CREATE EXTENSION mm_conflict" -c "CREATE EXTENSION dblink"; done

state() { psql_at "$1" -Atc "SELECT count(*) || ':' || mm_conflict.table_checksum('$2') FROM $2"; }
same_on() { # N TABLE: true when the first N nodes have the same rows and checksum
    local first i
    first="$(state "${ports[0]}" "$2")"
    for i in $(seq 1 $(($1 - 1))); do [ "$(state "${ports[$i]}" "$2")" = "$first" ] || return 1; done
}
first() { echo "${ports[@]:0:$1}"; } # N: the first N nodes' ports

# ---- part 1: the article's workload on 3 nodes -------------------------------------------------
for i in 0 1 2; do psql_at "${ports[$i]}" -q -c "$ARTICLE_TABLE_SQL"; done
psql_at "${ports[0]}" -q -c "SELECT mm_conflict.create_mesh('$(mesh_nodes_json $(first 3))', ARRAY['mm']::regclass[], 'last_xacttime', 'last', 2)"
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    start_article_load "$LOAD_SECONDS" bench_mesh $(first 3)
    pids=("${LOAD_PIDS[@]}")
    total=0
    for i in 0 1 2; do
        wait "${pids[$i]}" || { tail -5 "$CLUSTER_ROOT/bench_mesh$((i + 1))/pgbench.out"; exit 1; }
        tps="$(grep -o 'tps = [0-9.]*' "$CLUSTER_ROOT/bench_mesh$((i + 1))/pgbench.out" | tail -1 | cut -d' ' -f3)"
        total="$(python3 -c "print($total + $tps)")"
    done
    end="$(ms)"
    until same_on 3 mm; do sleep 0.1; done
    converged=$(($(ms) - end))
    sync_all $(first 3)
    same_on 3 mm || { echo "round $round: the nodes differ after wait_for_sync" >&2; exit 1; }
    rows="$(psql_at "${ports[0]}" -Atc "SELECT count(*) FROM mm")"
    printf 'round %s: %8.1f tps in total, checksums equal %5d ms after the load (%s rows)\n' "$round" "$total" "$converged" "$rows"
    echo "tps $total" >>"$results"
    echo "converge_ms $converged" >>"$results"
done
python3 - "$results" <<'PY'
import statistics, sys
vals = {}
for line in open(sys.argv[1]):
    k, v = line.split()
    vals.setdefault(k, []).append(float(v))
for k, label in (("tps", "aggregate tps (3 nodes)"), ("converge_ms", "ms from end of load to equal checksums")):
    v = vals[k]
    print(f"  {label:42} median {statistics.median(v):9.1f} ({min(v):.1f}-{max(v):.1f})")
PY
psql_at "${ports[0]}" -q -c "SELECT mm_conflict.drop_mesh(everywhere => true)"

# ---- part 2: replicated-message volume per write, 2-5 nodes -------------------------------------
slot_totals() { # N: decoded transactions and bytes of every slot on the first N nodes, summed
    local i t=0 b=0 row
    for i in $(seq 0 $(($1 - 1))); do
        row="$(psql_at "${ports[$i]}" -Atc "SELECT coalesce(sum(total_txns), 0) || ' ' || coalesce(sum(total_bytes), 0) FROM pg_stat_replication_slots")"
        t=$((t + ${row% *})); b=$((b + ${row#* }))
    done
    echo "$t $b"
}
resolved_totals() { # N: changes mm_resolve resolved on the first N nodes: written, dropped as copies
    local i a=0 d=0 row
    for i in $(seq 0 $(($1 - 1))); do
        row="$(psql_at "${ports[$i]}" -Atc "SELECT coalesce(sum(applied + inserts_converted), 0) || ' ' || coalesce(sum(duplicates_dropped), 0) FROM mm_conflict.conflict_stats WHERE table_name = 'vol'::regclass")"
        a=$((a + ${row% *})); d=$((d + ${row#* }))
    done
    echo "$a $d"
}
printf '\nreplicated-message volume per write (%s single-row inserts per node):\n' "$K"
printf '  %5s %14s %14s %18s %18s %8s\n' nodes "txns sent" "bytes sent" "changes applied" "copies dropped" "N(N-1)"
for n in 2 3 4 5; do
    for i in $(seq 0 $((n - 1))); do
        psql_at "${ports[$i]}" -q -c "DROP TABLE IF EXISTS vol; CREATE TABLE vol(id bigint PRIMARY KEY, info text,
            mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz, mm_last_stattime timestamptz);
            DROP SEQUENCE IF EXISTS vol_ids; CREATE SEQUENCE vol_ids;"
    done
    psql_at "${ports[0]}" -q -c "SELECT mm_conflict.create_mesh('$(mesh_nodes_json $(first "$n"))', ARRAY['vol']::regclass[])"
    for i in $(seq 0 $((n - 1))); do psql_at "${ports[$i]}" -q -c "SELECT mm_conflict.reset_conflict_stats()"; done
    read -r t0 b0 < <(slot_totals "$n")
    script="$(mktemp)"
    pids=()
    # Node i's keys start at i * 10^9 (literal bigints).
    for i in $(seq 0 $((n - 1))); do
        echo "INSERT INTO vol(id, info) SELECT $(((i + 1) * 1000000000)) + nextval('vol_ids'), 'volume';" >"$script.$i"
        "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "${ports[$i]}" -c 1 -t "$K" -f "$script.$i" postgres >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    until [ "$(psql_at "${ports[$((n - 1))]}" -Atc "SELECT count(*) FROM vol")" = $((n * K)) ] && same_on "$n" vol; do sleep 0.2; done
    sync_all $(first "$n")
    sleep 1.5 # walsenders report slot statistics as they decode; let the last reports land
    read -r t1 b1 < <(slot_totals "$n")
    read -r applied dropped < <(resolved_totals "$n")
    writes=$((n * K))
    python3 -c "
w = $writes
print(f'  {$n:5d} {($t1 - $t0) / w:14.2f} {($b1 - $b0) / w:14.1f} {$applied / w:18.2f} {$dropped / w:18.2f} {$n * ($n - 1):8d}')"
    rm -f "$script" "$script".*
    psql_at "${ports[0]}" -q -c "SELECT mm_conflict.drop_mesh(everywhere => true)"
done
rm -f "$results"
