#!/usr/bin/env bash
# `make demo`: on a fresh machine, install what is missing, start Garage, and stream a generated
# JSON document (DEMO_SIZE_MIB, default 1024) through the real ingest-http bootstrap inside a
# 256 MB memory cgroup, gzip-compressed, into s3://sluice-demo/; then a generated
# parking-violations CSV (DEMO_TRANSFORM_MIB, default 512) through transform-s3 and the seed
# pipeline; a job cut into invocations of DEMO_INVOCATION_SECS (default 2) continued to its end;
# then the `sluice` command validates a sample event and runs it without Lambda, once
# into one object and once partitioned by two of the records' fields.
# Prints the summaries and the objects. The servers stay up afterwards (`make stack-down` stops them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# The build `make test` and `make watch` use (same features), so the three compile once.
cargo build --release --workspace --bins --features sluice/fault-injection
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
echo "=== ingest-http: an HTTP body into S3"
target/release/sluice-local demo --size-mib "${DEMO_SIZE_MIB:-1024}" \
    --compression "${DEMO_COMPRESSION:-gzip}" --memory-mb "${DEMO_MEMORY_MB:-256}"
echo
echo "=== ingest-http: a job longer than one invocation (each cut at ${DEMO_INVOCATION_SECS:-2} s), continued until it ends"
target/release/sluice-local continue --size-mib "${DEMO_CONTINUE_MIB:-1024}" \
    --compression "${DEMO_COMPRESSION:-gzip}" --invocation-secs "${DEMO_INVOCATION_SECS:-2}"
echo
echo "=== transform-s3: an object lands, a typed and filtered copy lands beside it (each invocation cut at ${DEMO_TRANSFORM_INVOCATION_SECS:-1} s, continued as the transform job state machine does)"
target/release/sluice-local transform --size-mib "${DEMO_TRANSFORM_MIB:-512}" \
    --memory-mb "${DEMO_MEMORY_MB:-256}" --invocation-secs "${DEMO_TRANSFORM_INVOCATION_SECS:-1}"
echo
echo "=== sluice: the same jobs from the command line (no Lambda)"
target/release/sluice validate events/ingest-http.json
# `sluice-local watch` serves the 4 MiB big.json that events/ingest-http.json fetches (and the
# other samples' data), then runs the command with the stack's environment.
target/release/sluice-local watch --size-mib 4 -- \
    target/release/sluice run ingest events/ingest-http.json --memory-mb 256 --no-progress
echo
echo "=== sluice: the same records laid out by partition (kind=…/month=…/), with a run manifest"
target/release/sluice-local watch --size-mib 4 -- \
    target/release/sluice run ingest events/ingest-http.partitioned.json --memory-mb 256 --no-progress \
    | tail -n 1 | python3 -c '
import json, sys
s = json.load(sys.stdin)
p = s["partitioned"]
print("{} records in {} objects over {} partitions; run manifest s3://{}/{}".format(
    s["records"], p["objects"], p["partitions"], s["bucket"], s["manifest"]))'
