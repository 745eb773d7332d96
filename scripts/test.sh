#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs the servers the tests need (NATS with JetStream,
# ClickHouse, PostgreSQL, chDB) when missing, checks formatting and lints, then runs every test. The tests start
# their own private servers on free ports in temporary directories; nothing system-wide is used or changed.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (cargo test --workspace)"
cargo test --workspace --locked "$@"

step "all checks passed"
