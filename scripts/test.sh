#!/usr/bin/env bash
# Runs every test tier, on every supported PostgreSQL major. Installs what is missing first.
#   1. pure Rust: the decision core, the engine and its convergence property test (once);
#   2. #[pg_test]s in a real server (cargo pgrx test pgNN);
#   3. pg_regress (messages), isolation specs (races), and on 15 the upgrade test;
#   4. multi-node tests on real clusters: every scenario on majors with dblink (15, 18); on the
#      16 build, which has no contrib (no dblink), the meshes built by hand.
# As root, PostgreSQL runs as the `postgres` user; then also tiers 1-2 from a fresh clone in a
# directory only root may enter (the servers' directories go where postgres can reach them).
# Usage: [PG_VERSIONS="15 16 18"] scripts/test.sh [TIER...]   (tiers 1-4; default: all)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"
ensure_deps

TIERS=("${@:-1 2 3 4}")
want() { [[ " ${TIERS[*]} " == *" $1 "* ]]; }

# pg_regress and the isolation specs on a fresh cluster of the current major. (`cargo pgrx
# regress` reads the same files, but pgrx 0.18.1 starts its server without --runas, so it cannot
# run as root.) Alternative expected files (name_1.out) hold what differs on a server without
# dblink.
run_pg_regress() {
    local port out="$ROOT/target/pg_regress/$PG_MAJOR" iso="$ROOT/target/isolation/$PG_MAJOR"
    port="$(free_port 25432)"
    rm -rf "$CLUSTER_ROOT/regress-$PG_MAJOR" "$out" "$iso"
    mkdir -p "$out" "$iso"
    trap stop_started_clusters EXIT
    # Without shared_preload_libraries: the tests also see the counters' "not available" fallback.
    PRELOAD= start_cluster "regress-$PG_MAJOR" "$port"
    local tests specs
    tests="$(cd tests/pg_regress/sql && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | grep -v '^setup$' | sort)"
    PGOPTIONS="-c client_min_messages=warning" "$($PG_CONFIG --pkglibdir)/pgxs/src/test/regress/pg_regress" \
        --inputdir="$ROOT/tests/pg_regress" --outputdir="$out" \
        --bindir="$PGBIN" --host=127.0.0.1 --port="$port" --user=postgres \
        --dbname=mm_conflict_regress setup $tests || {
        cat "$out/regression.diffs" 2>/dev/null || true
        return 1
    }
    # Races made deterministic: isolation specs (PostgreSQL's isolation tester, from pgxs), on the
    # same cluster, in a database of their own.
    specs="$(cd tests/isolation/specs && ls ./*.spec | sed 's|^\./||; s|\.spec$||' | sort)"
    "$($PG_CONFIG --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress" \
        --inputdir="$ROOT/tests/isolation" --outputdir="$iso" \
        --bindir="$PGBIN" --host=127.0.0.1 --port="$port" --user=postgres \
        --dbname=mm_conflict_isolation --load-extension=mm_conflict $specs || {
        cat "$iso/regression.diffs" 2>/dev/null || true
        return 1
    }
    stop_started_clusters
}

# The package test: builds the release package of the current major with scripts/package.sh and
# removes what the source build installed. On 15 (Debian's server, which the package depends on)
# it installs the package with dpkg; on the other majors (PyPI wheels here, not Debian packages)
# it puts the package's library and scripts into the wheel's directories. Then it runs the
# pg_regress suite and the isolation specs against them, and removes them (dpkg -r on 15, which
# must leave nothing of the package; then on 15 the upgrade test once more, with the new version
# installed from the package); then installs the source build again.
package_test() {
    local deb package files left root
    deb="$(PG_VERSIONS="$PG_MAJOR" bash "$ROOT/scripts/package.sh" | tail -1)"
    package="$(dpkg-deb -f "$deb" Package)"
    local lib_dir ext_dir
    lib_dir="$("$PG_CONFIG" --pkglibdir)"
    ext_dir="$("$PG_CONFIG" --sharedir)/extension"
    as_root rm -f "$lib_dir/mm_conflict.so" "$ext_dir/mm_conflict.control" "$ext_dir"/mm_conflict--*.sql
    if [ "$lib_dir" = "/usr/lib/postgresql/$PG_MAJOR/lib" ] && dpkg -s "postgresql-$PG_MAJOR" >/dev/null 2>&1; then
        log "package test on PostgreSQL $PG_MAJOR: $(basename "$deb"), dpkg -i, pg_regress, dpkg -r"
        dpkg-deb -c "$deb"
        as_root dpkg -i "$deb" >/dev/null
        files="$(dpkg -L "$package" | while read -r f; do [ -f "$f" ] && echo "$f"; done)"
        [ -n "$files" ] || die "package $package installed no file"
        run_pg_regress
        as_root dpkg -r "$package" >/dev/null
        left="$(for f in $files; do [ -e "$f" ] && echo "$f"; done; true)"
        [ -z "$left" ] || die "files of $package left after dpkg -r: $left"
        ! dpkg -s "$package" >/dev/null 2>&1 || die "$package is still registered after dpkg -r"
        log "package test: $(basename "$deb") installed, passed pg_regress and the isolation specs, removed without a trace"
        # ALTER EXTENSION ... UPDATE with the package's scripts, from the oldest version.
        MM_UPGRADE_DEB="$deb" bash "$ROOT/scripts/upgrade_test.sh"
        as_root dpkg -r "$package" >/dev/null
    else
        log "package test on PostgreSQL $PG_MAJOR: $(basename "$deb"), its files in the server's directories (not a Debian server), pg_regress"
        root="$(mktemp -d)"
        dpkg-deb -x "$deb" "$root"
        as_root install -m 0755 "$root/usr/lib/postgresql/$PG_MAJOR/lib/mm_conflict.so" "$lib_dir/"
        as_root install -m 0644 "$root/usr/share/postgresql/$PG_MAJOR/extension/"* "$ext_dir/"
        rm -rf "$root"
        run_pg_regress
        log "package test: the files of $(basename "$deb") passed pg_regress and the isolation specs"
    fi
    install_extension >/dev/null
}

if want 1; then
    log "tier 1: pure Rust (decision core, engine, convergence property test)"
    cargo test -p mm_conflict_core
fi

for major in $PG_VERSIONS; do
    use_pg "$major"
    if want 2; then
        log "tier 2 on PostgreSQL $major: #[pg_test] (cargo pgrx test pg$major)"
        runas=()
        if is_root; then
            pg_owned_dir "$MM_WORK/pgrx-test-data-$major"
            runas=(--runas postgres --pgdata "$MM_WORK/pgrx-test-data-$major")
        fi
        cargo pgrx test "pg$major" "${runas[@]}"
    fi
    # After `cargo pgrx test`, the installed build is the test build: install the normal one.
    if want 3 || want 4; then
        install_extension >/dev/null
    fi
    if want 3; then
        log "tier 3 on PostgreSQL $major: pg_regress (tests/pg_regress), isolation specs (tests/isolation)"
        run_pg_regress
        if [ "$major" = 15 ]; then
            # 0.1.0 was built for 15 only.
            bash "$ROOT/scripts/upgrade_test.sh"
        fi
        if command -v dpkg-deb >/dev/null; then package_test; fi
    fi
    if want 4; then
        # Clusters run one test at a time; MM_LONG=1 for the long tier (60 s loads, 5 nodes).
        if has_dblink; then
            log "tier 4 on PostgreSQL $major: multi-node (real clusters in a full mesh)"
            filter=()
        else
            log "tier 4 on PostgreSQL $major: multi-node, the meshes built by hand (no dblink here)"
            filter=(by_hand)
        fi
        MM_PGBIN="$PGBIN" MM_PG_MAJOR="$major" \
            cargo test -p mm_conflict_mesh_tests -- --test-threads=1 --nocapture "${filter[@]}"
    fi
done

# A checkout under a directory only root may enter (as /root, or one made by mktemp -d): the
# servers run as postgres, so what they must reach goes elsewhere (MM_WORK in scripts/common.sh).
# Tiers 1-2 on PostgreSQL 15 from a fresh clone in such a directory, as root, built in this
# checkout's target directory (the clone is of the last commit).
if is_root && want 2 && [ -z "${MM_PRIVATE_CHECKOUT_TEST:-}" ] && [[ " $PG_VERSIONS " == *" 15 "* ]]; then
    private="$(mktemp -d)"
    log "private checkout: a fresh clone in $private (mode $(stat -c %a "$private")), tiers 1-2 on PostgreSQL 15"
    git clone -q "$ROOT" "$private/mm_conflict"
    (cd "$private/mm_conflict" &&
        env -u MM_WORK -u MM_WORK_GUESSED -u CLUSTER_ROOT_GIVEN -u MM_CLUSTER_ROOT -u CLUSTER_ROOT \
            -u PG_CONFIG -u PGBIN MM_PRIVATE_CHECKOUT_TEST=1 PG_VERSIONS=15 PG_MAJOR=15 \
            CARGO_TARGET_DIR="$ROOT/target" bash scripts/test.sh 1 2)
    rm -rf "$private" "/var/tmp/mm_conflict-$(printf '%s' "$private/mm_conflict" | sha1sum | cut -c1-12)"
fi

log "tiers ${TIERS[*]} passed on PostgreSQL ${PG_VERSIONS// /, }"
