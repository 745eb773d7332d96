#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs the servers the tests need (NATS with JetStream,
# ClickHouse, PostgreSQL, chDB) when missing, checks formatting and lints, then runs every test. The tests start
# their own private servers on free ports in temporary directories; nothing system-wide is used or changed.
#
# Usage: scripts/test.sh [--full] [extra cargo test arguments]
#   --full  the reliability suite at full size (100k events, 60 s outages, 10x fuzz cases; tens of minutes)
#           instead of the sizes that fit CI; see docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--full" ]; then
    export FECHATTER_TEST_FULL=1
    shift
fi

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh
# fmt and clippy are rustup components that a minimal toolchain lacks.
for component in rustfmt:fmt clippy:clippy; do
    if ! cargo "${component#*:}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || { echo "test.sh: cargo ${component#*:} is missing: install the ${component%%:*} component" >&2; exit 1; }
        rustup component add "${component%%:*}"
    fi
done

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (cargo test --workspace)"
cargo test --workspace --locked "$@"

step "all checks passed"
