#!/usr/bin/env bash
# Verify and repair: mm_conflict.table_diff between the two nodes of a mesh on tables of N rows
# (default 100000 and 1000000, filled on node 1 and replicated), identical, then with 0.1% of the
# rows differing (updated on node 2 while the table was out of its publication), and
# mm_conflict.repair of those. For each: wall time of the call on node 1, and bytes exchanged
# (loopback traffic during the call: dblink's statements and results both ways, plus the
# replication of what the repair writes), beside the table's size (what shipping it would cost).
# Each round changes other rows; medians over ROUNDS. Measures whatever build is installed: install
# a release build first.
#
# Usage: SIZES="100000 1000000" ROUNDS=3 bash bench/table_diff.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
SIZES="${SIZES:-100000 1000000}"
ROUNDS="${ROUNDS:-3}"
has_dblink || die "table_diff needs dblink (contrib), absent from this PostgreSQL"
trap stop_started_clusters EXIT
start_fresh_clusters bench_diff 2 25480
p1="${CLUSTER_PORTS[0]}"
p2="${CLUSTER_PORTS[1]}"

tables=()
for n in $SIZES; do tables+=("'t_$n'"); done
for p in "$p1" "$p2"; do
    for n in $SIZES; do
        psql_at "$p" -q -c "${ARTICLE_TABLE_SQL/mm(/t_$n(}"
    done
done
psql_at "$p1" -q -c "CREATE EXTENSION mm_conflict" -c "CREATE EXTENSION dblink" \
    -c "SELECT mm_conflict.create_mesh('$(mesh_nodes_json "$p1" "$p2")', ARRAY[$(IFS=,; echo "${tables[*]}")]::regclass[])"

lo_bytes() { cat /sys/class/net/lo/statistics/tx_bytes; }
# PORT SQL: "milliseconds bytes result" of one call.
timed() {
    local b0 t0 out
    b0="$(lo_bytes)"
    t0="$(ms)"
    out="$(psql_at "$1" -Atq -c "SET client_min_messages = warning" -c "$2")"
    echo "$(($(ms) - t0)) $(($(lo_bytes) - b0)) $out"
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
sync_both() { for p in "$p1" "$p2"; do psql_at "$p" -Atq -c "SELECT mm_conflict.wait_for_sync('10 min')" >/dev/null; done; }
publication() { # PORT ADD|DROP TABLE
    psql_at "$1" -q -c "DO \$\$BEGIN EXECUTE format('ALTER PUBLICATION %I $2 TABLE $3', mm_conflict.publication_name()); END\$\$"
}

results="$(mktemp)"
for n in $SIZES; do
    t="t_$n"
    log "$t: $n rows on node 1, replicated to node 2"
    psql_at "$p1" -q -c "INSERT INTO $t(id, info, mod_time) SELECT g, md5(g::text), now() FROM generate_series(1, $n) g"
    sync_both
    s1="$(psql_at "$p1" -Atq -c "SELECT mm_conflict.table_checksum('$t')")"
    s2="$(psql_at "$p2" -Atq -c "SELECT mm_conflict.table_checksum('$t')")"
    [ "$s1" = "$s2" ] || die "$t differs after replication"
    size="$(psql_at "$p1" -Atq -c "SELECT pg_table_size('$t')")"
    changed=$((n / 1000))
    for r in $(seq 1 "$ROUNDS"); do
        read -r ms bytes found <<<"$(timed "$p1" "SELECT count(*) FROM mm_conflict.table_diff('$t', 2)")"
        [ "$found" = 0 ] || die "table_diff found $found rows in identical tables"
        echo "$n identical $ms $bytes $found" >>"$results"
        publication "$p2" DROP "$t"
        psql_at "$p2" -q -c "UPDATE $t SET info = 'changed in round $r' WHERE id % 1000 = $r"
        publication "$p2" ADD "$t"
        read -r ms bytes found <<<"$(timed "$p1" "SELECT count(*) FROM mm_conflict.table_diff('$t', 2)")"
        [ "$found" = "$changed" ] || die "table_diff found $found rows, not the $changed changed"
        echo "$n differing $ms $bytes $found" >>"$results"
        read -r ms bytes found <<<"$(timed "$p1" "SELECT mm_conflict.repair('$t')")"
        [ "$found" = "$changed" ] || die "repair repaired $found keys, not the $changed changed"
        echo "$n repair $ms $bytes $found" >>"$results"
        sync_both
        left="$(psql_at "$p1" -Atq -c "SELECT count(*) FROM mm_conflict.table_diff('$t', 2)")"
        [ "$left" = 0 ] || die "$left rows still differ after repair"
        echo "  round $r: $(grep "^$n " "$results" | tail -3 | awk '{printf "%s %s ms %s B; ", $2, $3, $4}')" >&2
    done
    echo "$n size $size" >>"$results"
done

echo
echo "table_diff and repair, 2 nodes, PostgreSQL $PG_MAJOR, median of $ROUNDS rounds (0.1% = every 1000th row changed on node 2):"
printf '  %-9s %-26s %10s %14s %14s\n' rows call ms "bytes moved" "table bytes"
for n in $SIZES; do
    size="$(awk -v n="$n" '$1 == n && $2 == "size" {print $3}' "$results")"
    for c in identical differing repair; do
        ms="$(awk -v n="$n" -v c="$c" '$1 == n && $2 == c {print $3}' "$results" | median)"
        bytes="$(awk -v n="$n" -v c="$c" '$1 == n && $2 == c {print $4}' "$results" | median)"
        case "$c" in
            identical) what="table_diff, identical" ;;
            differing) what="table_diff, $((n / 1000)) rows differ" ;;
            repair) what="repair of those" ;;
        esac
        printf '  %-9s %-26s %10s %14s %14s\n' "$n" "$what" "$ms" "$bytes" "$size"
    done
done
rm -f "$results"
