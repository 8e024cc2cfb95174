#!/usr/bin/env bash
# Per-row cost on the local write path: a 200k-row INSERT ... SELECT, a 200k-row UPDATE, an
# upsert (INSERT ... ON CONFLICT DO UPDATE) of those 200k keys, a DELETE of those rows and an upsert
# of 200k new keys in the article's table (published, as a replicated table is: mm_resolve's
# deletes write tombstones), and an UPDATE of a small column in 20k rows with a large out-of-line value,
# measured side by side in one run, alternating, ROUNDS rounds (default 5), synchronous_commit =
# off, for the variants of bench/variants.sh: no trigger (none), the C floor (contrib's
# insert_username), mm_resolve, the article's plpgsql trigger (plpgsql-article, worker detection
# repaired for PostgreSQL 15) and the same without its per-row pg_stat_activity scan
# (plpgsql-lean). Prints each round, then medians with min-max and each one's ratio to none and
# to the floor; and the WAL each statement wrote, in bytes per row.
# Measures whatever build is installed: install a release build first
# (cargo pgrx install --release --pg-config /usr/bin/pg_config) and stop clusters using the old one.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
source "$ROOT/bench/variants.sh"
ROUNDS="${ROUNDS:-5}"
trap stop_started_clusters EXIT
start_fresh_clusters bench_per_row 1 25460
port="${CLUSTER_PORTS[0]}"
{
    for v in "${VARIANTS[@]}"; do
        echo "${ARTICLE_TABLE_SQL/CREATE TABLE mm/CREATE TABLE t_$v};"
        variant_sql "$v" 1 "t_$v"
    done
    timed_function_sql
    echo "CREATE PUBLICATION bench_all FOR ALL TABLES;"
} | psql_at "$port" -q
inserts="$(mktemp)"
updates="$(mktemp)"
deletes="$(mktemp)"
upserts="$(mktemp)"
upserts_new="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
        # Every round deletes keys never deleted before (no stored tombstone to replace).
        psql_at "$port" -qAt -c "TRUNCATE t_$v, mm_conflict.tombstone" -c "CHECKPOINT" >/dev/null
        read -r ins ins_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('INSERT INTO t_$v(id, info, mod_time)
                 SELECT g, md5(g::text), now() FROM generate_series(1, 200000) g', 200000)")"
        read -r upd upd_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('UPDATE t_$v SET info = info || ''x''', 200000)")"
        read -r ups ups_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('INSERT INTO t_$v(id, info, mod_time)
                 SELECT g, md5(g::text), now() FROM generate_series(1, 200000) g
                 ON CONFLICT (id) DO UPDATE SET info = excluded.info', 200000)")"
        read -r del del_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('DELETE FROM t_$v', 200000)")"
        read -r upn upn_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('INSERT INTO t_$v(id, info, mod_time)
                 SELECT g, md5(g::text), now() FROM generate_series(200001, 400000) g
                 ON CONFLICT (id) DO UPDATE SET info = excluded.info', 200000)")"
        printf 'round %s %-10s insert %8.1f ms  update %8.1f ms  upsert %8.1f ms  delete %8.1f ms  upsert of new keys %8.1f ms  (WAL bytes per row %s %s %s %s %s)\n' \
            "$round" "$v" "$ins" "$upd" "$ups" "$del" "$upn" "$ins_wal" "$upd_wal" "$ups_wal" "$del_wal" "$upn_wal"
        echo "$v $ins" >>"$inserts"
        echo "$v $upd" >>"$updates"
        echo "$v $ups" >>"$upserts"
        echo "$v $del" >>"$deletes"
        echo "$v $upn" >>"$upserts_new"
        echo "$v $ups_wal" >>"$upserts.wal"
        echo "$v $upn_wal" >>"$upserts_new.wal"
        echo "$v $ins_wal" >>"$inserts.wal"
        echo "$v $upd_wal" >>"$updates.wal"
        echo "$v $del_wal" >>"$deletes.wal"
    done
done
median_table "$inserts" "200k-row INSERT ... SELECT" "ms"
median_table "$updates" "200k-row UPDATE" "ms"
median_table "$upserts" "200k-row upsert of stored keys (INSERT ... ON CONFLICT DO UPDATE)" "ms"
median_table "$deletes" "200k-row DELETE" "ms"
median_table "$upserts_new" "200k-row upsert of new keys" "ms"
median_table "$inserts.wal" "200k-row INSERT ... SELECT" "WAL bytes per row"
median_table "$updates.wal" "200k-row UPDATE" "WAL bytes per row"
median_table "$upserts.wal" "200k-row upsert of stored keys" "WAL bytes per row"
median_table "$deletes.wal" "200k-row DELETE" "WAL bytes per row"
median_table "$upserts_new.wal" "200k-row upsert of new keys" "WAL bytes per row"

# Large values: rows with a 3.2 kB value stored out of line (TOAST), an UPDATE of a small column of
# every row. mm_resolve writes the large value anew (README "Semantics": each version carries all
# its values); the others keep the stored one.
{
    for v in "${VARIANTS[@]}"; do
        echo "CREATE TABLE big_$v(id int PRIMARY KEY, info text, n int, t text, mod_time timestamp, mm_islocal boolean,
              mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp);
              ALTER TABLE big_$v ALTER COLUMN t SET STORAGE EXTERNAL;"
        variant_sql "$v" 1 "big_$v"
    done
} | psql_at "$port" -q
large="$(mktemp)"
for round in $(seq "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
        psql_at "$port" -qAt -c "TRUNCATE big_$v" \
            -c "INSERT INTO big_$v(id, info, n, t) SELECT g, md5(g::text), 0, repeat(md5(g::text), 100) FROM generate_series(1, 20000) g" \
            -c "CHECKPOINT" >/dev/null
        read -r upd upd_wal <<<"$(psql_at "$port" -qAt -c "SELECT timed_wal('UPDATE big_$v SET n = n + 1', 20000)")"
        printf 'round %s %-10s large-value rows: update of a small column %8.1f ms (WAL bytes per row %s)\n' \
            "$round" "$v" "$upd" "$upd_wal"
        echo "$v $upd" >>"$large"
        echo "$v $upd_wal" >>"$large.wal"
    done
done
median_table "$large" "UPDATE of a small column in 20k rows with a 3.2 kB out-of-line value" "ms"
median_table "$large.wal" "UPDATE of a small column in 20k rows with a 3.2 kB out-of-line value" "WAL bytes per row"
rm -f "$inserts" "$updates" "$deletes" "$large" "$inserts.wal" "$updates.wal" "$deletes.wal" "$large.wal" \
    "$upserts" "$upserts.wal" "$upserts_new" "$upserts_new.wal"
