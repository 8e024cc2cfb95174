#!/usr/bin/env bash
# Apply path: how fast a subscriber catches up a backlog of single-row transactions, per trigger
# variant on the subscriber (none, mm_resolve, plpgsql-article, plpgsql-lean), side by side in one
# run. A publisher (mm_resolve, node 1, so rows carry versions) and one subscriber cluster with a
# database per variant, each subscribed to the publisher. Each round: all subscriptions disabled,
# the publisher commits N single-row INSERTs (default 200000), then each variant in turn (order
# rotating per round) is enabled alone, timed until the round's last key is there, and disabled
# again. Prints rows/s per variant and round, medians with min-max, and ratios to none; and the
# apply worker's own CPU time per row (from /proc), which tells whether the worker is the limit.
# With REPORTS=1, each round also times three more subscriber databases with mm_resolve in which
# every replicated row is a conflict (the key already holds a newer local row, so each is
# kept_local), one per mm_conflict.log_conflicts mode (off, log, table): the cost of reporting.
# Measures whatever build is installed: install a release build first.
#
# Usage: N=200000 ROUNDS=3 [REPORTS=1] bash bench/apply_catchup.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
N="${N:-200000}"
ROUNDS="${ROUNDS:-3}"
trap stop_started_clusters EXIT
start_fresh_clusters bench_apply 2 55470
pub="${CLUSTER_PORTS[0]}"
sub="${CLUSTER_PORTS[1]}"
# The launcher starts a worker at most once per wal_retrieve_retry_interval (default 5 s): that
# wait would count as catch-up time for every variant but the first.
psql_at "$sub" -q -c "ALTER SYSTEM SET wal_retrieve_retry_interval = '10ms'" -c "SELECT pg_reload_conf()"

{
    echo "$ARTICLE_TABLE_SQL;"
    variant_sql mm_resolve 1 mm
    echo "CREATE PUBLICATION bench FOR TABLE mm; CREATE SEQUENCE ids;"
} | psql_at "$pub" -q

for v in "${VARIANTS[@]}"; do
    variant_database "$sub" "apply_$v" "$v" 2 \
        "CREATE SUBSCRIPTION sub_$v CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
         PUBLICATION bench WITH (copy_data = false, enabled = false, slot_name = 'apply_$v');"
done
# The slots are created on the publisher by CREATE SUBSCRIPTION (outside a transaction block).
REPORT_MODES=()
if [ "${REPORTS:-0}" = 1 ]; then
    REPORT_MODES=(off log table)
    for mode in "${REPORT_MODES[@]}"; do
        variant_database "$sub" "report_$mode" mm_resolve 2 \
            "ALTER DATABASE report_$mode SET mm_conflict.log_conflicts = '$mode';
             CREATE SUBSCRIPTION sub_report_$mode CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
             PUBLICATION bench WITH (copy_data = false, enabled = false, slot_name = 'report_$mode');"
    done
fi

script="$(mktemp)"
results="$(mktemp)"
apply_worker() { # DB SUBSCRIPTION: pid of the subscription's apply worker, if running
    psql_db "$sub" "$1" -At -c "SELECT pid FROM pg_stat_subscription WHERE subname = '$2' AND relid IS NULL AND pid IS NOT NULL"
}
for round in $(seq "$ROUNDS"); do
    offset=$(((round - 1) * N))
    echo "INSERT INTO mm(id, info, mod_time) SELECT n, md5(n::text), now() FROM nextval('ids') n;" >"$script"
    # Exactly N single-row transactions, each a new key.
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$N" -f "$script" postgres >/dev/null
    rows="$(psql_at "$pub" -Atc "SELECT count(*) FROM mm WHERE id > $offset")"
    last="$(psql_at "$pub" -Atc "SELECT max(id) FROM mm")"
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        db="apply_$v"
        start_ms=$(($(date +%s%N) / 1000000))
        psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION sub_$v ENABLE"
        # One apply worker commits in the publisher's order: the last key arrives last. (The
        # slot's confirmed position would lag by the feedback interval.)
        worker=""
        until [ "$(psql_db "$sub" "$db" -At -c "SELECT coalesce(max(id), 0) >= $last FROM mm")" = t ]; do
            [ -n "$worker" ] || worker="$(apply_worker "$db" "sub_$v")"
            sleep 0.05
        done
        took_ms=$(($(date +%s%N) / 1000000 - start_ms))
        [ -n "$worker" ] || worker="$(apply_worker "$db" "sub_$v")"
        # The worker's own CPU time (user + system, in 1/100 s since it started) per row.
        echo "$v $(awk -v rows="$rows" '{print ($14 + $15) * 10000 / rows}' "/proc/$worker/stat")" >>"$results.cpu"
        psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION sub_$v DISABLE"
        applied="$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM mm WHERE id > $offset")"
        [ "$applied" = "$rows" ] || { echo "apply_$v has $applied rows of round $round, expected $rows" >&2; exit 1; }
        printf 'round %s %-10s %6s rows in %6s ms\n' "$round" "$v" "$rows" "$took_ms"
        echo "$v $(python3 -c "print($rows / ($took_ms / 1000))")" >>"$results"
        # Wait for the worker to exit before the next variant runs alone.
        until [ "$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_$v' AND pid IS NOT NULL")" = 0 ]; do
            sleep 0.05
        done
    done
    for k in "${!REPORT_MODES[@]}"; do
        mode="${REPORT_MODES[$(((k + round) % ${#REPORT_MODES[@]}))]}"
        db="report_$mode"
        # Newer local rows for the round's keys: every replicated row loses (kept_local).
        psql_db "$sub" "$db" -q -c "INSERT INTO mm(id, info) SELECT g, 'local' FROM generate_series($((offset + 1)), $last) g" \
            -c "SELECT mm_conflict.reset_conflict_stats()"
        start_ms=$(($(date +%s%N) / 1000000))
        psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION sub_report_$mode ENABLE"
        until [ "$(psql_db "$sub" "$db" -At -c "SELECT coalesce(sum(kept_local), 0) >= $rows FROM mm_conflict.conflict_stats")" = t ]; do
            sleep 0.05
        done
        took_ms=$(($(date +%s%N) / 1000000 - start_ms))
        psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION sub_report_$mode DISABLE"
        logged="$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM mm_conflict.conflict_log")"
        printf 'round %s conflicts, log_conflicts = %-5s %6s rows in %6s ms (%s conflict_log rows in all)\n' "$round" "$mode" "$rows" "$took_ms" "$logged"
        echo "$mode $(python3 -c "print($rows / ($took_ms / 1000))")" >>"$results.reports"
        until [ "$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_report_$mode' AND pid IS NOT NULL")" = 0 ]; do
            sleep 0.05
        done
    done
done
median_table "$results" "apply catch-up of $N single-row transactions" "rows/s"
median_table "$results.cpu" "the apply worker's CPU time per row during that catch-up" "µs"
rm -f "$results.cpu"
if [ "${#REPORT_MODES[@]}" -gt 0 ]; then
    python3 - "$results.reports" <<'PY'
import statistics, sys
values = {}
for line in open(sys.argv[1]):
    mode, v = line.split()
    values.setdefault(mode, []).append(float(v))
base = statistics.median(values["off"])
print("apply catch-up where every row is a conflict (kept_local), per log_conflicts (rows/s: median, min-max, ratio to off):")
for mode in ("off", "log", "table"):
    m = statistics.median(values[mode])
    print(f"  {mode:16} {m:10.1f} ({min(values[mode]):.1f}-{max(values[mode]):.1f})  {m / base:5.2f}x")
PY
    rm -f "$results.reports"
fi
rm -f "$script" "$results"
