#!/usr/bin/env bash
# `make demo`: on a fresh machine, install what is missing, start Garage, and stream a generated
# JSON document (DEMO_SIZE_MIB, default 1024) through the real ingest-http bootstrap inside a
# 256 MB memory cgroup, gzip-compressed, into s3://sluice-demo/; then a generated
# parking-violations CSV (DEMO_TRANSFORM_MIB, default 512) through transform-s3 and the seed
# pipeline. Prints the summaries and the objects. The servers stay up afterwards (`make stack-down` stops them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -p ingest-http -p transform-s3 -p sluice-tests --bin ingest-http \
    --bin transform-s3 --bin sluice-local
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
echo "=== ingest-http: an HTTP body into S3"
target/release/sluice-local demo --size-mib "${DEMO_SIZE_MIB:-1024}" \
    --compression "${DEMO_COMPRESSION:-gzip}" --memory-mb "${DEMO_MEMORY_MB:-256}"
echo
echo "=== transform-s3: an object lands, a typed and filtered copy lands beside it"
target/release/sluice-local transform --size-mib "${DEMO_TRANSFORM_MIB:-512}" \
    --memory-mb "${DEMO_MEMORY_MB:-256}"
