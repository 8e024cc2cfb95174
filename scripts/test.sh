#!/usr/bin/env bash
# Runs every test tier: pure Rust (decision core and its property test), #[pg_test] in a real
# PostgreSQL 15, pg_regress, and the multi-node tests on real clusters. Installs what is missing
# first.
# As root, PostgreSQL runs as the `postgres` user.
# Usage: scripts/test.sh [TIER...]   (tiers 1-4; default: all)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
ensure_deps

PGRX_TEST_DATA="$ROOT/target/pgrx-test-data"
runas=()
if is_root; then
    pg_owned_dir "$PGRX_TEST_DATA"
    runas=(--runas postgres --pgdata "$PGRX_TEST_DATA")
fi

# pg_regress on a fresh cluster of our own. (`cargo pgrx regress pg15` reads the same files, but
# pgrx 0.18.1 starts its server without --runas, so it cannot run as root.)
run_pg_regress() {
    install_extension
    local port
    port="$(free_port 55432)"
    rm -rf "$CLUSTER_ROOT/regress"
    trap stop_started_clusters EXIT
    # Without shared_preload_libraries: the tests also see the counters' "not available" fallback.
    PRELOAD= start_cluster regress "$port"
    mkdir -p "$ROOT/target/pg_regress"
    local tests
    tests="$(cd tests/pg_regress/sql && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | grep -v '^setup$' | sort)"
    PGOPTIONS="-c client_min_messages=warning" "$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress" \
        --inputdir="$ROOT/tests/pg_regress" --outputdir="$ROOT/target/pg_regress" \
        --bindir="$PGBIN" --host=127.0.0.1 --port="$port" --user=postgres \
        --dbname=mm_conflict_regress setup $tests || {
        cat "$ROOT/target/pg_regress/regression.diffs" 2>/dev/null || true
        return 1
    }
    stop_started_clusters
}

TIERS=("${@:-1 2 3 4}")
want() { [[ " ${TIERS[*]} " == *" $1 "* ]]; }

if want 1; then
    log "tier 1: pure Rust (decision core, property test)"
    cargo test -p mm_conflict_core
fi

if want 2; then
    log "tier 2: #[pg_test] (cargo pgrx test pg15)"
    cargo pgrx test pg15 "${runas[@]}"
fi

if want 3; then
    log "tier 3: pg_regress (tests/pg_regress)"
    run_pg_regress
fi

if want 4; then
    log "tier 4: multi-node (real clusters in a full mesh; MM_LONG=1 for 60 s loads)"
    # The normal build is installed by tier 3 (installed here when tier 3 did not run); clusters
    # run one test at a time.
    want 3 || install_extension
    cargo test -p mm_conflict_mesh_tests -- --test-threads=1 --nocapture
fi

log "tiers ${TIERS[*]} passed"
