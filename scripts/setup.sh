#!/usr/bin/env bash
# Install everything the tests and the demo need, on a fresh Debian 12 machine that has only
# rust, python3 (with pip) and gcc. Idempotent: on a warm machine it only checks and prints
# one line per component.
#
#   bash scripts/setup.sh
#
# Environment:
#   SLUICE_CACHE   where the Garage build is cached (default: $HOME/.cache/sluice), outside the
#                  checkout so that a fresh clone reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
GARAGE_VERSION="2.5.0"
GARAGE_ROOT="$CACHE/garage-$GARAGE_VERSION"
GARAGE_BIN="$GARAGE_ROOT/bin/garage"
GARAGE_LOG="$CACHE/garage-build.log"
VENV="$ROOT/.venv"
# cfn-lint and aws-sam-cli validate infra/template.yaml offline (scripts/validate.sh); one resolver
# run keeps boto3 within what aws-sam-cli accepts.
PY_REQUIREMENTS=("moto[server]" "cargo-lambda" "ziglang" "boto3" "cfn-lint==1.58.0" "aws-sam-cli==1.170.0" "pyarrow==26.0.1" "duckdb==2.0.1")

report() { printf '%-14s %s\n' "$1:" "$2"; }

# Processes whose command line starts with `cargo install garage` (pgrep may be missing on a
# minimal image, so read /proc directly).
garage_installers() {
    local cmdline pid
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        [[ "$pid" == "$$" ]] && continue
        cmdline="$(tr '\0' ' ' <"$dir/cmdline" 2>/dev/null || true)"
        case "$cmdline" in
            *"cargo install garage"* | *"cargo-install garage"*) echo "$pid" ;;
        esac
    done
}

# --- Debian packages -------------------------------------------------------------------------
apt_missing=()
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
dpkg -s ca-certificates >/dev/null 2>&1 || apt_missing+=(ca-certificates)
# Postgres server binaries for the export-postgres tests (initdb + pg_ctl into a temp dir), and
# openssl for their TLS certificates.
pg_server=""
for bin in /usr/lib/postgresql/*/bin; do
    [[ -x "$bin/initdb" && -x "$bin/pg_ctl" ]] && pg_server="$bin"
done
[[ -n "$pg_server" ]] || apt_missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
if [[ ! -x "$VENV/bin/python" ]]; then
    probe="$(mktemp -d)"
    if ! python3 -m venv "$probe/venv" >/dev/null 2>&1; then
        apt_missing+=(python3-venv)
    fi
    rm -rf "$probe"
fi
if ((${#apt_missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    report "apt" "installed ${apt_missing[*]}"
else
    report "apt" "curl, ca-certificates, python venv, postgresql and openssl already present"
fi

# --- Python venv: moto server, cargo-lambda, zig, boto3 --------------------------------------
stamp="$VENV/.sluice-requirements"
wanted="${PY_REQUIREMENTS[*]}"
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] &&
    [[ -x "$VENV/bin/moto_server" && -x "$VENV/bin/cargo-lambda" ]]; then
    report "python venv" "already there ($VENV: $wanted)"
else
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
    "$VENV/bin/python" -c 'import boto3, moto, ziglang, pyarrow, duckdb' # fail here rather than in a test
    printf '%s' "$wanted" >"$stamp"
    report "python venv" "installed $wanted into $VENV"
fi

# --- Garage (real S3-compatible object store), built once into the cache ---------------------
mkdir -p "$CACHE"
if [[ -x "$GARAGE_BIN" ]]; then
    report "garage" "already there ($GARAGE_BIN)"
else
    # Another build (another checkout, a previous interrupted run of this script in the
    # background) would race ours for the same --root: wait for it and reuse its result.
    waited=0
    while [[ -n "$(garage_installers)" ]]; do
        if ((waited == 0)); then
            report "garage" "another 'cargo install garage' is running; waiting for it (log: $GARAGE_LOG)"
        fi
        sleep 10
        waited=$((waited + 10))
    done
    (
        # flock also serialises two copies of this script started at the same moment.
        flock 9
        if [[ ! -x "$GARAGE_BIN" ]]; then
            echo "building garage $GARAGE_VERSION (about 16 min on 2 cores), log: $GARAGE_LOG"
            if ! cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT" \
                >"$GARAGE_LOG" 2>&1 </dev/null; then
                tail -n 40 "$GARAGE_LOG" >&2
                echo "garage build failed, see $GARAGE_LOG" >&2
                exit 1
            fi
        fi
    ) 9>"$CACHE/garage-install.lock"
    if ((waited > 0)) && [[ -x "$GARAGE_BIN" ]]; then
        report "garage" "built by the other install after ${waited}s ($GARAGE_BIN)"
    else
        report "garage" "installed ($GARAGE_BIN)"
    fi
fi
"$GARAGE_BIN" --version >/dev/null 2>&1 || "$GARAGE_BIN" --help >/dev/null
