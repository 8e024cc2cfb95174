#!/usr/bin/env bash
# Per-row cost of mm_resolve on the local write path: a 200k-row INSERT ... SELECT and a 200k-row
# UPDATE into the article's table, with no trigger and with mm_resolve, measured side by side in one
# run, alternating, ROUNDS rounds (default 5), synchronous_commit = off. Prints each round, the
# medians and the min-max. Measures whatever build is installed: install a release build first
# (cargo pgrx install --release --pg-config /usr/bin/pg_config) and stop clusters using the old one.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
ROUNDS="${ROUNDS:-5}"
trap stop_started_clusters EXIT
rm -rf "$CLUSTER_ROOT/bench_per_row"
port="$(free_port 55460)"
start_cluster bench_per_row "$port"
psql_at "$port" -q <<'SQL'
CREATE EXTENSION mm_conflict CASCADE;
CREATE TABLE t_none(id int PRIMARY KEY, info text, mod_time timestamp, mm_islocal boolean, mm_nodeid int2,
                    mm_last_xacttime timestamp, mm_last_stattime timestamp);
CREATE TABLE t_mm (LIKE t_none INCLUDING ALL);
CREATE TRIGGER mm_resolve BEFORE INSERT OR UPDATE OR DELETE ON t_mm
    FOR EACH ROW EXECUTE FUNCTION mm_resolve(1, last_xacttime, last, 2);
CREATE FUNCTION timed(sql text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN EXECUTE sql; RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END $$;
SQL
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for table in t_none t_mm; do
        psql_at "$port" -qAt -c "TRUNCATE $table" -c "CHECKPOINT" >/dev/null
        ins="$(psql_at "$port" -qAt -c "SELECT timed('INSERT INTO $table(id, info, mod_time)
                 SELECT g, md5(g::text), now() FROM generate_series(1, 200000) g')")"
        upd="$(psql_at "$port" -qAt -c "SELECT timed('UPDATE $table SET info = info || ''x''')")"
        printf 'round %s %-6s insert %8.1f ms  update %8.1f ms\n' "$round" "$table" "$ins" "$upd"
        echo "$table $ins $upd" >>"$results"
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for i, what in enumerate(("INSERT", "UPDATE")):
    times = {t: [float(r[1 + i]) for r in rows if r[0] == t] for t in ("t_none", "t_mm")}
    none, mm = (statistics.median(times[t]) for t in ("t_none", "t_mm"))
    spread = ", ".join(f"{t[2:]} {min(v):.1f}-{max(v):.1f}" for t, v in times.items())
    print(f"200k-row {what}: median none {none:.1f} ms, mm_resolve {mm:.1f} ms, ratio {mm / none:.2f}x, "
          f"{(mm - none) / 200:.2f} us per row (min-max ms: {spread})")
PY
rm -f "$results"
