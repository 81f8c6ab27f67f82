#!/usr/bin/env bash
# The benchmark behind docs/bench/: builds twtr (release), then for each backend starts the
# all-in-one mesh (`twtr all`), seeds it through the public API (`twtr seed`, resumable: a
# second run reuses the data set), benchmarks it over HTTP (`twtr bench run`) and stops it.
# Finally renders docs/bench/<date>.md with its plots (`twtr bench report`).
#
#   scripts/bench.sh                      # embedded, then RabbitMQ, then CQL (Cassandra)
#   BENCH_MODES=embedded scripts/bench.sh # only some: embedded, rabbitmq, cql, cql-cluster
#
# cql-cluster is the CQL mode on a three-node Cassandra cluster (scripts/cassandra.sh start
# --nodes 3 on 127.0.0.4-6, RF 3 in dc1, LOCAL_QUORUM: every write goes to three replicas and
# waits for two), started for the run and stopped after it.
#
# Settings (environment):
#   BENCH_USERS (10001)     accounts; 10,001 gives the largest author 10,000 followers
#   BENCH_TWEETS (30000)    seeded tweets
#   BENCH_CQL_USERS (2001), BENCH_CQL_TWEETS (6000)   the (slower to seed) CQL data set
#   BENCH_DURATION (10)     seconds per measured phase
#   BENCH_CONNECTIONS (64)  connections of the maximum-throughput phases
#   BENCH_OVERLOAD_CONNECTIONS (1000)  connections of the overload phase (feed reads far over
#                           what the gateway serves at once; the script raises `ulimit -n`)
#   BENCH_OUT (docs/bench/<date>.md)
#   BENCH_NOTES             a Markdown file appended to the report (analysis)
#   BENCH_FRESH=1           drop the seeded data sets and seed again
#   BENCH_NO_BUILD=1        use target/release/twtr as it is
#   BENCH_BIN               the mesh binary to benchmark (target/release/twtr), e.g. an older
#                           build for a before/after in one sitting; the load generator and the
#                           report stay target/release/twtr's
#   BENCH_FLAME (1)         after each mode's measured run, profile the mesh process with
#                           `perf record` during a second, unmeasured run of the feed-max and
#                           posts phases, and render flame graphs (inferno) beside the report's
#                           plots; 0 skips. Installs inferno into .tools/ when it is missing;
#                           without `perf` (Debian: linux-perf) it says so and goes on.
#   BENCH_FLAME_SECS (8)    seconds profiled per flame graph
#
# The mesh runs on its own ports (gateway 127.0.0.1:18080, gRPC 18051..18054), its own data
# under data/bench/, RabbitMQ names prefixed `twtr-bench`, CQL keyspaces `twtr_bench_*`, with
# the gateway's rate limits off (one client IP sends everything). The generator runs on this
# machine too, so it competes with the mesh for the same cores.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES="${BENCH_MODES:-embedded rabbitmq cql}"
USERS="${BENCH_USERS:-10001}"
TWEETS="${BENCH_TWEETS:-30000}"
CQL_USERS="${BENCH_CQL_USERS:-2001}"
CQL_TWEETS="${BENCH_CQL_TWEETS:-6000}"
DURATION="${BENCH_DURATION:-10}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
OVERLOAD_CONNECTIONS="${BENCH_OVERLOAD_CONNECTIONS:-1000}"
# The overload phase holds a file descriptor per connection in the generator and in the mesh,
# both started from here: lift the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
OUT="${BENCH_OUT:-docs/bench/$(date -u +%F).md}"
ROOT="$PWD/data/bench"
RESULTS="$PWD/target/bench"
BIN="$PWD/target/release/twtr"
MESH_BIN="${BENCH_BIN:-$BIN}"
PLOTS="${OUT%.md}"
FLAME="${BENCH_FLAME:-1}"
FLAME_SECS="${BENCH_FLAME_SECS:-8}"
TOOLS="$PWD/.tools"
URL="http://127.0.0.1:18080"

say() { echo "bench.sh: $*" >&2; }

export TWTR_HTTP_ADDR=127.0.0.1:18080 TWTR_USERS_ADDR=127.0.0.1:18051 \
    TWTR_TWEETS_ADDR=127.0.0.1:18052 TWTR_FOLLOWERS_ADDR=127.0.0.1:18053 \
    TWTR_FEEDS_ADDR=127.0.0.1:18054
export TWTR_RATE_LIMIT_PER_IP=0 TWTR_RATE_LIMIT_PER_CALLER=0 TWTR_RATE_LIMIT_AUTH_PER_IP=0
export TWTR_AMQP_PREFIX=twtr-bench TWTR_SCYLLA_KEYSPACE_PREFIX=twtr_bench
export TWTR_TOKEN_TTL_SECS=604800
unset TWTR_AMQP_URL TWTR_SCYLLA_NODES

if [[ ${BENCH_FRESH:-0} == 1 ]]; then
    rm -rf "$ROOT"
fi
mkdir -p "$ROOT" "$RESULTS"
rm -f "$RESULTS"/*.json

if [[ $FLAME == 1 ]]; then
    if ! command -v perf >/dev/null; then
        say "no perf on this machine (apt-get install linux-perf): no flame graphs"
        FLAME=0
    elif [[ ! -x $TOOLS/bin/inferno-flamegraph ]]; then
        say "installing inferno (flame graphs) into $TOOLS"
        cargo install inferno --locked --quiet --root "$TOOLS"
    fi
fi

if [[ ${BENCH_NO_BUILD:-0} != 1 && -z ${BENCH_BIN:-} ]]; then
    say "building the release binary"
    cargo build --release --quiet
fi

MESH_PID=""
stop_mesh() {
    if [[ -n $MESH_PID ]] && kill -0 "$MESH_PID" 2>/dev/null; then
        kill -TERM "$MESH_PID"
        wait "$MESH_PID" 2>/dev/null || true
    fi
    MESH_PID=""
}
trap stop_mesh EXIT

start_mesh() { # data dir, log file
    TWTR_DATA_DIR="$1" "$MESH_BIN" all >"$2" 2>&1 &
    MESH_PID=$!
    local began=$SECONDS
    until curl -fsS "$URL/health/details" >/dev/null 2>&1; do
        if ! kill -0 "$MESH_PID" 2>/dev/null || ((SECONDS - began > 120)); then
            say "the mesh did not become ready; see $2"
            tail -20 "$2" >&2
            exit 1
        fi
        sleep 0.3
    done
    sleep 3 # idle before the first memory reading
}

# Every phase `twtr bench run --skip` knows, to run one alone.
PHASES="ceiling feed-max feed-rate posts mixed discovery fanout stream overload"

flame_graph() { # label, data dir, phase, op
    local label=$1 dir=$2 phase=$3 op=$4
    local skip data="$RESULTS/$label-$op.perf"
    skip=$(tr ' ' '\n' <<<"$PHASES" | grep -vx "$phase" | paste -sd,)
    mkdir -p "$PLOTS" "$RESULTS/flame"
    # The profile starts once the phase's warm-up is over and ends before the phase does.
    (sleep 2 && perf record -q -F 499 --call-graph dwarf,16384 -p "$MESH_PID" -o "$data" \
        -- sleep "$FLAME_SECS" >/dev/null 2>&1) &
    local profiler=$!
    "$BIN" bench run --url "$URL" --state "$dir/seed-state.json" --label "$label-$op" \
        --out "$RESULTS/flame" --duration "$((FLAME_SECS + 2))" --warmup 1 \
        --connections "$CONNECTIONS" --skip "$skip" >/dev/null
    wait "$profiler" || true
    if [[ -s $data ]]; then
        perf script --no-inline -i "$data" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" |
            "$TOOLS/bin/inferno-flamegraph" --title "twtr all ($label): $phase" \
                --width 1600 >"$PLOTS/$label-flame-$op.svg"
        say "$label: flame graph of $phase in $PLOTS/$label-flame-$op.svg"
    else
        say "$label: perf recorded nothing for $phase (perf_event_paranoid?)"
    fi
    rm -f "$data"
}

bench_mode() { # label, data dir, users, tweets
    local label=$1 dir=$2 users=$3 tweets=$4
    mkdir -p "$dir"
    say "$label: starting the mesh"
    start_mesh "$dir" "$ROOT/$label.log"
    say "$label: seeding $users users, $tweets tweets (resumes a data set seeded before)"
    "$BIN" seed --url "$URL" --users "$users" --tweets "$tweets" \
        --state "$dir/seed-state.json" --token-key "$dir/token_private.pem"
    say "$label: benchmarking"
    "$BIN" bench run --url "$URL" --state "$dir/seed-state.json" --label "$label" \
        --out "$RESULTS" --pids "$MESH_PID" --duration "$DURATION" \
        --connections "$CONNECTIONS" --overload-connections "$OVERLOAD_CONNECTIONS"
    if [[ $FLAME == 1 ]]; then
        flame_graph "$label" "$dir" feed-max feed
        flame_graph "$label" "$dir" posts post
    fi
    stop_mesh
}

done_labels=()
for mode in $MODES; do
    case $mode in
    embedded)
        bench_mode embedded "$ROOT/embedded" "$USERS" "$TWEETS"
        ;;
    rabbitmq)
        scripts/rabbitmq.sh start
        # The same stores as the embedded run (its data set), events through the broker.
        TWTR_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f' \
            bench_mode rabbitmq "$ROOT/embedded" "$USERS" "$TWEETS"
        ;;
    cql)
        scripts/rabbitmq.sh start
        scripts/cassandra.sh start
        export TWTR_SCYLLA_NODES=127.0.0.1:9042
        # A single node: quorum of one either way, but say what is meant.
        export TWTR_SCYLLA_READ_CONSISTENCY=one TWTR_SCYLLA_WRITE_CONSISTENCY=one
        TWTR_DATA_DIR="$ROOT/cql" "$MESH_BIN" migrate
        TWTR_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f' \
            bench_mode cql "$ROOT/cql" "$CQL_USERS" "$CQL_TWEETS"
        unset TWTR_SCYLLA_NODES TWTR_SCYLLA_READ_CONSISTENCY TWTR_SCYLLA_WRITE_CONSISTENCY
        ;;
    cql-cluster)
        scripts/rabbitmq.sh start
        export TWTR_CASSANDRA_HOSTS=127.0.0.4,127.0.0.5,127.0.0.6
        scripts/cassandra.sh start --nodes 3
        export TWTR_SCYLLA_NODES=127.0.0.4:9042,127.0.0.5:9042,127.0.0.6:9042
        export TWTR_SCYLLA_REPLICATION=dc1:3 TWTR_SCYLLA_LOCAL_DC=dc1
        TWTR_DATA_DIR="$ROOT/cql-cluster" "$MESH_BIN" migrate
        TWTR_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f' \
            bench_mode cql-cluster "$ROOT/cql-cluster" "$CQL_USERS" "$CQL_TWEETS"
        scripts/cassandra.sh stop --cluster
        unset TWTR_SCYLLA_NODES TWTR_SCYLLA_REPLICATION TWTR_SCYLLA_LOCAL_DC TWTR_CASSANDRA_HOSTS
        ;;
    *)
        say "unknown mode $mode (embedded, rabbitmq, cql, cql-cluster)"
        exit 2
        ;;
    esac
    done_labels+=("$RESULTS/$mode.json")
done

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), \
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end: \
$(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD)"
notes=()
if [[ -n ${BENCH_NOTES:-} ]]; then
    notes=(--notes "$BENCH_NOTES")
fi
"$BIN" bench report --results "$(IFS=,; echo "${done_labels[*]}")" --out "$OUT" \
    --machine "$machine" "${notes[@]}"
say "report: $OUT"
