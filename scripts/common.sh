# shellcheck shell=bash
# Helpers shared by scripts/demo.sh and scripts/test.sh. Source it; do not run it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_CONFIG="${PG_CONFIG:-/usr/bin/pg_config}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
PGRX_VERSION="0.18.1"
# Clusters started by the scripts live here (under the build directory).
CLUSTER_ROOT="${CLUSTER_ROOT:-$ROOT/target/mm_clusters}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a command with root rights: directly as root, else through sudo.
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# PostgreSQL refuses to run as root: as root, run server-side commands as `postgres`.
PG_USER="$(if is_root; then echo postgres; else id -un; fi)"
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Installs what is missing, and nothing when everything is there.
ensure_deps() {
    local missing=()
    local pkg
    for pkg in postgresql-15 postgresql-server-dev-15 postgresql-contrib sudo libclang-dev clang; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
    fi
    if ! grep -qs '^pg15 *= *"'"$PG_CONFIG"'"' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        log "cargo pgrx init --pg15 $PG_CONFIG"
        cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
    fi
}

# Builds and installs the extension into the system PostgreSQL 15 (sudo when not root).
install_extension() {
    log "building and installing mm_conflict into $($PG_CONFIG --pkglibdir)"
    if is_root; then
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

# Prints a free TCP port at or above $1.
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
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
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
