#!/usr/bin/env bash
# `make demo`: on a fresh machine, install what is missing, start Garage, and stream a generated
# JSON document (DEMO_SIZE_MIB, default 1024) through the real ingest-http bootstrap inside a
# 256 MB memory cgroup, gzip-compressed, into s3://sluice-demo/. Prints the summary and the
# object. The servers stay up afterwards (`make stack-down` stops them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -p ingest-http -p sluice-tests --bin ingest-http --bin sluice-local
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
exec target/release/sluice-local demo --size-mib "${DEMO_SIZE_MIB:-1024}" \
    --compression "${DEMO_COMPRESSION:-gzip}" --memory-mb "${DEMO_MEMORY_MB:-256}"
