#!/usr/bin/env bash
# Profiles an apply worker with `perf` while it catches up a backlog of single-row INSERT
# transactions into the article's table with VARIANT's trigger (default mm_resolve): its CPU time
# per row (from /proc), the share of its time spent inside the mm_resolve trigger, and that time by
# step (mm_conflict function > the function it called).
# Measures whatever build is installed: install a release build first (it keeps its symbols).
#
# Usage: N=300000 VARIANT=mm_resolve PERF_SECONDS=2 bash bench/profile_apply.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
N="${N:-300000}"
VARIANT="${VARIANT:-mm_resolve}"
PERF_SECONDS="${PERF_SECONDS:-2}"
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
trap stop_started_clusters EXIT
start_fresh_clusters profile 2 25490
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
    pid="$(apply_worker_pid "$sub" profile sub)"
done
sleep 0.5 # past the worker's start-up
data="$CLUSTER_ROOT/profile2/perf.data"
before="$(psql_db "$sub" profile -At -c "SELECT count(*) FROM mm")"
cpu_before="$(worker_cpu_ticks "$pid")"
# DWARF call graphs: the release build has no frame pointers, and inclusive time is what tells
# which of mm_resolve's steps costs what (the flat profile puts it in PostgreSQL's functions).
perf record -F 499 --call-graph dwarf,16384 -o "$data" -p "$pid" -- sleep "$PERF_SECONDS" 2>/dev/null
cpu_after="$(worker_cpu_ticks "$pid")"
after="$(psql_db "$sub" profile -At -c "SELECT count(*) FROM mm")"
[ "$after" -lt "$N" ] || echo "warning: the backlog ran out during the profile; raise N" >&2
rows=$((after - before))
[ "$rows" -gt 0 ] || { echo "no rows were applied during the profile; raise N" >&2; exit 1; }
echo "variant $VARIANT: $rows rows applied in the window; the apply worker used $((cpu_after - cpu_before))0 ms of CPU," \
    "$(python3 -c "print(f'{($cpu_after - $cpu_before) * 10000 / $rows:.1f}')") µs per row"
perf report -i "$data" --no-children --stdio --sort symbol -g folded,0,caller,count --percent-limit 0 2>/dev/null |
    python3 -c '
import collections, sys
steps, total, inside = collections.Counter(), 0, 0
for line in sys.stdin:
    head, _, stack = line.strip().partition(" ")
    if not head.isdigit():
        continue
    total += int(head)
    if "mm_resolve_wrapper" not in stack:
        continue
    inside += int(head)
    frames = [f for f in stack.split("mm_resolve_wrapper", 1)[1].split(";")
              if f and not f.startswith("0x") and not any(x in f for x in ("cee_scape", "run_guarded", "closure", "call_once", "pg_guard"))]
    mm = [i for i, f in enumerate(frames) if f.startswith("mm_conflict::")]
    if mm:
        i = mm[-1]
        steps[frames[i] + " > " + (frames[i + 1] if i + 1 < len(frames) else "(self)")] += int(head)
    else:
        steps["(trigger entry) > " + (frames[0] if frames else "(self)")] += int(head)
print(f"{total} samples; inside the mm_resolve trigger: {100 * inside / max(total, 1):.1f}% of the worker time, by step > callee:")
for step, n in steps.most_common(20):
    print(f"  {100 * n / total:5.1f}%  {step[:140]}")
'
