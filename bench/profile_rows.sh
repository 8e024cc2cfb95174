#!/usr/bin/env bash
# Instructions per row, counted by callgrind: repeatable whatever else the machine does (unlike
# seconds), so that a change's effect on the per-row cost can be read on a noisy machine.
#
# For each variant (none, C-floor, mm_resolve) a single-user backend (`postgres --single`) runs
# under `valgrind --tool=callgrind`: an INSERT ... SELECT of ROWS rows into the article's table
# (published, as in a mesh);
# that and an UPDATE of every row; those and an upsert (INSERT ... ON CONFLICT DO UPDATE) of every
# key; those and a DELETE of every row; and each again with 2×ROWS.
# The difference between the two sizes is the cost of ROWS rows with start-up, planning and
# catalog caching taken out; the difference between the steps separates the three operations. mm_resolve is measured
# on the local path and on the replicated path (the session carries a replication origin, as an
# apply worker does: every row is probed, as a replicated INSERT and UPDATE are; apply workers do
# not upsert, so that kind has no upsert step). Prints
# instructions per row and the ratios to none and to the floor, then mm_resolve's instructions
# by function (inclusive), from the larger local run.
# Measures whatever build is installed: install a release build first (it keeps its symbols).
#
# Usage: ROWS=20000 bash bench/profile_rows.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
ROWS="${ROWS:-20000}"
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
trap stop_started_clusters EXIT
start_fresh_clusters prof_rows 1 25496
port="${CLUSTER_PORTS[0]}"
dir="$CLUSTER_ROOT/prof_rows1"
out="$CLUSTER_ROOT/prof_rows_out"
as_pg rm -rf "$out"
as_pg mkdir -p "$out"
KINDS=(none floor mm_resolve replicated)
for kind in "${KINDS[@]}"; do
    case "$kind" in
        replicated) variant=mm_resolve; node=2 ;;
        *) variant="$kind"; node=1 ;;
    esac
    # Published, as a replicated table is (mm_resolve records tombstones only for such a table).
    variant_database "$port" "prof_$kind" "$variant" "$node" "CREATE PUBLICATION prof FOR ALL TABLES;" >/dev/null
done
psql_db "$port" prof_replicated -qAt -c "SELECT pg_replication_origin_create('prof')" >/dev/null
stop_started_clusters

# instructions KIND N STEPS: the instructions a single-user backend spends on the first STEPS (1:
# INSERT, 2: and UPDATE, 3: and upsert, 4: and DELETE) of N rows, starting from an empty table.
instructions() {
    local kind="$1" n="$2" steps="$3" file="$out/$1.$2.$3.out" session
    session="$out/$1.$2.$3.sql"
    {
        echo "TRUNCATE mm;"
        [ "$kind" = mm_resolve ] || [ "$kind" = replicated ] && echo "TRUNCATE mm_conflict.tombstone;"
        if [ "$kind" = replicated ]; then
            # Versions of node 1, as an apply worker would receive them.
            echo "SELECT pg_replication_origin_session_setup('prof');"
            echo "INSERT INTO mm SELECT g, md5(g::text), now(), true, 1, now(), now() FROM generate_series(1, $n) g;"
            [ "$steps" -lt 2 ] || echo "UPDATE mm SET info = info || 'x', mm_last_xacttime = mm_last_xacttime + interval '1 s', mm_last_stattime = mm_last_stattime + interval '1 s';"
        else
            echo "INSERT INTO mm(id, info, mod_time) SELECT g, md5(g::text), now() FROM generate_series(1, $n) g;"
            [ "$steps" -lt 2 ] || echo "UPDATE mm SET info = info || 'x';"
            [ "$steps" -lt 3 ] || echo "INSERT INTO mm(id, info, mod_time) SELECT g, md5(g::text) || 'u', now() FROM generate_series(1, $n) g ON CONFLICT (id) DO UPDATE SET info = excluded.info;"
        fi
        [ "$steps" -lt 4 ] || echo "DELETE FROM mm;"
    } | as_pg tee "$session" >/dev/null
    as_pg valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$PGBIN/postgres" --single -D "$dir" -c shared_preload_libraries=mm_conflict \
        "prof_$kind" <"$session" >/dev/null 2>&1 || die "callgrind run $kind $n $steps failed"
    sed -n 's/^summary: *//p' "$file"
}

results="$(mktemp)"
for kind in "${KINDS[@]}"; do
    declare -A marginal=()
    for steps in 1 2 3 4; do
        small="$(instructions "$kind" "$ROWS" "$steps")"
        large="$(instructions "$kind" $((2 * ROWS)) "$steps")"
        marginal[$steps]=$(((large - small) / ROWS))
    done
    # The DELETE of the replicated kind runs in the replicated session: a replicated DELETE.
    echo "$kind ${marginal[1]} $((marginal[2] - marginal[1])) $((marginal[3] - marginal[2])) $((marginal[4] - marginal[3]))" | tee -a "$results"
done
python3 - "$results" <<'PY'
import sys
v = {k: list(map(int, n)) for k, *n in (line.split() for line in open(sys.argv[1]))}
print("instructions per row (callgrind, marginal; median-free: the counts repeat exactly):")
for i, op in enumerate(["INSERT", "UPDATE", "upsert of stored keys", "DELETE"]):
    print(f"  {op}:")
    for k, label in [("none", "none"), ("floor", "C-floor"), ("mm_resolve", "mm_resolve"), ("replicated", "mm_resolve, replicated")]:
        if k == "replicated" and op.startswith("upsert"):
            continue  # apply workers do not upsert
        n, base, floor = v[k][i], v["none"][i], v["floor"][i]
        print(f"    {label:24} {n:8d}  {n / base:5.2f}x none  {n / floor:5.2f}x C-floor  (+{n - floor} over C-floor)")
PY
rm -f "$results"
log "mm_resolve's instructions by function, inclusive, local path, $((2 * ROWS)) rows: $out/mm_resolve.$((2 * ROWS)).4.out"
callgrind_annotate --inclusive=yes --threshold=100 "$out/mm_resolve.$((2 * ROWS)).4.out" 2>/dev/null |
    grep -E 'mm_conflict|mm_resolve|ExecBRInsertTriggers|ExecBRUpdateTriggers|ExecBRDeleteTriggers|heap_insert|heap_update' | head -40 || true # head closes the pipe early
