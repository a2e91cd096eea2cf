# shellcheck shell=bash
# Temporary PostgreSQL clusters for kinko's tests and benchmarks. Sourced by scripts/test and scripts/bench.
#
# A cluster lives entirely in one temporary directory (data, socket, log) on a free loopback port, with
# trust authentication for the role `kinko`, and is stopped and removed by pg_cleanup. initdb refuses to run
# as root, so as root the server runs as the `postgres` user (created by Debian's postgresql package); as any
# other user it runs as that user.

# Where initdb/pg_ctl/pgbench live: $PG_BIN if set, else the newest /usr/lib/postgresql/*/bin, else PATH.
pg_bin_dir() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n "$d" && -x "$d/initdb" ]]; then
        echo "$d"
        return
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return
    fi
    echo "pg.sh: no PostgreSQL server binaries (initdb) found; on Debian: apt-get install -y postgresql" >&2
    return 1
}

# Runs a command as the cluster's owner.
pg_as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A TCP port on 127.0.0.1 that nothing listens on right now (best effort: pg_start retries on a race).
pg_free_port() {
    local port tries=0
    while ((tries < 200)); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
        tries=$((tries + 1))
    done
    echo "pg.sh: no free port found" >&2
    return 1
}

# Creates and starts a cluster. Sets PG_DIR, PG_PORT, PG_URL (postgres://kinko@127.0.0.1:PORT/postgres)
# and PG_BIN_DIR. Call pg_cleanup (e.g. from an EXIT trap) to stop and remove it.
pg_start() {
    PG_BIN_DIR=$(pg_bin_dir)
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        echo "pg.sh: running as root but there is no 'postgres' user to run the server as" >&2
        return 1
    fi
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kinko-pg.XXXXXX")
    mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
    if [[ "$(id -u)" == 0 ]]; then
        chown -R postgres: "$PG_DIR"
    fi
    echo "pg: initdb in $PG_DIR/data ($PG_BIN_DIR)"
    if ! pg_as_owner "$PG_BIN_DIR/initdb" -D "$PG_DIR/data" -U kinko --auth=trust --no-sync -E UTF8 \
        --locale=C >"$PG_DIR/initdb.log" 2>&1; then
        cat "$PG_DIR/initdb.log" >&2
        return 1
    fi
    local attempt
    for attempt in 1 2 3 4 5; do
        PG_PORT=$(pg_free_port)
        echo "pg: starting on 127.0.0.1:$PG_PORT (attempt $attempt)"
        # fsync stays on: the ledger benchmark measures durable commits.
        if pg_as_owner "$PG_BIN_DIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
            -o "-p $PG_PORT -k $PG_DIR/sock -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" \
            start >/dev/null; then
            PG_URL="postgres://kinko@127.0.0.1:$PG_PORT/postgres"
            export PG_DIR PG_PORT PG_URL PG_BIN_DIR
            echo "pg: ready at $PG_URL"
            return 0
        fi
        tail -n 20 "$PG_DIR/server.log" >&2 || true
    done
    echo "pg.sh: could not start PostgreSQL" >&2
    return 1
}

# Stops and removes the cluster started by pg_start; safe to call twice or when nothing was started.
pg_cleanup() {
    if [[ -n "${PG_DIR:-}" && -d "$PG_DIR" ]]; then
        if [[ -f "$PG_DIR/data/postmaster.pid" ]]; then
            echo "pg: stopping cluster in $PG_DIR"
            pg_as_owner "$PG_BIN_DIR/pg_ctl" -D "$PG_DIR/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        fi
        rm -rf "$PG_DIR"
    fi
    PG_DIR=
}
