#!/usr/bin/env bash
# Per-row cost on the local write path: a 200k-row INSERT ... SELECT and a 200k-row UPDATE into the
# article's table, measured side by side in one run, alternating, ROUNDS rounds (default 5),
# synchronous_commit = off, for: no trigger (none), mm_resolve, the article's plpgsql trigger
# (plpgsql-article, worker detection repaired for PostgreSQL 15) and the same without its per-row
# pg_stat_activity scan (plpgsql-lean); see bench/article_trigger.sql.in. Prints each round, the
# medians with min-max, and each one's ratio to none. Measures whatever build is installed: install a release build first
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
CREATE TABLE t_article (LIKE t_none INCLUDING ALL);
CREATE TABLE t_lean (LIKE t_none INCLUDING ALL);
CREATE FUNCTION timed(sql text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN EXECUTE sql; RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END $$;
SQL
article_trigger() { # NAME DETECT
    sed -e "s/__NAME__/$1/" -e "s/__DETECT__/$2/" "$ROOT/bench/article_trigger.sql.in"
}
{
    article_trigger article_tg "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = pg_backend_pid() AND backend_type = 'logical replication worker') INTO is_worker;"
    article_trigger article_lean_tg "is_worker := current_setting('session_replication_role') = 'replica';"
    echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON t_article FOR EACH ROW EXECUTE FUNCTION article_tg(1, last_xacttime, last, 2);"
    echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON t_lean FOR EACH ROW EXECUTE FUNCTION article_lean_tg(1, last_xacttime, last, 2);"
} | psql_at "$port" -q
results="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for table in t_none t_mm t_article t_lean; do
        psql_at "$port" -qAt -c "TRUNCATE $table" -c "CHECKPOINT" >/dev/null
        ins="$(psql_at "$port" -qAt -c "SELECT timed('INSERT INTO $table(id, info, mod_time)
                 SELECT g, md5(g::text), now() FROM generate_series(1, 200000) g')")"
        upd="$(psql_at "$port" -qAt -c "SELECT timed('UPDATE $table SET info = info || ''x''')")"
        printf 'round %s %-9s insert %8.1f ms  update %8.1f ms\n' "$round" "$table" "$ins" "$upd"
        echo "$table $ins $upd" >>"$results"
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
names = {"t_none": "none", "t_mm": "mm_resolve", "t_article": "plpgsql-article", "t_lean": "plpgsql-lean"}
for i, what in enumerate(("INSERT", "UPDATE")):
    times = {t: [float(r[1 + i]) for r in rows if r[0] == t] for t in names}
    none = statistics.median(times["t_none"])
    print(f"200k-row {what} (median ms, min-max, ratio to none, extra per row):")
    for t, name in names.items():
        m = statistics.median(times[t])
        print(f"  {name:16} {m:8.1f} ({min(times[t]):.1f}-{max(times[t]):.1f})  {m / none:5.2f}x  "
              f"{(m - none) / 200:6.2f} us")
PY
rm -f "$results"
