#!/usr/bin/env bash
# A local RabbitMQ broker for development and tests: Debian's rabbitmq-server, no systemd. One
# node (the default, what scripts/test.sh uses), or a cluster of nodes on one machine.
#
#   scripts/rabbitmq.sh start    # leave a broker that answers on 127.0.0.1:5672 alone; else
#                                # install rabbitmq-server if missing, start it, wait for it
#   scripts/rabbitmq.sh stop     # stop the broker this script started (nothing else)
#   scripts/rabbitmq.sh status
#
# The broker keeps its data under /var/lib/rabbitmq (Debian's default). Starting it needs root
# (as it does on these machines); the default guest/guest account works from localhost, so the
# URL is amqp://guest:guest@127.0.0.1:5672/%2f.
#
# A cluster (every node a disc node, joined with `rabbitmqctl join_cluster`):
#
#   scripts/rabbitmq.sh start --nodes 3    # start (or restart) the cluster, wait until every
#                                          # node runs and every node is in it
#   scripts/rabbitmq.sh stop --cluster     # stop every node of the cluster
#   scripts/rabbitmq.sh status --cluster   # per node: AMQP port, pid, and the running members
#   scripts/rabbitmq.sh kill NODE          # kill -9 one node (NODE: 1..N)
#   scripts/rabbitmq.sh start NODE         # start that node again; waits until it is back in
#                                          # the cluster
#   scripts/rabbitmq.sh ctl NODE ARGS...   # rabbitmqctl against that node (its cookie, its name)
#
# Node i is `twtr<port>@localhost`, AMQP on 127.0.0.1:<port> with <port> = TWTR_RABBITMQ_PORT + i - 1,
# Erlang distribution on <port> + 20000 (RabbitMQ's own convention), its data and logs in
# <dir>/node<i>/, and the cluster's Erlang cookie in <dir>/.erlang.cookie (the nodes and this
# script run with HOME=<dir>, so the system broker's cookie is neither used nor changed). The
# nodes run with cluster_partition_handling = pause_minority and queue_leader_locator = balanced,
# what a three-node production cluster should run with (see the README). The URL list for
# TWTR_AMQP_URL is printed on start:
#   amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f,...
# The default port is 5672, which the single broker holds on the project's machines: use
#   TWTR_RABBITMQ_PORT=5682 scripts/rabbitmq.sh start --nodes 3
#
# Environment (all optional): TWTR_RABBITMQ_PORT (the single broker's port, a cluster's first
# node's; default 5672), TWTR_RABBITMQ_DIR (a cluster's directory; default <repo>/.rabbitmq-cluster;
# with it set, stop and status act on that cluster without --cluster), TWTR_RABBITMQ_START_TIMEOUT
# (seconds; default 90).
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

# ---------------------------------------------------------------------------------------------
# A cluster of N nodes on one machine.
# ---------------------------------------------------------------------------------------------

CLUSTER_DIR="${TWTR_RABBITMQ_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.rabbitmq-cluster}"
CLUSTER_ENV="$CLUSTER_DIR/cluster.env"
RABBIT_BIN=/usr/lib/rabbitmq/bin
NODES=0
BASE_PORT=""

say() { echo "rabbitmq.sh: $*" >&2; }
die() { say "$*"; exit 1; }
now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100)); }

# True while process $1 exists and is not a zombie: a killed node whose exit nobody has reaped
# yet (its parent is init) is gone for every purpose here.
running() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Sets NODES and BASE_PORT for a new cluster of $1 nodes, or from cluster.env when $1 is empty.
use_cluster() {
    if [[ -z $1 ]]; then
        [[ -f $CLUSTER_ENV ]] || die "no cluster in $CLUSTER_DIR (start one with '$0 start --nodes 3')"
        # shellcheck disable=SC1090 # written by this script
        source "$CLUSTER_ENV"
        NODES="$SAVED_NODES"
        BASE_PORT="$SAVED_PORT"
        return
    fi
    [[ $1 =~ ^[0-9]+$ ]] && (( $1 >= 2 && $1 <= 9 )) || die "--nodes takes a number from 2 to 9 (1 is the single broker: leave it out)"
    NODES="$1"
    BASE_PORT="$PORT"
    if [[ -f $CLUSTER_ENV ]]; then
        # A cluster that exists keeps its ports unless told otherwise (and then it must match:
        # each node's database knows its peers by name, and a name carries its port).
        # shellcheck disable=SC1090 # written by this script
        source "$CLUSTER_ENV"
        BASE_PORT="${TWTR_RABBITMQ_PORT:-$SAVED_PORT}"
        [[ $SAVED_NODES == "$NODES" && $SAVED_PORT == "$BASE_PORT" ]] \
            || die "the cluster in $CLUSTER_DIR has $SAVED_NODES nodes from port $SAVED_PORT; remove the directory to start afresh, or set TWTR_RABBITMQ_DIR"
    fi
}

node_port() { echo $((BASE_PORT + $1 - 1)); }
node_name() { echo "twtr$(node_port "$1")@localhost"; }
node_dir() { echo "$CLUSTER_DIR/node$1"; }

# The node number NODE names: 1..N, nodeN, or its Erlang name.
node_number() {
    local name="${1#node}" i
    if [[ $name =~ ^[0-9]+$ ]] && (( name >= 1 && name <= NODES )); then echo "$name"; return; fi
    for ((i = 1; i <= NODES; i++)); do [[ $(node_name "$i") == "$1" ]] && { echo "$i"; return; }; done
    die "no node $1 in the cluster in $CLUSTER_DIR (nodes 1..$NODES)"
}

# rabbitmqctl against node $1, as root or the current user, with the cluster's cookie.
ctl() {
    local i="$1"
    shift
    HOME="$CLUSTER_DIR" "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$i")" "$@"
}

node_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$(node_port "$1")") 2>/dev/null; }

# The pid of node $1's Erlang VM if it runs (its pid file, checked against /proc).
node_pid() {
    local file pid
    file="$(node_dir "$1")/pid"
    [[ -f $file ]] || return 0
    pid="$(cat "$file")"
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    # The VM's command line does not name the node (the boot reads RABBITMQ_NODENAME from the
    # environment), so a reused pid is told apart by that.
    if tr '\0' '\n' 2>/dev/null < "/proc/$pid/environ" | grep -qx "RABBITMQ_NODENAME=$(node_name "$1")"; then
        echo "$pid"
    fi
}

# The cluster's directory, its cookie and its configuration, made once.
prepare_cluster() {
    install_if_missing
    mkdir -p "$CLUSTER_DIR"
    printf 'SAVED_NODES=%q\nSAVED_PORT=%q\n' "$NODES" "$BASE_PORT" > "$CLUSTER_ENV"
    if [[ ! -f $CLUSTER_DIR/.erlang.cookie ]]; then
        # Nodes of one cluster share a cookie; it is what lets them (and rabbitmqctl) talk.
        # Erlang refuses a cookie file that anyone but its owner may read.
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f0-9' 'A-P' > "$CLUSTER_DIR/.erlang.cookie")
        chmod 400 "$CLUSTER_DIR/.erlang.cookie"
    fi
    # pause_minority: a three-node cluster's usual choice; the side of a partition without a
    # majority pauses rather than diverging (quorum queues elect their leaders with Raft either
    # way). queue_leader_locator: a new quorum queue's leader goes to the node with the fewest
    # leaders, not to the node its declaring client is connected to (the default), so one
    # process declaring every queue at startup does not put all their leaders on one node.
    cat > "$CLUSTER_DIR/rabbitmq.conf" <<'EOF'
# Generated by scripts/rabbitmq.sh.
cluster_partition_handling = pause_minority
queue_leader_locator = balanced
loopback_users.guest = true
EOF
    echo '[].' > "$CLUSTER_DIR/enabled_plugins"
    local i
    for ((i = 1; i <= NODES; i++)); do mkdir -p "$(node_dir "$i")/mnesia" "$(node_dir "$i")/log"; done
    # The nodes run as the rabbitmq user (Debian's way) and need to write here.
    if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq:rabbitmq "$CLUSTER_DIR"
    fi
}

# Starts node $1 detached (as the rabbitmq user when root, with the file-descriptor limit raised
# as for the single broker). Does not wait.
launch_node() {
    local i="$1" dir port
    dir="$(node_dir "$i")"
    port="$(node_port "$i")"
    local env=(
        HOME="$CLUSTER_DIR"
        RABBITMQ_NODENAME="$(node_name "$i")"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$port"
        RABBITMQ_DIST_PORT="$((port + 20000))"
        RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log"
        RABBITMQ_PID_FILE="$dir/pid"
        RABBITMQ_CONFIG_FILE="$CLUSTER_DIR/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$CLUSTER_DIR/enabled_plugins"
    )
    # 9>&-: the node must not inherit (and hold for its whole life) this script's lock.
    if [[ $(id -u) == 0 ]] && id rabbitmq >/dev/null 2>&1; then
        (cd "$CLUSTER_DIR" && su rabbitmq -s /bin/sh -c \
            "ulimit -n \$(ulimit -Hn); exec env ${env[*]} $RABBIT_BIN/rabbitmq-server -detached") 9>&-
    else
        (ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; cd "$CLUSTER_DIR" && env "${env[@]}" "$RABBIT_BIN/rabbitmq-server" -detached) 9>&-
    fi
}

# Waits until node $1 answers rabbitmqctl and AMQP.
wait_node() {
    local i="$1" began="$2" deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    until ctl "$i" -q ping >/dev/null 2>&1 && node_answers "$i"; do
        if (( $(now_ms) > deadline )); then
            tail -n 30 "$(node_dir "$i")"/log/*.log >&2 2>/dev/null || true
            die "node$i ($(node_name "$i")) did not come up within ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    say "node$i $(node_name "$i") answers on 127.0.0.1:$(node_port "$i") (after $(elapsed "$began"))"
}

# The cluster members node $1 reports running (one per line).
running_members() {
    ctl "$1" -q cluster_status --formatter json 2>/dev/null \
        | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'twtr[0-9]*@[a-z0-9.-]*' || true
}

# Waits until node $1 reports every node running.
wait_members() {
    local i="$1" began="$2" deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    until (( $(running_members "$i" | wc -l) == NODES )); do
        (( $(now_ms) > deadline )) && die "node$i does not see all $NODES nodes running within ${START_TIMEOUT}s: $(running_members "$i" | tr '\n' ' ')"
        sleep 0.5
    done
}

amqp_urls() {
    local urls=() i
    for ((i = 1; i <= NODES; i++)); do urls+=("amqp://guest:guest@127.0.0.1:$(node_port "$i")/%2f"); done
    (IFS=,; echo "${urls[*]}")
}

cluster_start() {
    use_cluster "$1"
    local began i
    began="$(now_ms)"
    for ((i = 1; i <= NODES; i++)); do
        if [[ -z $(node_pid "$i") ]] && node_answers "$i"; then
            die "127.0.0.1:$(node_port "$i") is taken by something else; set TWTR_RABBITMQ_PORT"
        fi
    done
    prepare_cluster
    say "starting a cluster of $NODES nodes from 127.0.0.1:$BASE_PORT in $CLUSTER_DIR"
    # All at once: a restarted cluster's nodes wait for each other at boot, and a new one's boot
    # independently before they join.
    for ((i = 1; i <= NODES; i++)); do
        if [[ -n $(node_pid "$i") ]]; then
            say "node$i already runs (pid $(node_pid "$i"))"
        else
            launch_node "$i"
        fi
    done
    for ((i = 1; i <= NODES; i++)); do wait_node "$i" "$began"; done
    for ((i = 2; i <= NODES; i++)); do
        [[ -f $(node_dir "$i")/joined ]] && continue
        # A fresh node joins node 1's cluster: it has to stop its own app (and its empty
        # database) to do so.
        ctl "$i" -q stop_app
        ctl "$i" -q join_cluster "$(node_name 1)"
        ctl "$i" -q start_app
        touch "$(node_dir "$i")/joined"
        say "node$i joined $(node_name 1)"
    done
    wait_members 1 "$began"
    say "cluster of $NODES nodes ready in $(elapsed "$began"); TWTR_AMQP_URL=$(amqp_urls)"
}

cluster_node_start() {
    use_cluster ""
    local i began
    i="$(node_number "$1")"
    if [[ -n $(node_pid "$i") ]] && node_answers "$i"; then
        say "node$i already runs (pid $(node_pid "$i")); nothing to do"
        return 0
    fi
    began="$(now_ms)"
    launch_node "$i"
    wait_node "$i" "$began"
    wait_members "$i" "$began"
    say "node$i is back in the cluster (after $(elapsed "$began"))"
}

cluster_node_kill() {
    use_cluster ""
    local i pid began
    i="$(node_number "$1")"
    pid="$(node_pid "$i")"
    [[ -n $pid ]] || { say "node$i is not running; nothing to kill"; return 0; }
    began="$(now_ms)"
    # SIGKILL to the Erlang VM: no goodbye to the peers or the clients; a crashed machine.
    kill -KILL "$pid"
    while running "$pid"; do sleep 0.1; done
    say "killed node$i ($(node_name "$i"), pid $pid) with SIGKILL in $(elapsed "$began")"
}

cluster_stop() {
    use_cluster ""
    local i stopped=0
    for ((i = 1; i <= NODES; i++)); do
        [[ -n $(node_pid "$i") ]] || continue
        ctl "$i" -q stop >/dev/null 2>&1 &
        stopped=$((stopped + 1))
    done
    wait
    if (( stopped )); then
        say "stopped $stopped nodes"
    else
        say "no node of the cluster in $CLUSTER_DIR is running; nothing to stop"
    fi
}

cluster_status() {
    use_cluster ""
    local i pid line up=0 members=""
    say "cluster in $CLUSTER_DIR: $NODES nodes; TWTR_AMQP_URL=$(amqp_urls)"
    for ((i = 1; i <= NODES; i++)); do
        pid="$(node_pid "$i")"
        line="node$i $(node_name "$i") 127.0.0.1:$(node_port "$i")"
        if node_answers "$i"; then line+=" answers AMQP"; up=$((up + 1)); else line+=" does not answer AMQP"; fi
        if [[ -n $pid ]]; then
            line+=", pid $pid, rss $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0) / 1024 )) MiB"
            [[ -z $members ]] && members="$(running_members "$i" | tr '\n' ' ')"
        else
            line+=", not running"
        fi
        say "$line"
    done
    say "running members: ${members:-none}"
    (( up == NODES ))
}

# Whether stop and status mean the cluster: --cluster, or TWTR_RABBITMQ_DIR names a cluster's
# directory.
is_cluster() {
    [[ ${1:-} == --cluster ]] || [[ -n ${TWTR_RABBITMQ_DIR:-} && -f $CLUSTER_ENV ]]
}

usage() {
    echo "usage: $0 start [--nodes N | NODE] | stop [--cluster] | status [--cluster] | kill NODE | ctl NODE ARGS..." >&2
    exit 2
}

# One cluster command at a time per directory.
lock_cluster() {
    mkdir -p "$CLUSTER_DIR"
    exec 9> "$CLUSTER_DIR/script.lock"
    flock -w 300 9 || die "another rabbitmq.sh is still busy with $CLUSTER_DIR"
}

case "${1:-}" in
    start)
        case "${2:-}" in
            "") if is_cluster; then lock_cluster; cluster_start ""; else start; fi ;;
            --nodes)
                [[ -n ${3:-} ]] || usage
                if [[ $3 == 1 ]]; then start; else lock_cluster; cluster_start "$3"; fi ;;
            -*) usage ;;
            *) lock_cluster; cluster_node_start "$2" ;;
        esac ;;
    stop) if is_cluster "${2:-}"; then lock_cluster; cluster_stop; else stop; fi ;;
    status) if is_cluster "${2:-}"; then cluster_status; else status; fi ;;
    kill) [[ -n ${2:-} ]] || usage; lock_cluster; cluster_node_kill "$2" ;;
    ctl) [[ -n ${2:-} ]] || usage; use_cluster ""; node="$(node_number "$2")"; shift 2; ctl "$node" "$@" ;;
    *) usage ;;
esac
