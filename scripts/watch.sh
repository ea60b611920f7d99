#!/usr/bin/env bash
# `make watch`: the functions under `cargo lambda watch`, with everything their sample events in
# events/ need running locally (sluice-local watch): Garage, `big.json` served on
# 127.0.0.1:8088, the transform sample object, a Postgres with `orders`. In another shell:
#   make invoke FUNCTION=ingest-http EVENT=events/ingest-http.json
# Release build with the same features as `make test`, so after it nothing recompiles.
#   WATCH_PORT       invoke port (default 9000, what `make invoke` and `cargo lambda invoke` use)
#   WATCH_SIZE_MIB   size of the served JSON document and of the transform sample (default 64)
#   WATCH_FLAGS      more `cargo lambda watch` flags (e.g. --ignore-changes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FEATURES=(--features sluice/fault-injection)
bash scripts/setup.sh
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
# The whole workspace, as `make test` builds it: `cargo lambda watch` then runs each function
# with `cargo run --bin`, which resolves features the same way and finds it built.
cargo build --release --workspace --bins "${FEATURES[@]}"
export PATH="$ROOT/.venv/bin:$PATH"
# shellcheck disable=SC2086
exec target/release/sluice-local watch --size-mib "${WATCH_SIZE_MIB:-64}" -- \
    cargo lambda watch --release "${FEATURES[@]}" --invoke-port "${WATCH_PORT:-9000}" ${WATCH_FLAGS:-}
