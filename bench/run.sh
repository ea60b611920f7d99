#!/usr/bin/env bash
# `make bench`: sluice against the tools users pick instead (requests + boto3, smart_open,
# curl | aws s3 cp -, curl | rclone rcat; json.loads + boto3 and dlt for records; the seed's csv
# generator pipeline and polars for transform; pyarrow, DuckDB and dlt for records to Parquet;
# pyarrow, polars and DuckDB for the transform to Parquet; psycopg2 and psql | gzip | aws s3 cp -
# for the export of a table in a local Postgres), in an unconstrained
# box and Lambda boxes of 128 MB (cgroup v1: 128 MiB, 7.2% of a core), 256 MB (256 MiB, 14.5%)
# and 3,538 MB (3,538 MiB, two vCPUs), same nginx source, same Garage; every output read back
# and verified. See bench/README.md.
#
#   bash bench/run.sh                  full run: bench/results/<date>.{json,md,png} + README block
#   BENCH_SMOKE=1 bash bench/run.sh    8 MiB, every tool once in every box, results to a temp dir,
#                                      no README change (part of `make test`)
#
# Environment: BENCH_GIB (default 2), BENCH_RUNS (3), BENCH_ONLY (comma-separated substrings of
# configuration ids, e.g. `ingest/none,limit`), BENCH_BOXES (comma-separated boxes out of
# unconstrained, lambda-128mb, lambda-256mb, lambda-3538mb; default all four, smoke run included;
# a run with BENCH_BOXES leaves the README alone), BENCH_TIMEOUT_SECS (per run, 1800; smoke 180),
# BENCH_GZIP_LEVEL (the equal gzip level, default 1), BENCH_NO_README=1 (full run, README left
# alone), BENCH_OUT_DIR (full run: results elsewhere than bench/results), BENCH_SKIP_SETUP=1
# (skip scripts/setup.sh) and BENCH_SKIP_BUILD=1 (use the release binaries as built): for
# make test, which did both already. BENCH_RUST_LOG sets the bootstraps' RUST_LOG (default warn).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.local/bench"
VENV="$ROOT/.venv"
SMOKE="${BENCH_SMOKE:-0}"
# Versions tested; a change of this list reinstalls. pyarrow and duckdb come with the main venv
# (scripts/setup.sh pins them).
PY_BENCH=("smart_open[s3]==9.0.2" "awscli==1.46.3" "zstandard==0.25.0" "matplotlib==3.11.2"
    "requests==2.34.2" "polars==2.1.0" "psycopg2-binary==2.9.13")
# dlt in a venv of its own: its s3 extra (s3fs -> aiobotocore) pins a botocore that awscli v1
# refuses, so the two cannot share one. A failed install leaves dlt out, with the reason.
DLT_VENV="$STATE/dlt-venv"
PY_DLT=("dlt[s3,parquet]==1.31.0" "s3fs==2026.9.0" "pyarrow==26.0.1")
started=$(date +%s)

# One run at a time on a machine: runs share .local/bench (nginx's pid file, the served data,
# the dlt venv), and a second one would stop the first one's nginx. A run waits for the other.
mkdir -p "$STATE"
exec 9>"$STATE/run.lock"
if ! flock -n 9; then
    echo "bench: another bench/run.sh is running on this machine; waiting for it to finish"
    flock 9
fi

report() { printf '%-14s %s\n' "$1:" "$2"; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- what the bench needs ----------------------------------------------------------------------
if [[ "${BENCH_SKIP_SETUP:-0}" != 1 ]]; then
    bash scripts/setup.sh 9>&-
fi
apt_missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx)
command -v rclone >/dev/null 2>&1 || apt_missing+=(rclone)
command -v zstd >/dev/null 2>&1 || apt_missing+=(zstd)
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
command -v gzip >/dev/null 2>&1 || apt_missing+=(gzip)
if ((${#apt_missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    report "bench apt" "installed ${apt_missing[*]}"
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
stamp="$VENV/.sluice-bench-requirements"
wanted="${PY_BENCH[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -x "$VENV/bin/aws" ]]; then
    :
else
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_BENCH[@]}"
    "$VENV/bin/python" -c 'import boto3, smart_open, zstandard, matplotlib, requests, polars, psycopg2'
    printf '%s' "$wanted" >"$stamp"
    report "bench venv" "installed $wanted"
fi
"$VENV/bin/python" -c 'import pyarrow, duckdb' 2>/dev/null || {
    echo "bench: pyarrow or duckdb missing from $VENV (scripts/setup.sh installs them)" >&2
    exit 1
}
dlt_stamp="$DLT_VENV/.sluice-bench-requirements"
BENCH_DLT_PYTHON=""
BENCH_DLT_SKIPPED=""
if [[ -f "$dlt_stamp" && "$(cat "$dlt_stamp")" == "${PY_DLT[*]}" && -x "$DLT_VENV/bin/python" ]]; then
    BENCH_DLT_PYTHON="$DLT_VENV/bin/python"
else
    rm -rf "$DLT_VENV"
    mkdir -p "$STATE"
    if python3 -m venv "$DLT_VENV" >"$STATE/dlt-install.log" 2>&1 &&
        "$DLT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_DLT[@]}" \
            >>"$STATE/dlt-install.log" 2>&1 &&
        "$DLT_VENV/bin/python" -c 'import dlt, s3fs, pyarrow; from dlt.sources.rest_api import rest_api_source' \
            >>"$STATE/dlt-install.log" 2>&1; then
        printf '%s' "${PY_DLT[*]}" >"$dlt_stamp"
        BENCH_DLT_PYTHON="$DLT_VENV/bin/python"
        report "bench dlt" "installed ${PY_DLT[*]} into $DLT_VENV"
    else
        BENCH_DLT_SKIPPED="installing ${PY_DLT[*]} into a venv failed ($(tail -1 "$STATE/dlt-install.log" | cut -c1-200))"
        report "bench dlt" "left out: $BENCH_DLT_SKIPPED"
    fi
fi

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    echo "== bench: build"
    # Only what the bench runs, so a crate of the workspace in progress cannot block it.
    cargo build --release -p ingest-http -p transform-s3 -p export-postgres -p sluice-tests \
        --bin ingest-http --bin transform-s3 --bin export-postgres --bin sluice-bench
fi
for bin in ingest-http transform-s3 export-postgres sluice-bench; do
    [[ -x "$ROOT/target/release/$bin" ]] || {
        echo "bench: target/release/$bin missing (build it or drop BENCH_SKIP_BUILD)" >&2
        exit 1
    }
done

echo "== bench: stack"
bash scripts/stack.sh up 9>&- # daemons must not hold the lock

# --- nginx on a loopback port, serving .local/bench/data ---------------------------------------
mkdir -p "$STATE/data" "$STATE/tmp"
rm -f "$STATE"/data/src-*.json # a previous run's leftovers
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
user_line=""
[[ $(id -u) == 0 ]] && user_line="user root;"
cat >"$STATE/nginx.conf" <<NGINX
$user_line
worker_processes 1;
pid $STATE/nginx.pid;
error_log $STATE/nginx-error.log warn;
events { worker_connections 256; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    default_type application/json;
    client_body_temp_path $STATE/tmp/body;
    proxy_temp_path $STATE/tmp/proxy;
    fastcgi_temp_path $STATE/tmp/fastcgi;
    uwsgi_temp_path $STATE/tmp/uwsgi;
    scgi_temp_path $STATE/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $STATE/data;
    }
}
NGINX
if [[ -f "$STATE/nginx.pid" ]] && kill -0 "$(cat "$STATE/nginx.pid")" 2>/dev/null; then
    "$NGINX" -c "$STATE/nginx.conf" -p "$STATE" -s stop 2>/dev/null || kill "$(cat "$STATE/nginx.pid")" || true
    sleep 0.5
fi
"$NGINX" -c "$STATE/nginx.conf" -p "$STATE" 9>&-
stop_nginx() {
    if [[ -f "$STATE/nginx.pid" ]]; then
        kill "$(cat "$STATE/nginx.pid")" 2>/dev/null || true
    fi
    rm -f "$STATE"/data/src-*.json
}
trap stop_nginx EXIT
echo '{"ready":true}' >"$STATE/data/ready.json"
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/ready.json" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$port/ready.json" >/dev/null || {
    cat "$STATE/nginx-error.log" >&2
    echo "bench: nginx did not start on 127.0.0.1:$port" >&2
    exit 1
}
report "nginx" "http://127.0.0.1:$port serving $STATE/data"

cat >"$STATE/aws-config" <<AWS
[default]
region = us-east-1
s3 =
    addressing_style = path
AWS

# --- the runner ---------------------------------------------------------------------------------
if [[ "$SMOKE" == 1 ]]; then
    OUT="$(mktemp -d /tmp/sluice-bench.XXXXXX)"
    COMMAND="BENCH_SMOKE=1${BENCH_BOXES:+ BENCH_BOXES=$BENCH_BOXES} bash bench/run.sh"
else
    OUT="${BENCH_OUT_DIR:-$ROOT/bench/results}"
    COMMAND="BENCH_GIB=${BENCH_GIB:-2} BENCH_RUNS=${BENCH_RUNS:-3}${BENCH_ONLY:+ BENCH_ONLY=$BENCH_ONLY}${BENCH_BOXES:+ BENCH_BOXES=$BENCH_BOXES} make bench"
fi
mkdir -p "$OUT"
versions="$("$VENV/bin/python" - <<'PY'
import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ["boto3", "smart_open", "awscli", "requests", "zstandard", "polars", "pyarrow", "duckdb", "psycopg2-binary"]))
PY
)"
if [[ -n "$BENCH_DLT_PYTHON" ]]; then
    versions+=", $("$BENCH_DLT_PYTHON" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)} (dlt venv)" for p in ["dlt", "s3fs"]))')"
fi
versions+=", $(rclone version 2>/dev/null | head -1), curl $(curl --version | head -1 | cut -d' ' -f2)"
versions+=", gzip $(gzip --version | head -1 | awk '{print $2}'), zstd $(zstd --version | grep -o 'v[0-9.]*' | head -1)"
pg_bin="${SLUICE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
if [[ -x "$pg_bin/psql" ]]; then
    versions+=", $("$pg_bin/psql" --version | sed 's/^psql (PostgreSQL)/PostgreSQL (server and psql)/')"
fi
versions+=", nginx $("$NGINX" -v 2>&1 | cut -d/ -f2), python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"

set +e
BENCH_OUT="$OUT" BENCH_DATA="$STATE/data" BENCH_SOURCE_URL="http://127.0.0.1:$port" \
    BENCH_PYTHON="$VENV/bin/python" BENCH_PEERS="$ROOT/bench/peers" BENCH_AWS="$VENV/bin/aws" \
    BENCH_AWS_CONFIG="$STATE/aws-config" BENCH_COMMAND="$COMMAND" BENCH_VERSIONS="$versions" \
    BENCH_DLT_PYTHON="$BENCH_DLT_PYTHON" BENCH_DLT_SKIPPED="$BENCH_DLT_SKIPPED" \
    PATH="$VENV/bin:$PATH" "$ROOT/target/release/sluice-bench"
status=$?
set -e

# --- chart and README ---------------------------------------------------------------------------
json="$(ls -t "$OUT"/*.json 2>/dev/null | head -1 || true)"
if [[ -n "$json" ]]; then
    "$VENV/bin/python" bench/chart.py "$json" "${json%.json}.png"
fi
if [[ $status == 0 && "$SMOKE" != 1 && -z "${BENCH_ONLY:-}" && -z "${BENCH_BOXES:-}" &&
    "${BENCH_NO_README:-0}" != 1 ]]; then
    python3 bench/readme.py README.md "${json%.json}.md"
fi
echo "bench: finished in $(($(date +%s) - started)) s (exit $status); results in $OUT"
exit $status
