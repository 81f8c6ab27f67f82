#!/usr/bin/env bash
# The mesh as separate processes on this machine, events through a local RabbitMQ: the
# distributed deployment in miniature, for development.
#
#   scripts/mesh.sh start    # build (release), start RabbitMQ if needed, then feeds, users,
#                            # tweets, followers and the gateway, each its own `twtr` process;
#                            # waits until the gateway reports every part ready
#   scripts/mesh.sh stop     # SIGTERM every part (graceful: drain, flush outboxes), wait
#   scripts/mesh.sh status
#
# Ports are the usual ones (gateway 8080, gRPC 50051..50054). Each part keeps its embedded store
# under $TWTR_MESH_DIR/<part> (default ./data/mesh) and logs to $TWTR_MESH_DIR/logs/<part>.log.
# Set TWTR_SCYLLA_NODES to put every part on a CQL cluster instead (run `twtr migrate` first).
# Extra TWTR_* variables in the environment reach every part.
set -euo pipefail
cd "$(dirname "$0")/.."

MESH_DIR="${TWTR_MESH_DIR:-$PWD/data/mesh}"
BIN="${TWTR_BIN:-$PWD/target/release/twtr}"
export TWTR_AMQP_URL="${TWTR_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
PARTS=(feeds users tweets followers gateway)

say() { echo "mesh.sh: $*" >&2; }

pid_of() {
    local file="$MESH_DIR/pids/$1"
    [[ -f $file ]] && kill -0 "$(cat "$file")" 2>/dev/null && cat "$file"
}

start() {
    if [[ -z ${TWTR_BIN:-} ]]; then
        say "building the release binary"
        cargo build --release --quiet
    fi
    scripts/rabbitmq.sh start
    mkdir -p "$MESH_DIR/logs" "$MESH_DIR/pids"
    # The token key pair: the users service signs with the private key, the gateway verifies
    # with the public one. Made once (as openssl makes them) and kept across restarts.
    if [[ -z ${TWTR_TOKEN_PRIVATE_KEY:-} ]]; then
        if [[ ! -f $MESH_DIR/token_private.pem ]]; then
            (umask 077 && openssl genpkey -algorithm ed25519 -out "$MESH_DIR/token_private.pem")
            openssl pkey -in "$MESH_DIR/token_private.pem" -pubout -out "$MESH_DIR/token_public.pem"
        fi
        export TWTR_TOKEN_PRIVATE_KEY="$MESH_DIR/token_private.pem"
        export TWTR_TOKEN_PUBLIC_KEYS="${TWTR_TOKEN_PUBLIC_KEYS:-$MESH_DIR/token_public.pem}"
    fi
    for part in "${PARTS[@]}"; do
        if pid="$(pid_of "$part")"; then
            say "$part already running (pid $pid)"
            continue
        fi
        TWTR_DATA_DIR="$MESH_DIR/$part" nohup "$BIN" "$part" \
            >>"$MESH_DIR/logs/$part.log" 2>&1 &
        echo $! >"$MESH_DIR/pids/$part"
        say "$part started (pid $!, log $MESH_DIR/logs/$part.log)"
    done
    local began=$SECONDS
    until curl -fsS "http://${TWTR_HTTP_ADDR:-127.0.0.1:8080}/health/details" >/dev/null 2>&1; do
        if ((SECONDS - began > 60)); then
            say "the mesh did not become ready within 60s; see $MESH_DIR/logs/"
            exit 1
        fi
        sleep 0.5
    done
    say "ready: gateway on http://${TWTR_HTTP_ADDR:-127.0.0.1:8080}, events on RabbitMQ"
}

stop() {
    local pids=()
    for part in "${PARTS[@]}"; do
        if pid="$(pid_of "$part")"; then
            kill -TERM "$pid"
            pids+=("$pid")
        fi
        rm -f "$MESH_DIR/pids/$part"
    done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
    say "stopped ${#pids[@]} part(s)"
}

status() {
    for part in "${PARTS[@]}"; do
        if pid="$(pid_of "$part")"; then
            echo "$part: running (pid $pid)"
        else
            echo "$part: stopped"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
