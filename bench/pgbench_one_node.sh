#!/usr/bin/env bash
# The article's pgbench workload (its test1.sql, deletes really deleting) on one node, 2 clients,
# SECONDS per run (default 10), for the four variants of bench/variants.sh, each in its own
# database, alternating, ROUNDS rounds (default 3). Prints tps per run, then medians with min-max
# and ratios to none. Measures whatever build is installed: install a release build first.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
trap stop_started_clusters EXIT
start_fresh_clusters bench_pgbench 1 25480
port="${CLUSTER_PORTS[0]}"
for v in "${VARIANTS[@]}"; do
    variant_database "$port" "pgbench_$v" "$v" 1
done
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        tps="$("$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$port" -c 2 -j 2 -T "$SECONDS_PER_RUN" \
            -f "$ROOT/mesh_tests/workloads/article_test1.sql" "pgbench_$v" | awk '/^tps = / {print $3}')"
        printf 'round %s %-10s %8.1f tps\n' "$round" "$v" "$tps"
        echo "$v $tps" >>"$results"
    done
done
median_table "$results" "the article's test1.sql on one node, 2 clients" "tps"
rm -f "$results"
