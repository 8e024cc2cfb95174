#!/usr/bin/env bash
# Apply path: how fast a subscriber catches up a backlog of single-row transactions, per trigger
# variant on the subscriber (none, mm_resolve, plpgsql-article, plpgsql-lean), side by side in one
# run. A publisher (mm_resolve, node 1, so rows carry versions) and one subscriber cluster with a
# database per variant, each subscribed to the publisher. Each round: all subscriptions disabled,
# the publisher commits N single-row INSERTs (default 200000), then each variant in turn (order
# rotating per round) is enabled alone, timed until the round's last key is there, and disabled
# again. Prints rows/s per variant and round, medians with min-max, and ratios to none.
# Measures whatever build is installed: install a release build first.
#
# Usage: N=200000 ROUNDS=3 bash bench/apply_catchup.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
N="${N:-200000}"
ROUNDS="${ROUNDS:-3}"
VARIANTS=(none mm_resolve article lean)
trap stop_started_clusters EXIT
for c in bench_pub bench_sub; do rm -rf "$CLUSTER_ROOT/$c"; done
pub="$(free_port 55470)"
start_cluster bench_pub "$pub"
sub="$(free_port $((pub + 1)))"
start_cluster bench_sub "$sub"
# The launcher starts a worker at most once per wal_retrieve_retry_interval (default 5 s): that
# wait would count as catch-up time for every variant but the first.
psql_at "$sub" -q -c "ALTER SYSTEM SET wal_retrieve_retry_interval = '10ms'" -c "SELECT pg_reload_conf()"

table="CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp, mm_islocal boolean,
       mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp)"
psql_at "$pub" -q -c "CREATE EXTENSION mm_conflict CASCADE" -c "$table" \
    -c "CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last)" \
    -c "CREATE PUBLICATION bench FOR TABLE mm" -c "CREATE SEQUENCE ids"

article_trigger() { # NAME DETECT
    sed -e "s/__NAME__/$1/" -e "s/__DETECT__/$2/" "$ROOT/bench/article_trigger.sql.in"
}
for v in "${VARIANTS[@]}"; do
    psql_at "$sub" -q -c "CREATE DATABASE apply_$v"
    {
        echo "$table;"
        case "$v" in
            mm_resolve)
                echo "CREATE EXTENSION mm_conflict CASCADE;"
                echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE OR DELETE ON mm FOR EACH ROW EXECUTE FUNCTION mm_resolve(2, last_xacttime, last);" ;;
            article)
                article_trigger article_tg "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = pg_backend_pid() AND backend_type = 'logical replication worker') INTO is_worker;"
                echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION article_tg(2, last_xacttime, last, 1);" ;;
            lean)
                article_trigger article_lean_tg "is_worker := current_setting('session_replication_role') = 'replica';"
                echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON mm FOR EACH ROW EXECUTE FUNCTION article_lean_tg(2, last_xacttime, last, 1);" ;;
        esac
        [ "$v" = none ] || echo "ALTER TABLE mm ENABLE ALWAYS TRIGGER tg;"
        echo "CREATE SUBSCRIPTION sub_$v CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
              PUBLICATION bench WITH (copy_data = false, enabled = false, slot_name = 'apply_$v');"
    } | "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$sub" -U postgres -d "apply_$v"
done
# The slots are created on the publisher by CREATE SUBSCRIPTION (outside a transaction block).

script="$(mktemp)"
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    offset=$(((round - 1) * N))
    echo "INSERT INTO mm(id, info, mod_time) SELECT n, md5(n::text), now() FROM nextval('ids') n;" >"$script"
    # Exactly N single-row transactions, each a new key.
    "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$N" -f "$script" postgres >/dev/null
    rows="$(psql_at "$pub" -Atc "SELECT count(*) FROM mm WHERE id > $offset")"
    last="$(psql_at "$pub" -Atc "SELECT max(id) FROM mm")"
    # Rotate the order so that no variant always goes first.
    for k in 0 1 2 3; do
        v="${VARIANTS[$(((k + round) % 4))]}"
        db="apply_$v"
        start_ms=$(($(date +%s%N) / 1000000))
        "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$sub" -U postgres -d "$db" -c "ALTER SUBSCRIPTION sub_$v ENABLE"
        # One apply worker commits in the publisher's order: the last key arrives last. (The
        # slot's confirmed position would lag by the feedback interval.)
        until [ "$("$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$sub" -U postgres -d "$db" -c "SELECT coalesce(max(id), 0) >= $last FROM mm")" = t ]; do
            sleep 0.05
        done
        took_ms=$(($(date +%s%N) / 1000000 - start_ms))
        "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$sub" -U postgres -d "$db" -c "ALTER SUBSCRIPTION sub_$v DISABLE"
        applied="$("$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$sub" -U postgres -d "$db" -c "SELECT count(*) FROM mm WHERE id > $offset")"
        [ "$applied" = "$rows" ] || { echo "apply_$v has $applied rows of round $round, expected $rows" >&2; exit 1; }
        printf 'round %s %-10s %6s rows in %6s ms\n' "$round" "$v" "$rows" "$took_ms"
        echo "$v $rows $took_ms" >>"$results"
        # Wait for the worker to exit before the next variant runs alone.
        until [ "$("$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "$sub" -U postgres -d "$db" -c "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_$v' AND pid IS NOT NULL")" = 0 ]; do
            sleep 0.05
        done
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
names = {"none": "none", "mm_resolve": "mm_resolve", "article": "plpgsql-article", "lean": "plpgsql-lean"}
rate = {v: [int(r[1]) / (int(r[2]) / 1000) for r in rows if r[0] == v] for v in names}
base = statistics.median(rate["none"])
print("apply catch-up (rows/s: median, min-max, ratio to none):")
for v, name in names.items():
    m = statistics.median(rate[v])
    print(f"  {name:16} {m:9.0f} ({min(rate[v]):.0f}-{max(rate[v]):.0f})  {m / base:5.2f}x")
PY
rm -f "$script" "$results"
