# The four variants the benchmarks compare, as SQL (sourced by the bench scripts).
#
# variant_sql VARIANT NODE TABLE: the SQL that gives TABLE the trigger of VARIANT, as node NODE:
#   none        no trigger (the physical limit)
#   floor       contrib's insert_username on column info: a C BEFORE ROW trigger that sets one
#               column and does nothing else, the cheapest trigger that changes a row (the C floor;
#               it writes a shorter info, which if anything favours the floor)
#   mm_resolve  mm_resolve(NODE, last_xacttime, last), ENABLE ALWAYS
#   article     the article's plpgsql trigger, worker detection repaired (bench/article_trigger.sql.in)
#   lean        the same without its per-row pg_stat_activity scan
# The trigger functions are created with CREATE OR REPLACE, so several tables can share them.
# VARIANTS="none mm_resolve" (space-separated) runs a subset; none must be among them.
read -r -a VARIANTS <<<"${VARIANTS:-none floor mm_resolve article lean}"
declare -A VARIANT_NAME=([none]=none [floor]=C-floor [mm_resolve]=mm_resolve [article]=plpgsql-article [lean]=plpgsql-lean)

article_trigger_sql() { # NAME DETECT
    sed -e "s/__NAME__/$1/" -e "s/__DETECT__/$2/" "$ROOT/bench/article_trigger.sql.in"
}

variant_sql() {
    local variant="$1" node="$2" table="$3"
    case "$variant" in
        none) return ;;
        floor)
            echo "CREATE EXTENSION IF NOT EXISTS insert_username;"
            echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON $table FOR EACH ROW EXECUTE FUNCTION insert_username(info);" ;;
        mm_resolve)
            echo "CREATE EXTENSION IF NOT EXISTS mm_conflict CASCADE;"
            echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE OR DELETE ON $table FOR EACH ROW EXECUTE FUNCTION mm_resolve($node, last_xacttime, last);" ;;
        article)
            article_trigger_sql article_tg "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = pg_backend_pid() AND backend_type = 'logical replication worker') INTO is_worker;"
            echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON $table FOR EACH ROW EXECUTE FUNCTION article_tg($node, last_xacttime, last, 1);" ;;
        lean)
            article_trigger_sql article_lean_tg "is_worker := current_setting('session_replication_role') = 'replica';"
            echo "CREATE TRIGGER tg BEFORE INSERT OR UPDATE ON $table FOR EACH ROW EXECUTE FUNCTION article_lean_tg($node, last_xacttime, last, 1);" ;;
        *) echo "unknown variant $variant" >&2; return 1 ;;
    esac
    echo "ALTER TABLE $table ENABLE ALWAYS TRIGGER tg;"
}

# variant_database PORT DB VARIANT NODE [SQL]: creates database DB with the article's table mm,
# VARIANT's trigger as node NODE, then SQL.
variant_database() {
    local port="$1" db="$2" variant="$3" node="$4" extra="${5:-}"
    psql_at "$port" -c "CREATE DATABASE $db"
    { echo "$ARTICLE_TABLE_SQL;"; variant_sql "$variant" "$node" mm; echo "$extra"; } | psql_db "$port" "$db"
}

# rotated_variant ROUND K: the K-th variant (from 0) of round ROUND; the order rotates every round so
# that no variant always runs first.
rotated_variant() { echo "${VARIANTS[$((($2 + $1) % ${#VARIANTS[@]}))]}"; }

# median_table FILE TITLE UNIT [BASE KEY...]: FILE has lines "key value"; prints, per KEY (default:
# the variants, labelled by VARIANT_NAME), the median with min-max, the ratio to BASE's median
# (default: none) and, when the C floor was measured, the ratio to the floor's median.
median_table() {
    local file="$1" title="$2" unit="$3" base="${4:-none}" key pairs=()
    local keys=("${@:5}")
    [ "${#keys[@]}" -gt 0 ] || keys=("${VARIANTS[@]}")
    for key in "${keys[@]}"; do pairs+=("$key=${VARIANT_NAME[$key]:-$key}"); done
    python3 - "$file" "$title" "$unit" "$base" "${pairs[@]}" <<'PY'
import statistics, sys
path, title, unit, base_key = sys.argv[1:5]
values = {}
for line in open(path):
    key, value = line.split()
    values.setdefault(key, []).append(float(value))
base = statistics.median(values[base_key])
floor = statistics.median(values["floor"]) if "floor" in values and base_key != "floor" else None
also = ", ratio to C-floor" if floor else ""
print(f"{title} ({unit}: median, min-max, ratio to {base_key}{also}):")
for key, label in (pair.split("=", 1) for pair in sys.argv[5:]):
    if key in values:
        v = values[key]
        m = statistics.median(v)
        to_floor = f"  {m / floor:5.2f}x" if floor else ""
        print(f"  {label:16} {m:10.1f} ({min(v):.1f}-{max(v):.1f})  {m / base:5.2f}x{to_floor}")
PY
}

# apply_worker_pid PORT DB SUBSCRIPTION: the pid of the subscription's apply worker, if it runs.
apply_worker_pid() {
    psql_db "$1" "$2" -At -c "SELECT pid FROM pg_stat_subscription
        WHERE subname = '$3' AND relid IS NULL AND pid IS NOT NULL"
}

# worker_cpu_ticks PID: the process's user + system CPU time since it started, in 1/100 s.
worker_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# catch_up PORT DB SUBSCRIPTION CONDITION: on the subscriber at PORT, enables the subscription alone, waits until CONDITION (a
# query returning true once the round is applied) holds in DB, disables the subscription and
# waits for its worker to exit, so that the next one runs alone. Sets TOOK_MS, and CPU_TICKS to
# the worker's own CPU time (1/100 s since it started).
catch_up() {
    local sub="$1" db="$2" subname="$3" condition="$4" start worker=""
    start="$(ms)"
    psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION $subname ENABLE"
    until [ "$(psql_db "$sub" "$db" -At -c "$condition")" = t ]; do
        [ -n "$worker" ] || worker="$(apply_worker_pid "$sub" "$db" "$subname")"
        sleep 0.05
    done
    TOOK_MS=$(($(ms) - start))
    [ -n "$worker" ] || worker="$(apply_worker_pid "$sub" "$db" "$subname")"
    CPU_TICKS="$(worker_cpu_ticks "$worker")"
    psql_db "$sub" "$db" -c "ALTER SUBSCRIPTION $subname DISABLE"
    until [ "$(psql_db "$sub" "$db" -At -c "SELECT count(*) FROM pg_stat_subscription
                 WHERE subname = '$subname' AND pid IS NOT NULL")" = 0 ]; do
        sleep 0.05
    done
}

# timed_function_sql: the SQL of timed(sql text), which runs a statement and returns its time in
# ms, and of timed_wal(sql text, rows int8), which also returns the WAL the statement wrote (from
# the WAL insert position before and after it), in bytes per row for ROWS rows, as "ms bytes".
timed_function_sql() {
    cat <<'SQL'
CREATE FUNCTION timed(sql text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN EXECUTE sql; RETURN extract(epoch FROM clock_timestamp() - t0) * 1000; END $$;
CREATE FUNCTION timed_wal(sql text, rows int8) RETURNS text LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); l0 pg_lsn := pg_current_wal_insert_lsn();
BEGIN
    EXECUTE sql;
    RETURN round(extract(epoch FROM clock_timestamp() - t0) * 1000, 1) || ' '
        || round((pg_current_wal_insert_lsn() - l0) / rows, 1);
END $$;
SQL
}
