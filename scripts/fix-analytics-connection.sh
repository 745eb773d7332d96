#!/usr/bin/env bash
# Repairs the analytics connection between fechatter_server and analytics_server, step by step, printing ✅ or ❌
# (with what to do) for each. Safe to run again: it never deletes or narrows anything.
#   1. NATS answers at $NATS_URL (a local one is started, with JetStream, if it does not)
#   2. JetStream is enabled, and the ANALYTICS stream (fechatter.analytics.>, file storage, 30 days), its
#      dead-letter stream and the ingester's durable consumer exist (created or widened if not)
#   3. both services' configuration agree (messaging enabled on both sides, every subject the publisher uses
#      covered by the ingester's subscription)
#   4. a test event published to JetStream reaches ClickHouse through the running analytics_server
# Exit status: 0 when every step passed, 1 otherwise.
#
# Addresses come from the environment (defaults: the docker compose / run-local ports):
#   NATS_URL=nats://127.0.0.1:4222  NATS_MONITOR_PORT=8222  CLICKHOUSE_URL=http://127.0.0.1:8123
#   CLICKHOUSE_USER=default  CLICKHOUSE_PASSWORD=  (any ANALYTICS__… / FECHATTER__… override is passed through)
#   PROBE_TIMEOUT_SECONDS=  how long step 4 waits for its event in ClickHouse (default: send-test-event's)
# When the services run under docker compose, the checks run inside their containers (docker compose exec), so
# they see the containers' configuration. Otherwise the release binaries are used (built, or brought up to date;
# FECHATTER_BIN_DIR=dir picks others). A NATS server this script starts keeps its data and pid under
# $FECHATTER_STATE_DIR (default ~/.local/state/fechatter), where `scripts/run-local.sh stop` finds it.
set -uo pipefail
cd "$(dirname "$0")/.."

NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
NATS_MONITOR_PORT=${NATS_MONITOR_PORT:-8222}
CLICKHOUSE_URL=${CLICKHOUSE_URL:-http://127.0.0.1:8123}
STATE_DIR=${FECHATTER_STATE_DIR:-$HOME/.local/state/fechatter}
FAILED=0

ok() { printf '✅ %s\n' "$*"; }
bad() { printf '❌ %s\n' "$*"; FAILED=1; }
finish() {
    if [ "$FAILED" = 0 ]; then ok "analytics connection OK"; else printf '❌ %s\n' "analytics connection NOT OK (see above)"; fi
    exit "$FAILED"
}

# host and port of a nats:// URL
nats_host=${NATS_URL#nats://}; nats_host=${nats_host%%/*}
nats_port=${nats_host##*:}; nats_host=${nats_host%:*}
[ "$nats_port" = "$nats_host" ] && nats_port=4222

# --- how to run the two binaries: inside the compose containers, or locally ------------------------------
compose_running() {
    command -v docker >/dev/null 2>&1 &&
        docker compose ps --status running --services 2>/dev/null | grep -qx "$1"
}
BIN_DIR=${FECHATTER_BIN_DIR:-target/release}
local_binaries() {
    # The default configuration is compiled into the binaries, so an edited analytics.yml or chat.yml takes
    # effect only in a fresh build: build unless binaries were named (cargo does nothing when they are current).
    local have_binaries=1
    [ -x "$BIN_DIR/analytics_server" ] && [ -x "$BIN_DIR/fechatter_server" ] || have_binaries=0
    if [ -n "${FECHATTER_BIN_DIR:-}" ] && [ "$have_binaries" = 1 ]; then
        return
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        if [ "$have_binaries" = 1 ]; then
            echo "⚠️  cargo not found: using $BIN_DIR as built (an edited analytics.yml or chat.yml needs a rebuild)"
            return
        fi
        bad "no binaries in $BIN_DIR and no cargo to build them: install Rust, or set FECHATTER_BIN_DIR"
        finish
    fi
    echo "building the release binaries (nothing to do when they are current) …"
    if ! build_log=$(cargo build --release -p analytics_server -p fechatter_server --bins 2>&1); then
        printf '%s\n' "$build_log" | tail -n 20
        bad "cargo build failed (above): fix it, or set FECHATTER_BIN_DIR to binaries built elsewhere"
        finish
    fi
    BIN_DIR=target/release
}
analytics() {
    if compose_running analytics_server; then
        docker compose exec -T analytics_server analytics_server "$@"
    else
        ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL=${ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL:-$NATS_URL} \
        ANALYTICS__CLICKHOUSE__URL=${ANALYTICS__CLICKHOUSE__URL:-$CLICKHOUSE_URL} \
        ANALYTICS__CLICKHOUSE__USER=${ANALYTICS__CLICKHOUSE__USER:-${CLICKHOUSE_USER:-default}} \
        ANALYTICS__CLICKHOUSE__PASSWORD=${ANALYTICS__CLICKHOUSE__PASSWORD:-${CLICKHOUSE_PASSWORD:-}} \
        RUST_LOG=${RUST_LOG:-warn} "$BIN_DIR/analytics_server" "$@"
    fi
}
fechatter() {
    if compose_running fechatter_server; then
        docker compose exec -T fechatter_server fechatter_server "$@"
    else
        # The key paths are required configuration; analytics-config does not read the keys.
        FECHATTER__MESSAGING__NATS_URL=${FECHATTER__MESSAGING__NATS_URL:-$NATS_URL} \
        FECHATTER__AUTH__PRIVATE_KEY_PATH=${FECHATTER__AUTH__PRIVATE_KEY_PATH:-$STATE_DIR/keys/private.pem} \
        FECHATTER__AUTH__PUBLIC_KEY_PATH=${FECHATTER__AUTH__PUBLIC_KEY_PATH:-$STATE_DIR/keys/public.pem} \
        RUST_LOG=${RUST_LOG:-warn} "$BIN_DIR/fechatter_server" "$@"
    fi
}
compose_running analytics_server || local_binaries

# --- 1. NATS ------------------------------------------------------------------------------------------------
nats_answers() { (exec 3<>"/dev/tcp/$nats_host/$nats_port") 2>/dev/null; }
if nats_answers; then
    ok "NATS answers at $NATS_URL"
elif compose_running analytics_server; then
    # The containers reach NATS as nats:4222; a server started here would serve nobody.
    bad "NATS does not answer at $NATS_URL while the services run under docker compose: docker compose up -d nats"
    finish
elif [ "$nats_host" = 127.0.0.1 ] || [ "$nats_host" = localhost ]; then
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
        bad "NATS is down at $NATS_URL and nats-server is not installed: run scripts/install-deps.sh"
        finish
    fi
    mkdir -p "$STATE_DIR/nats" "$STATE_DIR/pids" "$STATE_DIR/logs"
    PATH=$PATH:/usr/sbin nohup nats-server -a 127.0.0.1 -p "$nats_port" -m "$NATS_MONITOR_PORT" -js \
        -sd "$STATE_DIR/nats" >"$STATE_DIR/logs/nats.log" 2>&1 &
    echo $! >"$STATE_DIR/pids/nats.pid"
    for _ in $(seq 1 50); do nats_answers && break; sleep 0.1; done
    if nats_answers; then
        ok "NATS was down: started nats-server with JetStream on $nats_port (pid $(cat "$STATE_DIR/pids/nats.pid"), store $STATE_DIR/nats; scripts/run-local.sh stop stops it)"
    else
        bad "NATS was down and did not start on $nats_port: see $STATE_DIR/logs/nats.log"
        finish
    fi
else
    bad "NATS does not answer at $NATS_URL: start it (docker compose up -d nats), or fix NATS_URL"
    finish
fi

# --- 2. JetStream, streams and consumer ---------------------------------------------------------------------
if ! analytics ensure-stream; then
    bad "could not set up JetStream (see the error above): nats-server must run with -js (--jetstream)"
    finish
fi

# --- 3. configuration of both services ----------------------------------------------------------------------
publisher=$(fechatter analytics-config) ||
    bad "could not read fechatter_server's configuration (fechatter_server analytics-config failed)"
if [ -n "${publisher:-}" ]; then
    printf '%s\n' "$publisher" | analytics check-publisher - ||
        bad "the services' configuration disagree: fix the keys named above, then restart the services"
fi

# --- 4. an event, end to end --------------------------------------------------------------------------------
analytics send-test-event ${PROBE_TIMEOUT_SECONDS:+--timeout-seconds "$PROBE_TIMEOUT_SECONDS"} ||
    bad "the test event did not reach ClickHouse: start analytics_server (scripts/run-local.sh or docker compose up -d) and check its log and analytics_server status"

finish
