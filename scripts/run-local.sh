#!/usr/bin/env bash
# Runs Fechatter on this machine without Docker: installs missing servers from the distribution, starts NATS
# (JetStream) on 4222, PostgreSQL on 5432 and ClickHouse on 8123 — reusing ones already running and healthy —
# then builds and starts analytics_server (6690) and fechatter_server (6688), applies the development seed
# (super@none.org / password123) and prints the URLs and the sign-in curl.
#
# Usage: scripts/run-local.sh          start (foreground: ctrl-c stops what this script started)
#        scripts/run-local.sh stop     stop what an earlier run started in the background (--detach)
#        scripts/run-local.sh --detach start in the background and return
# State (server data, logs, pids) lives in $FECHATTER_STATE_DIR (default ~/.local/state/fechatter).
set -euo pipefail
cd "$(dirname "$0")/.."
# nats-server and clickhouse-server live in /usr/sbin, which a user's PATH often lacks.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

STATE_DIR=${FECHATTER_STATE_DIR:-$HOME/.local/state/fechatter}
NATS_PORT=${NATS_PORT:-4222}
NATS_MONITOR_PORT=${NATS_MONITOR_PORT:-8222}
CLICKHOUSE_HTTP_PORT=${CLICKHOUSE_HTTP_PORT:-8123}
CLICKHOUSE_TCP_PORT=${CLICKHOUSE_TCP_PORT:-9000}
ANALYTICS_PORT=${ANALYTICS_PORT:-6690}
CHAT_PORT=${CHAT_PORT:-6688}
PG_PORT=${PG_PORT:-5432}
# The newest PostgreSQL's server programs; empty until install-deps.sh has installed one.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true; }
PG_BIN=$(pg_bin)
mkdir -p "$STATE_DIR/pids" "$STATE_DIR/logs"

ok() { printf '✅ %s\n' "$*"; }
fail() { printf '❌ %s\n' "$*" >&2; exit 1; }

# True when process $1 runs the program this script started as $2 (its pidfile's name).
started_here() {
    local program=$2
    case "$program" in nats) program=nats-server ;; clickhouse) program=clickhouse ;; esac
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$program"
}

stop_started() {
    local pidfile name pid pgdata
    for pidfile in "$STATE_DIR"/pids/*.pid; do
        [ -e "$pidfile" ] || continue
        name=$(basename "$pidfile" .pid)
        pid=$(cat "$pidfile")
        # Only the process this script started: after a reboot the pid may belong to something else.
        if kill -0 "$pid" 2>/dev/null && started_here "$pid" "$name"; then
            kill -TERM "$pid" && ok "stopped $name (pid $pid)"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
    for pidfile in "$STATE_DIR"/pids/*.pgctl; do
        [ -e "$pidfile" ] || continue
        pgdata=$(cut -d: -f2- "$pidfile")
        if [ -z "$PG_BIN" ]; then
            printf '⚠️  no PostgreSQL programs to stop %s with\n' "$pgdata" >&2
        elif [ "$(id -u)" = 0 ]; then
            runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true
        else
            "$PG_BIN/pg_ctl" -D "$pgdata" -m fast stop >/dev/null 2>&1 || true
        fi
        rm -f "$pidfile"
        ok "stopped PostgreSQL ($pgdata)"
    done
}

DETACH=0
case "${1:-}" in
    "") ;;
    stop)
        stop_started
        exit 0
        ;;
    --detach) DETACH=1 ;;
    -h | --help)
        sed -n '2,10p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--detach | stop]" >&2
        exit 2
        ;;
esac
# A second start would find the ports taken, and report the first run's servers as its own.
for port in "$ANALYTICS_PORT" "$CHAT_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is in use: Fechatter already runs (scripts/run-local.sh stop), or set ANALYTICS_PORT / CHAT_PORT"
    fi
done
if [ "$DETACH" = 0 ]; then
    # From here on, ctrl-c stops what this run has started so far.
    trap 'echo; stop_started; exit 130' INT TERM
fi

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$what did not become ready (logs in $STATE_DIR/logs)"
}

start_bg() { # name, log, command...
    local name=$1 log=$2; shift 2
    nohup "$@" >"$log" 2>&1 &
    echo $! >"$STATE_DIR/pids/$name.pid"
}

scripts/install-deps.sh
PG_BIN=$(pg_bin)

# NATS with JetStream: reuse a healthy server on the port, else start one.
if curl -fsS "http://127.0.0.1:$NATS_MONITOR_PORT/jsz" >/dev/null 2>&1 || (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then
    if jsz=$(curl -fsS "http://127.0.0.1:$NATS_MONITOR_PORT/jsz" 2>/dev/null); then
        # A NATS without JetStream answers too, and analytics_server could then not create its stream. (NATS 2.9's
        # /healthz?js-enabled-only=true says ok without JetStream; /jsz says "disabled": true.)
        if printf '%s' "$jsz" | grep -q '"disabled": *true'; then
            fail "the NATS server on $NATS_PORT runs without JetStream: restart it with -js, or stop it and run this again"
        fi
        ok "NATS with JetStream already running on $NATS_PORT (reused)"
    else
        ok "NATS already running on $NATS_PORT (reused; no monitoring port to check JetStream: analytics_server will say if it is off)"
    fi
else
    mkdir -p "$STATE_DIR/nats"
    start_bg nats "$STATE_DIR/logs/nats.log" nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$STATE_DIR/nats"
    wait_for "NATS" curl -fsS "http://127.0.0.1:$NATS_MONITOR_PORT/healthz"
    ok "NATS started on $NATS_PORT (JetStream, store $STATE_DIR/nats)"
fi

# ClickHouse: reuse a healthy server on the port, else start one from a private config.
if curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" >/dev/null 2>&1; then
    ok "ClickHouse already running on $CLICKHOUSE_HTTP_PORT (reused)"
else
    CH=$STATE_DIR/clickhouse
    mkdir -p "$CH/data" "$CH/tmp" "$CH/user_files" "$CH/format_schemas"
    cat >"$CH/users.xml" <<XML
<yandex>
  <profiles><default><allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type></default></profiles>
  <users><default><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
    cat >"$CH/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$CH/server.log</log><errorlog>$CH/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
  <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
  <path>$CH/data/</path>
  <tmp_path>$CH/tmp/</tmp_path>
  <user_files_path>$CH/user_files/</user_files_path>
  <format_schema_path>$CH/format_schemas/</format_schema_path>
  <users_config>$CH/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
    # The distribution's package installs clickhouse-server; the official single binary is `clickhouse server`.
    if command -v clickhouse-server >/dev/null 2>&1; then
        start_bg clickhouse "$STATE_DIR/logs/clickhouse.log" clickhouse-server --config-file="$CH/config.xml"
    else
        start_bg clickhouse "$STATE_DIR/logs/clickhouse.log" clickhouse server --config-file="$CH/config.xml"
    fi
    wait_for "ClickHouse" curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"
    ok "ClickHouse started on $CLICKHOUSE_HTTP_PORT (data $CH/data)"
fi

# PostgreSQL: reuse a server answering on the port, else start a private cluster.
if pg_isready -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
    ok "PostgreSQL already running on $PG_PORT (reused)"
else
    [ -n "$PG_BIN" ] || fail "no PostgreSQL server programs in /usr/lib/postgresql/*/bin (scripts/install-deps.sh installs them)"
    PGDATA_DIR=$STATE_DIR/postgres
    PG_LOG=$STATE_DIR/logs/postgres.log
    as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    # As root, the cluster runs as postgres, which cannot reach a state directory under /root (mode 0700).
    if [ "$(id -u)" = 0 ] && ! as_postgres test -x "$STATE_DIR"; then
        PGDATA_DIR=/var/lib/fechatter/postgres-$PG_PORT
        PG_LOG=/var/lib/fechatter/postgres-$PG_PORT.log
        mkdir -p /var/lib/fechatter
    fi
    if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
        mkdir -p "$PGDATA_DIR"
        [ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"
        as_postgres "$PG_BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres >"$STATE_DIR/logs/initdb.log"
    fi
    # pg_ctl writes its log as the postgres user.
    touch "$PG_LOG"
    [ "$(id -u)" = 0 ] && chown postgres "$PG_LOG"
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" \
        -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1" -w start >/dev/null
    echo "pg_ctl:$PGDATA_DIR" >"$STATE_DIR/pids/postgres.pgctl"
    ok "PostgreSQL started on $PG_PORT (data $PGDATA_DIR)"
fi
DATABASE_URL=${FECHATTER__DATABASE__URL:-postgres://postgres@127.0.0.1:$PG_PORT/fechatter}
DB_NAME=${DATABASE_URL##*/}
DB_NAME=${DB_NAME%%\?*}
# -w: never prompt; a server that wants a password it was not given is named instead.
if ! exists=$(psql -w "${DATABASE_URL%/*}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" 2>&1); then
    fail "PostgreSQL refused ${DATABASE_URL%/*}/postgres: $exists (set FECHATTER__DATABASE__URL, with a password if it needs one)"
fi
[ "$exists" = 1 ] || psql -w "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE \"$DB_NAME\""

# FECHATTER_BIN_DIR=dir runs binaries built elsewhere (the tests use their debug build) instead of building.
BIN_DIR=${FECHATTER_BIN_DIR:-target/release}
if [ -z "${FECHATTER_BIN_DIR:-}" ]; then
    cargo build --release -p analytics_server -p fechatter_server --bins
fi
ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL=${ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL:-nats://127.0.0.1:$NATS_PORT} \
ANALYTICS__CLICKHOUSE__URL=${ANALYTICS__CLICKHOUSE__URL:-http://127.0.0.1:$CLICKHOUSE_HTTP_PORT} \
ANALYTICS__SERVER__PORT=$ANALYTICS_PORT \
    start_bg analytics_server "$STATE_DIR/logs/analytics_server.log" "$BIN_DIR/analytics_server"
wait_for "analytics_server" curl -fsS "http://127.0.0.1:$ANALYTICS_PORT/health"
ok "analytics_server started on $ANALYTICS_PORT"

# Signing keys are generated once per machine and never committed.
if [ ! -s "$STATE_DIR/keys/private.pem" ]; then
    "$BIN_DIR/fechatter_server" gen-keys "$STATE_DIR/keys" >/dev/null
    chmod 600 "$STATE_DIR/keys/private.pem"
fi
export FECHATTER__DATABASE__URL=$DATABASE_URL
export FECHATTER__MESSAGING__NATS_URL=${FECHATTER__MESSAGING__NATS_URL:-nats://127.0.0.1:$NATS_PORT}
export FECHATTER__AUTH__PRIVATE_KEY_PATH=$STATE_DIR/keys/private.pem
export FECHATTER__AUTH__PUBLIC_KEY_PATH=$STATE_DIR/keys/public.pem
export FECHATTER__FILES__DIR=${FECHATTER__FILES__DIR:-$STATE_DIR/files}
export FECHATTER__SERVER__PORT=$CHAT_PORT
"$BIN_DIR/fechatter_server" seed
start_bg fechatter_server "$STATE_DIR/logs/fechatter_server.log" "$BIN_DIR/fechatter_server"
wait_for "fechatter_server" curl -fsS "http://127.0.0.1:$CHAT_PORT/health"
ok "fechatter_server started on $CHAT_PORT"

cat <<TXT

  fechatter_server  http://127.0.0.1:$CHAT_PORT/health   /ready   /metrics   /swagger-ui
  analytics_server  http://127.0.0.1:$ANALYTICS_PORT/health   /ready   /metrics
  NATS              nats://127.0.0.1:$NATS_PORT (monitoring http://127.0.0.1:$NATS_MONITOR_PORT/jsz)
  ClickHouse        http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
  PostgreSQL        $DATABASE_URL
  Logs              $STATE_DIR/logs/

  Sign in as the development user (a user_login row lands in ClickHouse within flush_interval_seconds):
    curl -X POST http://127.0.0.1:$CHAT_PORT/api/signin -H "Content-Type: application/json" \
      -d '{"email": "super@none.org", "password": "password123"}'

  Send an event from a client app:
    curl -X POST http://127.0.0.1:$ANALYTICS_PORT/api/event -H 'Content-Type: application/json' \\
      -d '{"context": {"userId": "123"}, "userLogin": {"email": "super@none.org", "loginMethod": "password"}}'
  Watch events live, decoded:      $BIN_DIR/analytics_server monitor
  Stream and consumer state:       $BIN_DIR/analytics_server status
  Check the whole path:            scripts/test-analytics-connection.sh
  Repair it:                       scripts/fix-analytics-connection.sh
  See it in ClickHouse:
    curl 'http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/' --data-binary \\
      'SELECT event_type, user_id, payload FROM fechatter_analytics.analytics_events FINAL ORDER BY server_ts DESC LIMIT 5'
TXT

if [ "$DETACH" = 1 ]; then
    echo "Running in the background; stop with: scripts/run-local.sh stop"
    exit 0
fi
echo "Following the service logs; ctrl-c stops what this script started."
tail -n 0 -f "$STATE_DIR/logs/analytics_server.log" "$STATE_DIR/logs/fechatter_server.log" &
TAIL=$!
trap 'kill "$TAIL" 2>/dev/null; echo; stop_started; exit 0' INT TERM
wait
