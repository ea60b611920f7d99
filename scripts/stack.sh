#!/usr/bin/env bash
# The local S3 servers the tests and the demo use: a single-node Garage (real object store) and
# a moto server (enforces S3's 5 MiB minimum part size, which Garage does not).
#
#   bash scripts/stack.sh up           start both (no-op when already up and healthy)
#   bash scripts/stack.sh down [--wipe] stop both; --wipe also deletes their data
#   bash scripts/stack.sh env          print the export lines (eval "$(scripts/stack.sh env)")
#   bash scripts/stack.sh status       say what is running
#
# State, logs and the env file live in .local/stack/ (gitignored). Needs scripts/setup.sh first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.local/stack"
CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
GARAGE_BIN="${SLUICE_GARAGE_BIN:-$CACHE/garage-2.5.0/bin/garage}"
MOTO_BIN="$ROOT/.venv/bin/moto_server"
CONF="$STATE/garage.toml"
ENV_FILE="$STATE/env"
PORTS_FILE="$STATE/ports"

# Fixed test credentials (local servers only).
KEY_NAME="sluice-test"
KEY_ID="GK5a1c3e0000000000000000"
KEY_SECRET="5a1c3e005a1c3e005a1c3e005a1c3e005a1c3e005a1c3e005a1c3e005a1c3e00"
DEMO_BUCKET="sluice-demo"
REGION="us-east-1"

log() { echo "stack: $*"; }
die() {
    echo "stack: ERROR: $*" >&2
    exit 1
}

garage() { "$GARAGE_BIN" -c "$CONF" "$@" </dev/null; }

# The pid in $1 if that process is alive and its command line contains $2.
live_pid() {
    local pidfile="$1" pattern="$2" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$pattern" || return 1
    echo "$pid"
}

garage_pid() { live_pid "$STATE/garage.pid" "$GARAGE_BIN"; }
moto_pid() { live_pid "$STATE/moto.pid" "moto_server"; }

# Prints N free localhost TCP ports (held open together while picking, so all distinct).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Whether port $1 can be bound the way the servers bind it (SO_REUSEADDR: a port whose old
# connections linger in TIME_WAIT counts as free).
port_free() {
    python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }

tail_log() {
    echo "---- last lines of $1 ----" >&2
    tail -n 30 "$1" >&2 2>/dev/null || true
}

# Runs "$@" until it succeeds, at most $2 seconds, while the daemon whose pid file is $1 lives.
wait_for() {
    local pidfile="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds)) pid
    pid="$(cat "$pidfile")"
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "stack: the process (pid $pid) exited" >&2
            return 1
        fi
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

start_daemon() { # name pidfile logfile command...
    local name="$1" pidfile="$2" logfile="$3"
    shift 3
    echo "==== $(date -u +%FT%TZ) starting $name" >>"$logfile"
    # setsid: not killed with the caller's process group (CI step, terminal); the inner shell
    # records its own pid and then becomes the server.
    NO_COLOR=1 setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$logfile" 2>&1 </dev/null &
    local i
    for i in $(seq 50); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    die "$name did not start"
}

# Loads ports from the ports file, or picks new ones; keeps saved ones while they are free.
choose_ports() {
    RPC_PORT="" S3_PORT="" ADMIN_PORT="" MOTO_PORT=""
    # shellcheck disable=SC1090
    [[ -f "$PORTS_FILE" ]] && source "$PORTS_FILE"
    local fresh
    read -r -a fresh <<<"$(free_ports 4)"
    if [[ -z "$(garage_pid || true)" ]]; then
        for var in RPC_PORT S3_PORT ADMIN_PORT; do
            if [[ -z "${!var}" ]] || ! port_free "${!var}"; then
                printf -v "$var" '%s' "${fresh[0]}"
                fresh=("${fresh[@]:1}")
            fi
        done
    fi
    if [[ -z "$(moto_pid || true)" ]] && { [[ -z "$MOTO_PORT" ]] || ! port_free "$MOTO_PORT"; }; then
        MOTO_PORT="${fresh[0]}"
    fi
    printf 'RPC_PORT=%s\nS3_PORT=%s\nADMIN_PORT=%s\nMOTO_PORT=%s\n' \
        "$RPC_PORT" "$S3_PORT" "$ADMIN_PORT" "$MOTO_PORT" >"$PORTS_FILE"
}

write_garage_config() {
    local secret_file="$STATE/rpc_secret"
    if [[ ! -s "$secret_file" ]]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$secret_file")
    fi
    (
        umask 077
        cat >"$CONF" <<EOF
# Written by scripts/stack.sh: single-node Garage for tests and the demo.
metadata_dir = "$STATE/garage/meta"
data_dir = "$STATE/garage/data"
db_engine = "sqlite"
replication_factor = 1
# Spare the CPU (2 cores shared with sluice and the tests): store blocks uncompressed.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(cat "$secret_file")"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
EOF
    )
}

# Layout, key and demo bucket; each step only when missing, so a restart keeps the data.
bootstrap_garage() {
    if garage layout show 2>/dev/null | grep -q "Current cluster layout version: 0"; then
        local node
        node="$(garage node id -q 2>/dev/null)"
        node="${node%%@*}"
        garage layout assign -z dc1 -c 10G "$node" >/dev/null
        garage layout apply --version 1 >/dev/null
        log "garage layout applied (node ${node:0:16})"
    fi
    if ! garage key info "$KEY_NAME" >/dev/null 2>&1; then
        garage key import --yes -n "$KEY_NAME" "$KEY_ID" "$KEY_SECRET" >/dev/null
        log "garage key $KEY_NAME imported"
    fi
    garage key allow --create-bucket "$KEY_NAME" >/dev/null
    if ! garage bucket info "$DEMO_BUCKET" >/dev/null 2>&1; then
        garage bucket create "$DEMO_BUCKET" >/dev/null
        log "garage bucket $DEMO_BUCKET created"
    fi
    garage bucket allow --read --write --owner "$DEMO_BUCKET" --key "$KEY_NAME" >/dev/null
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    cat >"$tmp" <<EOF
export SLUICE_GARAGE_ENDPOINT=http://127.0.0.1:$S3_PORT
export SLUICE_MOTO_ENDPOINT=http://127.0.0.1:$MOTO_PORT
export SLUICE_S3_ACCESS_KEY_ID=$KEY_ID
export SLUICE_S3_SECRET_ACCESS_KEY=$KEY_SECRET
export SLUICE_DEMO_BUCKET=$DEMO_BUCKET
export AWS_REGION=$REGION
EOF
    mv "$tmp" "$ENV_FILE"
}

healthy() {
    [[ -f "$ENV_FILE" && -f "$PORTS_FILE" ]] || return 1
    garage_pid >/dev/null && moto_pid >/dev/null || return 1
    # shellcheck disable=SC1090
    source "$PORTS_FILE"
    [[ "$(http_code "http://127.0.0.1:$S3_PORT/")" =~ ^[1-5][0-9][0-9]$ ]] || return 1
    [[ "$(http_code "http://127.0.0.1:$MOTO_PORT/")" =~ ^[1-5][0-9][0-9]$ ]] || return 1
    garage status >/dev/null 2>&1
}

garage_s3_answers() { [[ "$(http_code "http://127.0.0.1:$S3_PORT/")" =~ ^[1-5][0-9][0-9]$ ]]; }
moto_answers() { [[ "$(http_code "http://127.0.0.1:$MOTO_PORT/")" =~ ^[1-5][0-9][0-9]$ ]]; }

cmd_up() {
    [[ -x "$GARAGE_BIN" ]] || die "garage not found at $GARAGE_BIN: run scripts/setup.sh"
    [[ -x "$MOTO_BIN" ]] || die "moto_server not found at $MOTO_BIN: run scripts/setup.sh"
    command -v curl >/dev/null || die "curl not found: run scripts/setup.sh"
    mkdir -p "$STATE/garage/meta" "$STATE/garage/data"
    if healthy; then
        log "already up"
        cmd_env_summary
        return 0
    fi
    choose_ports

    if garage_pid >/dev/null; then
        log "garage already running (pid $(garage_pid))"
    else
        rm -f "$STATE/garage.pid"
        write_garage_config
        start_daemon garage "$STATE/garage.pid" "$STATE/garage.log" "$GARAGE_BIN" -c "$CONF" server
        log "garage started (pid $(cat "$STATE/garage.pid"), log $STATE/garage.log)"
    fi
    if ! wait_for "$STATE/garage.pid" 60 garage status; then
        tail_log "$STATE/garage.log"
        die "garage did not become ready ('garage status') within 60 s"
    fi
    if ! bootstrap_garage; then
        tail_log "$STATE/garage.log"
        die "configuring garage failed"
    fi
    if ! wait_for "$STATE/garage.pid" 30 garage_s3_answers; then
        tail_log "$STATE/garage.log"
        die "garage S3 API at 127.0.0.1:$S3_PORT does not answer"
    fi

    if moto_pid >/dev/null; then
        log "moto already running (pid $(moto_pid))"
    else
        rm -f "$STATE/moto.pid"
        start_daemon moto "$STATE/moto.pid" "$STATE/moto.log" "$MOTO_BIN" -H 127.0.0.1 -p "$MOTO_PORT"
        log "moto started (pid $(cat "$STATE/moto.pid"), log $STATE/moto.log)"
    fi
    if ! wait_for "$STATE/moto.pid" 60 moto_answers; then
        tail_log "$STATE/moto.log"
        die "moto at 127.0.0.1:$MOTO_PORT did not answer within 60 s"
    fi

    write_env
    log "up"
    cmd_env_summary
}

cmd_env_summary() {
    # shellcheck disable=SC1090
    source "$PORTS_FILE"
    log "garage S3 http://127.0.0.1:$S3_PORT, moto http://127.0.0.1:$MOTO_PORT; env: $ENV_FILE"
}

stop_one() { # name pid-function pidfile
    local name="$1" pid
    if pid="$($2)"; then
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "$name stopped (pid $pid)"
    else
        log "$name was not running"
    fi
    rm -f "$3"
}

cmd_down() {
    stop_one garage garage_pid "$STATE/garage.pid"
    stop_one moto moto_pid "$STATE/moto.pid"
    rm -f "$ENV_FILE"
    if [[ "${1:-}" == "--wipe" ]]; then
        rm -rf "$STATE"
        log "wiped $STATE"
    fi
}

cmd_env() {
    [[ -f "$ENV_FILE" ]] || die "local stack not running: run scripts/stack.sh up"
    cat "$ENV_FILE"
}

cmd_status() {
    local pid
    if pid="$(garage_pid)"; then log "garage running (pid $pid)"; else log "garage stopped"; fi
    if pid="$(moto_pid)"; then log "moto running (pid $pid)"; else log "moto stopped"; fi
    if healthy; then log "healthy"; else
        log "not healthy"
        return 1
    fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down "${2:-}" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up | down [--wipe] | env | status" >&2
        exit 2
        ;;
esac
