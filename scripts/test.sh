#!/usr/bin/env bash
# `make test`: everything from a fresh machine to a full test run.
#   1. install what is missing (scripts/setup.sh: apt packages, the Python venv, Garage)
#   2. lint: rustfmt and clippy with warnings denied; the SAM template checked offline
#   3. build the release Lambda binaries the integration tests drive
#   4. start the local S3 servers, run every test (release profile, one build for all), then a
#      smoke run of the benchmark (bench/run.sh installs nginx, rclone and the peers it needs)
#   5. stop the servers (KEEP_STACK=1 leaves them running)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh

# One feature set for lint, build and test, so the workspace compiles once: the test-only
# fault hook (`sluice::fault`, SLUICE_FAULT) is compiled in here and never in `make build`.
FEATURES=(--features sluice/fault-injection)

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release "${FEATURES[@]}" -- -D warnings

echo "== validate (SAM template, offline)"
bash scripts/validate.sh

echo "== build"
cargo build --release --workspace --bins "${FEATURES[@]}"

echo "== stack"
bash scripts/stack.sh up
if [[ "${KEEP_STACK:-0}" != 1 ]]; then
    trap 'bash scripts/stack.sh down' EXIT
fi

echo "== test"
cargo test --release --workspace "${FEATURES[@]}" -- ${TEST_ARGS:-}

echo "== bench smoke (every tool of make bench once per box, 8 MiB)"
BENCH_SMOKE=1 BENCH_SKIP_SETUP=1 BENCH_SKIP_BUILD=1 bash bench/run.sh
