#!/usr/bin/env bash
# Tests the analytics path end to end, the way a user would: health of every service, their NATS connection,
# then the seed document's sign-in as super@none.org, then waits for that sign-in's user_login row in
# ClickHouse and reports how long it took. Exit status 0 only if the row landed. Needs only curl.
#
# Addresses come from the environment (defaults: the docker compose / run-local ports):
#   CHAT_URL=http://127.0.0.1:6688  ANALYTICS_URL=http://127.0.0.1:6690  NATS_MONITOR_URL=http://127.0.0.1:8222
#   CLICKHOUSE_URL=http://127.0.0.1:8123  CLICKHOUSE_USER=default  CLICKHOUSE_PASSWORD=
#   CLICKHOUSE_DATABASE=fechatter_analytics  SIGNIN_EMAIL=super@none.org  SIGNIN_PASSWORD=password123
#   WAIT_SECONDS=60 (the ingester flushes every flush_interval_seconds, 30 by default)
set -uo pipefail

CHAT_URL=${CHAT_URL:-http://127.0.0.1:6688}
ANALYTICS_URL=${ANALYTICS_URL:-http://127.0.0.1:6690}
NATS_MONITOR_URL=${NATS_MONITOR_URL:-http://127.0.0.1:8222}
CLICKHOUSE_URL=${CLICKHOUSE_URL:-http://127.0.0.1:8123}
CLICKHOUSE_USER=${CLICKHOUSE_USER:-default}
CLICKHOUSE_PASSWORD=${CLICKHOUSE_PASSWORD:-}
CLICKHOUSE_DATABASE=${CLICKHOUSE_DATABASE:-fechatter_analytics}
SIGNIN_EMAIL=${SIGNIN_EMAIL:-super@none.org}
SIGNIN_PASSWORD=${SIGNIN_PASSWORD:-password123}
WAIT_SECONDS=${WAIT_SECONDS:-60}
FAILED=0

ok() { printf '✅ %s\n' "$*"; }
bad() { printf '❌ %s\n' "$*"; FAILED=1; }
now_ms() { date +%s%3N; }
# value of a top-level JSON string or number field: json_field NAME < body (no jq needed)
json_field() { grep -o "\"$1\" *: *\"\{0,1\}[^\",}]*" | head -n 1 | sed 's/.*: *"\{0,1\}//'; }

# --- 1. health of every service -----------------------------------------------------------------------------
check_health() { # name, url
    if curl -fsS -m 5 "$2" >/dev/null 2>&1; then ok "$1 is up ($2)"; else bad "$1 does not answer at $2"; fi
}
check_health "fechatter_server" "$CHAT_URL/health"
check_health "analytics_server" "$ANALYTICS_URL/health"
check_health "ClickHouse" "$CLICKHOUSE_URL/ping"
if curl -fsS -m 5 "$NATS_MONITOR_URL/healthz" >/dev/null 2>&1; then
    ok "NATS is up ($NATS_MONITOR_URL/healthz)"
else
    printf '⚠️ %s\n' "NATS monitoring does not answer at $NATS_MONITOR_URL (the services' /ready below checks NATS itself)"
fi

# --- 2. the services' NATS connections (their readiness checks include NATS) --------------------------------
check_ready() { # name, url
    local body
    if body=$(curl -fsS -m 10 "$2" 2>/dev/null); then
        ok "$1 ready, connected to NATS: $body"
    else
        body=$(curl -sS -m 10 "$2" 2>&1)
        bad "$1 not ready ($2): $body"
    fi
}
check_ready "fechatter_server" "$CHAT_URL/ready"
check_ready "analytics_server" "$ANALYTICS_URL/ready"
if [ "$FAILED" != 0 ]; then
    bad "services are not healthy: start them (docker compose up, or scripts/run-local.sh), or run scripts/fix-analytics-connection.sh"
    exit 1
fi

# --- 3. the seed's sign-in ----------------------------------------------------------------------------------
started=$(now_ms)
signin=$(curl -sS -m 10 -X POST "$CHAT_URL/api/signin" -H "Content-Type: application/json" \
    -d "{\"email\": \"$SIGNIN_EMAIL\", \"password\": \"$SIGNIN_PASSWORD\"}")
token=$(printf '%s' "$signin" | json_field access_token)
if [ -z "$token" ]; then
    bad "sign-in as $SIGNIN_EMAIL failed: $signin (is the development seed applied? fechatter_server seed)"
    exit 1
fi
me=$(curl -sS -m 10 "$CHAT_URL/api/users/me" -H "Authorization: Bearer $token")
user_id=$(printf '%s' "$me" | json_field id)
if [ -z "$user_id" ]; then
    bad "GET /api/users/me did not name the user: $me"
    exit 1
fi
ok "signed in as $SIGNIN_EMAIL (user $user_id); waiting up to ${WAIT_SECONDS}s for its user_login event in ClickHouse"

# --- 4. the event in ClickHouse -----------------------------------------------------------------------------
# server_ts is stamped by fechatter_server; allow 5 s of clock difference between it and this machine.
query="SELECT count() FROM $CLICKHOUSE_DATABASE.analytics_events FINAL
       WHERE event_type = 'user_login' AND user_id = '$user_id' AND server_ts >= $((started - 5000))"
deadline=$(($(date +%s) + WAIT_SECONDS))
last=""
while [ "$(date +%s)" -le "$deadline" ]; do
    last=$(curl -sS -m 10 "$CLICKHOUSE_URL/" -H "X-ClickHouse-User: $CLICKHOUSE_USER" \
        -H "X-ClickHouse-Key: $CLICKHOUSE_PASSWORD" --data-binary "$query" 2>&1)
    if [ "${last//[[:space:]]/}" != "" ] && [ "${last//[[:space:]]/}" -gt 0 ] 2>/dev/null; then
        ok "user_login of user $user_id stored in ClickHouse $(($(now_ms) - started)) ms after the sign-in"
        exit 0
    fi
    sleep 0.5
done
bad "no user_login row for user $user_id after ${WAIT_SECONDS}s (last answer: ${last:-none}); run scripts/fix-analytics-connection.sh"
exit 1
