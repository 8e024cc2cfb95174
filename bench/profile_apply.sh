#!/usr/bin/env bash
# Profiles an apply worker with `perf` while it catches up a backlog of single-row INSERT
# transactions into the article's table with VARIANT's trigger (default mm_resolve), and prints
# perf's flat profile (self time per symbol) of that process.
# Measures whatever build is installed: install a release build first (it keeps its symbols).
#
# Usage: N=200000 VARIANT=mm_resolve PERF_SECONDS=5 bash bench/profile_apply.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
N="${N:-200000}"
VARIANT="${VARIANT:-mm_resolve}"
PERF_SECONDS="${PERF_SECONDS:-5}"
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
trap stop_started_clusters EXIT
start_fresh_clusters profile 2 55490
pub="${CLUSTER_PORTS[0]}"
sub="${CLUSTER_PORTS[1]}"
{
    echo "$ARTICLE_TABLE_SQL;"
    variant_sql mm_resolve 1 mm
    echo "CREATE PUBLICATION bench FOR TABLE mm; CREATE SEQUENCE ids;"
} | psql_at "$pub" -q
variant_database "$sub" profile "$VARIANT" 2 \
    "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=$pub user=postgres dbname=postgres'
     PUBLICATION bench WITH (copy_data = false, enabled = false);"
script="$(mktemp)"
echo "INSERT INTO mm(id, info, mod_time) SELECT n, md5(n::text), now() FROM nextval('ids') n;" >"$script"
"$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "$pub" -c 1 -t "$N" -f "$script" postgres >/dev/null
rm -f "$script"
psql_db "$sub" profile -c "ALTER SUBSCRIPTION sub ENABLE"
pid=""
until [ -n "$pid" ]; do
    sleep 0.05
    pid="$(psql_db "$sub" profile -At -c "SELECT pid FROM pg_stat_subscription WHERE subname = 'sub' AND relid IS NULL AND pid IS NOT NULL")"
done
sleep 0.5 # past the worker's start-up
data="$CLUSTER_ROOT/profile2/perf.data"
before="$(psql_db "$sub" profile -At -c "SELECT count(*) FROM mm")"
perf record -F 2000 -o "$data" -p "$pid" -- sleep "$PERF_SECONDS" 2>/dev/null
after="$(psql_db "$sub" profile -At -c "SELECT count(*) FROM mm")"
[ "$after" -lt "$N" ] || echo "warning: the backlog ran out during the profile; raise N" >&2
samples="$(perf script -i "$data" -F ip 2>/dev/null | wc -l)"
echo "variant $VARIANT: $((after - before)) rows applied during the profile, $samples samples of the apply worker"
# Self time per symbol: share of the worker's samples, and samples per 1000 rows applied.
perf report -i "$data" -n --no-children --sort dso,symbol --stdio 2>/dev/null | grep '%' | grep -v '^#' | head -40 |
    awk -v rows="$((after - before))" '{printf "%8s %7.2f /1000 rows  %s %s %s\n", $1, $2 / rows * 1000, $3, $4, $5}'
