#!/usr/bin/env bash
# A local RabbitMQ broker for development and tests: Debian's rabbitmq-server, no systemd.
#
#   scripts/rabbitmq.sh start    # leave a broker that answers on 127.0.0.1:5672 alone; else
#                                # install rabbitmq-server if missing, start it, wait for it
#   scripts/rabbitmq.sh stop     # stop the broker this script started (nothing else)
#   scripts/rabbitmq.sh status
#
# The broker keeps its data under /var/lib/rabbitmq (Debian's default). Starting it needs root
# (as it does on these machines); the default guest/guest account works from localhost, so the
# URL is amqp://guest:guest@127.0.0.1:5672/%2f.
set -euo pipefail

PORT="${TWTR_RABBITMQ_PORT:-5672}"
STATE_DIR="$(cd "$(dirname "$0")/.." && pwd)/.tools"
MARKER="$STATE_DIR/rabbitmq.started-by-twtr"
START_TIMEOUT="${TWTR_RABBITMQ_START_TIMEOUT:-90}"

answers() {
    # bash's /dev/tcp: true when something accepts connections on the port.
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

install_if_missing() {
    if command -v rabbitmq-server >/dev/null 2>&1; then
        return
    fi
    echo "rabbitmq.sh: installing Debian's rabbitmq-server" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "rabbitmq.sh: installing needs root (apt-get install rabbitmq-server)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
}

start() {
    if answers; then
        echo "rabbitmq.sh: a broker already answers on 127.0.0.1:$PORT; leaving it alone" >&2
        return
    fi
    install_if_missing
    local began=$SECONDS
    # The Debian package may have started it already (where systemd runs); -detached otherwise.
    if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        # Each queue and connection holds file descriptors; parallel test runs declare hundreds
        # of queues, and a soft limit of 1024 made the broker refuse connections. Debian's
        # wrapper starts the node through `su rabbitmq`, which starts again from the default
        # soft limit, so when we are root the node is started the same way with the limit
        # raised to the hard one inside.
        local node=/usr/lib/rabbitmq/bin/rabbitmq-server
        if [[ $(id -u) == 0 && -x $node ]] && id rabbitmq >/dev/null 2>&1; then
            (cd /var/lib/rabbitmq && su rabbitmq -s /bin/sh -c \
                "ulimit -n \$(ulimit -Hn); RABBITMQ_NODE_PORT=$PORT $node -detached")
        else
            ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
            RABBITMQ_NODE_PORT="$PORT" rabbitmq-server -detached
        fi
        mkdir -p "$STATE_DIR"
        touch "$MARKER"
    fi
    # `rabbitmqctl await_startup` right after -detached returns before the node exists: poll.
    until rabbitmq-diagnostics -q ping >/dev/null 2>&1 && answers; do
        if ((SECONDS - began > START_TIMEOUT)); then
            echo "rabbitmq.sh: the broker did not answer within ${START_TIMEOUT}s" >&2
            tail -n 30 /var/log/rabbitmq/*.log 2>/dev/null >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    echo "rabbitmq.sh: broker up on 127.0.0.1:$PORT after $((SECONDS - began))s" >&2
}

stop() {
    if [[ ! -f "$MARKER" ]]; then
        echo "rabbitmq.sh: no broker started by this script; nothing to stop" >&2
        return
    fi
    rabbitmqctl -q stop >/dev/null 2>&1 || true
    rm -f "$MARKER"
    echo "rabbitmq.sh: broker stopped" >&2
}

status() {
    if answers; then
        local ours="not started by this script"
        [[ -f "$MARKER" ]] && ours="started by this script"
        echo "rabbitmq: answering on 127.0.0.1:$PORT ($ours)"
    else
        echo "rabbitmq: nothing answers on 127.0.0.1:$PORT"
        return 1
    fi
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
