#!/usr/bin/env bash
# Delta columns' cost (README "Delta columns"), on the local and the apply path, side by side in
# one run: a table with a bigint counter n, under no trigger (none), the C floor (contrib's
# insert_username), mm_resolve with n a last-writer-wins column (mm_resolve), and mm_resolve with
# n a delta column (mm_resolve-delta: each write reads and writes the row's mm_delta state).
#   local: a 200k-row INSERT ... SELECT, then a 200k-row UPDATE SET n = n + 1;
#   apply: a subscriber catches up N single-row UPDATE SET n = n + 1 transactions (default
#          100000) of a publisher whose table declares n a delta column (so every change carries
#          its state), one database per variant on the subscriber, as bench/apply_catchup.sh does.
# ROUNDS rounds (default 3); prints each round, then medians with min-max and ratios to none and
# to the C floor. Measures whatever build is installed: install a release build first.
#
# Usage: ROUNDS=3 N=100000 bash bench/delta.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
VARIANTS="${DELTA_VARIANTS:-none floor mm_resolve mm_delta}"
source "$ROOT/bench/variants.sh"
VARIANT_NAME[mm_delta]=mm_resolve-delta
ROUNDS="${ROUNDS:-3}"
N="${N:-100000}"
trap stop_started_clusters EXIT
start_fresh_clusters bench_delta 2 25480
pub="${CLUSTER_PORTS[0]}"
sub="${CLUSTER_PORTS[1]}"
psql_at "$sub" -q -c "ALTER SYSTEM SET wal_retrieve_retry_interval = '10ms'" -c "SELECT pg_reload_conf()"

# counter_sql VARIANT NODE TABLE: the counter table with VARIANT's trigger, as node NODE.
counter_sql() {
    echo "CREATE TABLE $3(id int PRIMARY KEY, info text, n bigint NOT NULL DEFAULT 0,
          mm_islocal boolean, mm_nodeid int2, mm_last_xacttime timestamptz,
          mm_last_stattime timestamptz, mm_delta text);"
    case "$1" in
        mm_delta)
            echo "CREATE EXTENSION IF NOT EXISTS mm_conflict CASCADE;"
            echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE OR DELETE ON $3 FOR EACH ROW
                  EXECUTE FUNCTION mm_resolve($2, last_xacttime, last, 'delta=n');"
            echo "ALTER TABLE $3 ENABLE ALWAYS TRIGGER tg;" ;;
        *) variant_sql "$1" "$2" "$3" ;;
    esac
}

# Local path.
{
    for v in "${VARIANTS[@]}"; do counter_sql "$v" 1 "c_$v"; done
    timed_function_sql
} | psql_at "$pub" -q
inserts="$(mktemp)" updates="$(mktemp)" applied="$(mktemp)" cpu="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        psql_at "$pub" -qAt -c "TRUNCATE c_$v" -c "CHECKPOINT" >/dev/null
        ins="$(psql_at "$pub" -qAt -c "SELECT timed('INSERT INTO c_$v(id, info, n)
                 SELECT g, md5(g::text), g FROM generate_series(1, 200000) g')")"
        upd="$(psql_at "$pub" -qAt -c "SELECT timed('UPDATE c_$v SET n = n + 1')")"
        printf 'round %s %-10s insert %8.1f ms  update n = n + 1 %8.1f ms\n' "$round" "$v" "$ins" "$upd"
        echo "$v $ins" >>"$inserts"
        echo "$v $upd" >>"$updates"
    done
done

# Apply path: the publisher's table is node 1's with n a delta column; each subscriber database
# holds the same N rows (written there before it subscribes) under its variant, as node 2.
{
    counter_sql mm_delta 1 counter
    echo "INSERT INTO counter(id, info) SELECT g, md5(g::text) FROM generate_series(1, $N) g;"
    echo "CREATE PUBLICATION bench FOR TABLE counter; CREATE SEQUENCE upd;"
} | psql_at "$pub" -q
for v in "${VARIANTS[@]}"; do
    psql_at "$sub" -q -c "CREATE DATABASE delta_$v"
    {
        counter_sql "$v" 2 counter
        echo "INSERT INTO counter(id, info) SELECT g, md5(g::text) FROM generate_series(1, $N) g;"
        echo "CREATE SUBSCRIPTION sub_$v CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
              PUBLICATION bench WITH (copy_data = false, enabled = false, slot_name = 'delta_$v');"
    } | psql_db "$sub" "delta_$v" -q
done
script="$(mktemp)"
printf '%s\n' "SELECT nextval('upd') AS id \\gset" "UPDATE counter SET n = n + 1 WHERE id = :id;" >"$script"
for round in $(seq "$ROUNDS"); do
    psql_at "$pub" -qAt -c "SELECT setval('upd', 1, false)" >/dev/null
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$N" -f "$script" postgres >/dev/null
    for k in "${!VARIANTS[@]}"; do
        v="$(rotated_variant "$round" "$k")"
        catch_up "$sub" "delta_$v" "sub_$v" "SELECT n >= $round FROM counter WHERE id = $N"
        wrong="$(psql_db "$sub" "delta_$v" -At -c "SELECT count(*) FROM counter WHERE n <> $round")"
        [ "$wrong" = 0 ] || { echo "delta_$v: $wrong rows without round $round's increment" >&2; exit 1; }
        printf 'round %s %-10s %6s updates applied in %6s ms\n' "$round" "$v" "$N" "$TOOK_MS"
        echo "$v $(python3 -c "print($N / ($TOOK_MS / 1000))")" >>"$applied"
        echo "$v $(python3 -c "print($CPU_TICKS * 10000 / $N)")" >>"$cpu"
    done
done
median_table "$inserts" "delta columns: 200k-row INSERT ... SELECT" "ms"
median_table "$updates" "delta columns: 200k-row UPDATE SET n = n + 1" "ms"
median_table "$applied" "delta columns: apply catch-up of $N single-row UPDATE SET n = n + 1" "rows/s"
median_table "$cpu" "delta columns: the apply worker's CPU time per row during that catch-up" "µs"
rm -f "$inserts" "$updates" "$applied" "$cpu" "$script"
