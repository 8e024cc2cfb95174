#!/usr/bin/env bash
# Apply path: how fast a subscriber catches up a backlog of single-row transactions, per trigger
# variant on the subscriber (none, C-floor, mm_resolve, plpgsql-article, plpgsql-lean), side by side in one
# run. A publisher (mm_resolve, node 1, so rows carry versions) and one subscriber cluster with a
# database per variant, each subscribed to the publisher. Each round: all subscriptions disabled,
# the publisher commits N single-row INSERTs (default 200000), then each variant in turn (order
# rotating per round) is enabled alone, timed until the round's last key is there, and disabled
# again; then the publisher updates each of those rows once, in N single-row transactions, and
# each variant catches those up the same way; then it deletes them, in N single-row transactions,
# caught up the same way (mm_resolve's subscriber also receives the publisher's tombstones, as in
# a mesh: each settles its key's row, and the DELETE that follows finds it gone). Prints rows/s per variant and round, medians with min-max, and ratios to none; and the
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
start_fresh_clusters bench_apply 2 25470
pub="${CLUSTER_PORTS[0]}"
sub="${CLUSTER_PORTS[1]}"
# The launcher starts a worker at most once per wal_retrieve_retry_interval (default 5 s): that
# wait would count as catch-up time for every variant but the first.
psql_at "$sub" -q -c "ALTER SYSTEM SET wal_retrieve_retry_interval = '10ms'" -c "SELECT pg_reload_conf()"

{
    echo "$ARTICLE_TABLE_SQL;"
    variant_sql mm_resolve 1 mm
    echo "CREATE PUBLICATION bench FOR TABLE mm; CREATE SEQUENCE ids;"
    # What a mesh publishes (README "Set-up by hand"): the table and the tombstones of its deletes.
    echo "CREATE PUBLICATION bench_mesh FOR TABLE mm, mm_conflict.tombstone;"
} | psql_at "$pub" -q

for v in "${VARIANTS[@]}"; do
    publication=bench
    [ "$v" != mm_resolve ] || publication=bench_mesh
    variant_database "$sub" "apply_$v" "$v" 2 \
        "CREATE SUBSCRIPTION sub_$v CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
         PUBLICATION $publication WITH (copy_data = false, enabled = false, slot_name = 'apply_$v');"
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
echo "INSERT INTO mm(id, info, mod_time) SELECT n, md5(n::text), now() FROM nextval('ids') n;" >"$script"
# Then N single-row UPDATE transactions, one per row of the round, in key order.
update_script="$(mktemp)"
printf '%s\n' "SELECT nextval('upd') AS id \\gset" "UPDATE mm SET mod_time = clock_timestamp() WHERE id = :id;" >"$update_script"
psql_at "$pub" -q -c "CREATE SEQUENCE upd"
# Then N single-row DELETE transactions, in key order.
delete_script="$(mktemp)"
printf '%s\n' "SELECT nextval('del') AS id \\gset" "DELETE FROM mm WHERE id = :id;" >"$delete_script"
psql_at "$pub" -q -c "CREATE SEQUENCE del"
results="$(mktemp)"

for round in $(seq "$ROUNDS"); do
    offset=$(((round - 1) * N))
    # Exactly N single-row transactions, each a new key.
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$N" -f "$script" postgres >/dev/null
    rows="$(psql_at "$pub" -Atc "SELECT count(*) FROM mm WHERE id > $offset")"
    last="$(psql_at "$pub" -Atc "SELECT max(id) FROM mm")"
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        db="apply_$v"
        # One apply worker commits in the publisher's order: the last key arrives last. (The
        # slot's confirmed position would lag by the feedback interval.)
        catch_up "$sub" "$db" "sub_$v" "SELECT coalesce(max(id), 0) >= $last FROM mm"
        applied="$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM mm WHERE id > $offset")"
        [ "$applied" = "$rows" ] || { echo "apply_$v has $applied rows of round $round, expected $rows" >&2; exit 1; }
        printf 'round %s %-10s %6s rows in %6s ms\n' "$round" "$v" "$rows" "$TOOK_MS"
        echo "$v $(python3 -c "print($rows / ($TOOK_MS / 1000))")" >>"$results"
        echo "$v $(python3 -c "print($CPU_TICKS * 10000 / $rows)")" >>"$results.cpu"
    done
    # The same rows, updated once each, in N transactions.
    psql_at "$pub" -qAt -c "SELECT setval('upd', $((offset + 1)), false)" >/dev/null
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$rows" -f "$update_script" postgres >/dev/null
    stamp="$(psql_at "$pub" -Atc "SELECT mod_time FROM mm WHERE id = $last")"
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        db="apply_$v"
        catch_up "$sub" "$db" "sub_$v" "SELECT coalesce(bool_or(mod_time = '$stamp'), false) FROM mm WHERE id = $last"
        printf 'round %s %-10s %6s updates in %6s ms\n' "$round" "$v" "$rows" "$TOOK_MS"
        echo "$v $(python3 -c "print($rows / ($TOOK_MS / 1000))")" >>"$results.upd"
        echo "$v $(python3 -c "print($CPU_TICKS * 10000 / $rows)")" >>"$results.updcpu"
    done
    # The same rows, deleted one by one, in N transactions.
    psql_at "$pub" -qAt -c "SELECT setval('del', $((offset + 1)), false)" >/dev/null
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$rows" -f "$delete_script" postgres >/dev/null
    left="$(psql_at "$pub" -Atc "SELECT count(*) FROM mm WHERE id > $offset")"
    [ "$left" = 0 ] || { echo "the publisher kept $left rows of round $round" >&2; exit 1; }
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        db="apply_$v"
        catch_up "$sub" "$db" "sub_$v" "SELECT NOT EXISTS (SELECT 1 FROM mm WHERE id = $last)"
        left="$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM mm WHERE id > $offset")"
        [ "$left" = 0 ] || { echo "apply_$v kept $left rows of round $round after the deletes" >&2; exit 1; }
        printf 'round %s %-10s %6s deletes in %6s ms\n' "$round" "$v" "$rows" "$TOOK_MS"
        echo "$v $(python3 -c "print($rows / ($TOOK_MS / 1000))")" >>"$results.del"
        echo "$v $(python3 -c "print($CPU_TICKS * 10000 / $rows)")" >>"$results.delcpu"
    done
    for k in "${!REPORT_MODES[@]}"; do
        mode="${REPORT_MODES[$(((k + round) % ${#REPORT_MODES[@]}))]}"
        db="report_$mode"
        # Newer local rows for the round's keys: every replicated row loses (kept_local).
        psql_db "$sub" "$db" -q -c "INSERT INTO mm(id, info) SELECT g, 'local' FROM generate_series($((offset + 1)), $last) g" \
            -c "SELECT mm_conflict.reset_conflict_stats()"
        catch_up "$sub" "$db" "sub_report_$mode" "SELECT coalesce(sum(kept_local), 0) >= $rows FROM mm_conflict.conflict_stats"
        logged="$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM mm_conflict.conflict_log")"
        printf 'round %s conflicts, log_conflicts = %-5s %6s rows in %6s ms (%s conflict_log rows in all)\n' "$round" "$mode" "$rows" "$TOOK_MS" "$logged"
        echo "$mode $(python3 -c "print($rows / ($TOOK_MS / 1000))")" >>"$results.reports"
    done
done
median_table "$results" "apply catch-up of $N single-row transactions" "rows/s"
median_table "$results.cpu" "the apply worker's CPU time per row during that catch-up" "µs"
median_table "$results.upd" "apply catch-up of $N single-row UPDATE transactions" "rows/s"
median_table "$results.updcpu" "the apply worker's CPU time per row during that catch-up" "µs"
median_table "$results.del" "apply catch-up of $N single-row DELETE transactions" "rows/s"
median_table "$results.delcpu" "the apply worker's CPU time per row during that catch-up" "µs"
if [ "${#REPORT_MODES[@]}" -gt 0 ]; then
    median_table "$results.reports" \
        "apply catch-up where every row is a conflict (kept_local), per log_conflicts" "rows/s" \
        off "${REPORT_MODES[@]}"
fi
rm -f "$results.cpu" "$results.reports" "$results.upd" "$results.updcpu" "$update_script"
rm -f "$results.del" "$results.delcpu" "$delete_script"
rm -f "$script" "$results"
