#!/usr/bin/env bash
# What each part of a message send costs PostgreSQL: runs the send statement of `chat::store::send_messages`, for
# one message (scalar parameters instead of its arrays), and its parts with pgbench (prepared, as sqlx runs it),
# against a private PostgreSQL with the schema of fechatter_server/migrations and, as send_bench, PostgreSQL's
# default durability (a commit returns once it is on disk; DURABILITY=off runs with the tests' settings, fsync
# off), 16 clients on one chat.
#
# Usage: [DURABILITY=on|off] fechatter_server/benches/send_statement/run.sh [seconds per run, default 8] [rounds, default 2]
# raw.sql and message_insert.sql are the baselines; the send variants are put together from parts/.
# Prints transactions per second per variant (median of the rounds, run in alternating order) and each
# variant's ratio to raw.sql.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
migrations=$here/../../migrations
seconds=${1:-8}
rounds=${2:-2}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed: run scripts/install-deps.sh" >&2; exit 1; }
[ -x "$PG_BIN/pgbench" ] || { echo "pgbench is not installed: run scripts/install-deps.sh" >&2; exit 1; }

dir=$(mktemp -d)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$dir"
cleanup() { as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C -N >/dev/null
printf "listen_addresses='127.0.0.1'\nport=%s\nunix_socket_directories='%s'\n" "$port" "$dir" >>"$dir/data/postgresql.conf"
case "${DURABILITY:-on}" in
    on) ;;
    off) printf "fsync=off\nsynchronous_commit=off\nfull_page_writes=off\n" >>"$dir/data/postgresql.conf" ;;
    *) echo "DURABILITY must be on or off, not '$DURABILITY'" >&2; exit 2 ;;
esac
as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
psql=(psql -qX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres)

# The send statement's variants, put together from parts/: name, with a row of its own in the outbox for the event
# (the design before 2026-11-30, for comparison), with the live-update journal row (1) or with the journal row
# carrying the event too (2: the server's statement with analytics on).
statement() {
    local name=$1 event=$2 live=$3 columns="EXISTS (SELECT 1 FROM member) AS is_member"
    {
        echo '\set u random(1, 16)'
        grep -v '^--' "$here/parts/send.sql"
        if [ "$event" = 1 ]; then
            echo ','; grep -v '^--' "$here/parts/event.sql"
            columns+=", (SELECT count(*) FROM event) AS events"
        fi
        if [ "$live" = 1 ]; then
            echo ','; grep -v '^--' "$here/parts/live.sql"
            columns+=", (SELECT count(*) FROM live_notice) AS notices"
        fi
        if [ "$live" = 2 ]; then
            echo ','; grep -v '^--' "$here/parts/live_with_event.sql"
            columns+=", (SELECT count(*) FROM live_notice) AS notices"
        fi
        echo "SELECT $columns, ins.* FROM (SELECT) AS one LEFT JOIN ins ON true;"
    } >"$dir/$name.sql"
}
cp "$here/raw.sql" "$here/message_insert.sql" "$dir/"
statement send_off_without_live 0 0
statement send_off 0 1
statement send_on 0 2
statement send_on_outbox_row 1 1
variants=(raw message_insert send_off_without_live send_off send_on send_on_outbox_row)
declare -A tps
for round in $(seq 1 "$rounds"); do
    order=("${variants[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=(); for ((i = ${#variants[@]} - 1; i >= 0; i--)); do order+=("${variants[$i]}"); done
    fi
    for v in "${order[@]}"; do
        # A fresh database per run: no run inherits another's rows, dead tuples or autovacuum.
        db="b_${v}_$round"
        "${psql[@]}" -d postgres -c "CREATE DATABASE $db"
        for m in "$migrations"/*.sql; do "${psql[@]}" -d "$db" -f "$m"; done
        "${psql[@]}" -d "$db" -c "
            INSERT INTO workspaces (name) VALUES ('bench');
            INSERT INTO users (workspace_id, fullname, email, password_hash)
                SELECT 1, 'user ' || g, 'user' || g || '@bench.local', 'x' FROM generate_series(1, 16) g;
            INSERT INTO chats (workspace_id, name, chat_type, owner_id) VALUES (1, 'bench', 'group', 1);
            INSERT INTO chat_members (chat_id, user_id) SELECT 1, id FROM users;
            CREATE TABLE raw_bench (id BIGSERIAL PRIMARY KEY, chat_id BIGINT, sender_id BIGINT, content TEXT,
                created_at TIMESTAMPTZ DEFAULT now());"
        # Generic plans, as the server's send connections use (`chat::send_queue`): no planning per execution.
        rate=$(PGOPTIONS="-c plan_cache_mode=force_generic_plan" "$PG_BIN/pgbench" -M prepared -n \
            -h 127.0.0.1 -p "$port" -U postgres -c 16 -j 2 -T "$seconds" \
            -f "$dir/$v.sql" "$db" 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        [ -n "$rate" ] || { echo "pgbench failed on $v.sql" >&2; exit 1; }
        printf '  round %s: %-28s %8.0f/s\n' "$round" "$v" "$rate"
        tps[$v]="${tps[$v]:-} $rate"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
raw=$(echo "${tps[raw]}" | median)
echo
printf '| %-28s | %10s | %6s |\n' statement "per second" "of raw"
printf '|%s|%s|%s|\n' "------------------------------" "-----------:" "-------:"
for v in "${variants[@]}"; do
    m=$(echo "${tps[$v]}" | median)
    printf '| %-28s | %10.0f | %6.2f |\n' "$v.sql" "$m" "$(awk -v m="$m" -v r="$raw" 'BEGIN {print m / r}')"
done
