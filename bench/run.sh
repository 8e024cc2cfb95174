#!/usr/bin/env bash
# Every benchmark in one command (README "Benchmarks"): installs what is missing, builds and
# installs the release build (stop your own clusters that load mm_conflict first: the library is
# replaced in place), then runs, each on clusters of its own, side by side per variant:
#   1. bench/per_row_cost.sh     local path: 200k-row INSERT ... SELECT and UPDATE
#   2. bench/apply_catchup.sh    apply path: catch-up of 200k single-row transactions, plus the
#                                cost of each log_conflicts mode when every row is a conflict
#   3. bench/pgbench_one_node.sh the article's test1.sql on one node, 2 clients
#   4. bench/mesh.sh             3-node mesh under the article's workload; message volume, 2-5 nodes
#   5. bench/table_diff.sh       table_diff and repair between two nodes, 100k and 1M rows
#   6. bench/delta.sh            delta columns: local INSERT and UPDATE n = n + 1, and their apply
#   7. bench/capacity.sh         what a mesh can absorb: the highest sustained write rate of one
#                                node and of 3 nodes, beside no trigger and the C floor; on
#                                CAPACITY_MAJOR (default 18, where it is here: only 16+ can run a
#                                mesh without mm_resolve, with origin = none), built and installed
#                                there too
# and prints their tables. ROUNDS (default 3) applies to parts 1-6 (ROUNDS=1 took 7 minutes on 2
# cores without part 5); part 7 is one search per configuration (about 20 minutes).
#
# Usage: ROUNDS=3 bash bench/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$ROOT"
export ROUNDS="${ROUNDS:-3}"
ensure_deps
install_extension --release
tables="$(mktemp)"
run() { # TITLE SCRIPT [VAR=VALUE...]: runs SCRIPT, keeps the lines after its rounds
    local title="$1" script="$2"
    shift 2
    log "$title"
    # Keep the summary tables: titles, per-variant lines and the volume table.
    # (tee to a process substitution, not to /dev/stderr: opening that truncates a log file
    # that stdout and stderr were both redirected to.)
    env "$@" bash "$ROOT/bench/$script" | tee >(cat >&2) |
        grep -E '\):$|x$|median| in all |^ +nodes |^ +[0-9]+ +[0-9.]+ +[0-9.]+ |^ +rows +call|table_diff, |repair of' >>"$tables"
}
run "1/7 local path" per_row_cost.sh
run "2/7 apply path" apply_catchup.sh N=200000 REPORTS=1
run "3/7 pgbench on one node" pgbench_one_node.sh SECONDS_PER_RUN=10
run "4/7 the mesh" mesh.sh LOAD_SECONDS=30 K=2000
run "5/7 verify and repair" table_diff.sh
run "6/7 delta columns" delta.sh N=100000
capacity_major="${CAPACITY_MAJOR:-18}"
capacity_config="$(pg_config_for "$capacity_major" 2>/dev/null || true)"
if [ -z "$capacity_config" ]; then
    log "no PostgreSQL $capacity_major here: the capacity benchmark runs on $PG_MAJOR"
    capacity_major="$PG_MAJOR" capacity_config="$PG_CONFIG"
elif [ "$capacity_major" != "$PG_MAJOR" ]; then
    (use_pg "$capacity_major" && install_extension --release)
fi
run "7/7 what a mesh can absorb (PostgreSQL $capacity_major)" capacity.sh STEP_SECONDS=20 \
    PG_MAJOR="$capacity_major" PG_CONFIG="$capacity_config" PGBIN="$("$capacity_config" --bindir)"
log "results ($ROUNDS rounds)"
cat "$tables"
rm -f "$tables"
