#!/usr/bin/env bash
# Times the backups on the benchmark data set (docs/backups.md, "Measured"): seeds it with
# `twtr seed` as scripts/bench.sh does (or reuses a set seeded before), then
#
#   embedded  `twtr backup` of the running `twtr all` (idle, then under 8 clients posting in a
#             loop, each post's status and time recorded), then `twtr restore` of the idle
#             backup into an empty directory, with the mesh stopped
#   cql       `twtr export` of the seeded keyspaces, then `twtr import` into a fresh keyspace
#             set that `twtr migrate` made (on TWTR_SCYLLA_NODES, default 127.0.0.1:9042)
#
#   scripts/backup-bench.sh embedded     # 10,001 users, 30,000 tweets (BENCH_USERS, BENCH_TWEETS)
#   scripts/backup-bench.sh cql          # 2,001 users, 6,000 tweets (BENCH_CQL_USERS, BENCH_CQL_TWEETS)
#
# Uses target/release/twtr as it is (cargo build --release first), ports 28080 and 28051..28054,
# and data/backup-bench/. The CQL keyspaces are named like the tests' (`t<millis>p...`), so the
# tests' sweep of stale keyspaces drops them later.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-embedded}"
BIN="$PWD/target/release/twtr"
ROOT="$PWD/data/backup-bench/$MODE"
URL="http://127.0.0.1:28080"
say() { echo "backup-bench.sh: $*" >&2; }
[[ -x $BIN ]] || { say "no $BIN: cargo build --release first"; exit 1; }

export TWTR_HTTP_ADDR=127.0.0.1:28080 TWTR_USERS_ADDR=127.0.0.1:28051 \
    TWTR_TWEETS_ADDR=127.0.0.1:28052 TWTR_FOLLOWERS_ADDR=127.0.0.1:28053 \
    TWTR_FEEDS_ADDR=127.0.0.1:28054
export TWTR_RATE_LIMIT_PER_IP=0 TWTR_RATE_LIMIT_PER_CALLER=0 TWTR_RATE_LIMIT_AUTH_PER_IP=0
export TWTR_TOKEN_TTL_SECS=604800
unset TWTR_AMQP_URL

MESH_PID=""
stop_mesh() {
    if [[ -n $MESH_PID ]] && kill -0 "$MESH_PID" 2>/dev/null; then
        kill -TERM "$MESH_PID"
        wait "$MESH_PID" 2>/dev/null || true
    fi
    MESH_PID=""
}
trap stop_mesh EXIT

start_mesh() { # data dir
    TWTR_DATA_DIR="$1" "$BIN" all >"$ROOT/mesh.log" 2>&1 &
    MESH_PID=$!
    until curl -fsS "$URL/healthz" >/dev/null 2>&1; do
        kill -0 "$MESH_PID" 2>/dev/null || { tail -20 "$ROOT/mesh.log" >&2; exit 1; }
        sleep 0.3
    done
}

seed() { # users, tweets, data dir
    local began=$SECONDS
    "$BIN" seed --url "$URL" --users "$1" --tweets "$2" --state "$ROOT/seed-state.json" \
        --token-key "$3/token_private.pem" >"$ROOT/seed.log" 2>&1
    say "seeded in $((SECONDS - began)) s: $(grep -o 'data set:.*' "$ROOT/seed.log" | tail -1)"
}

timed() { # label, command...
    local label=$1; shift
    local began; began=$(date +%s%3N)
    "$@"
    say "$label: $(($(date +%s%3N) - began)) ms"
}

case "$MODE" in
embedded)
    mkdir -p "$ROOT"
    start_mesh "$ROOT/data"
    seed "${BENCH_USERS:-10001}" "${BENCH_TWEETS:-30000}" "$ROOT/data"
    du -sh "$ROOT"/data/*.redb >&2
    rm -rf "$ROOT/backup-idle" "$ROOT/backup-load" "$ROOT/restored"
    timed "backup, idle" "$BIN" backup --to "$ROOT/backup-idle" --url http://127.0.0.1:28051
    author=$(curl -fsS "$URL/v1/timeline?limit=1" | sed -E 's/.*"author":\{"id":"([0-9]+)".*/\1/')
    token=$(TWTR_DATA_DIR="$ROOT/data" "$BIN" token --user "$author")
    : >"$ROOT/load.txt"
    rm -f "$ROOT/stop"
    for client in 1 2 3 4 5 6 7 8; do
        (n=0; while [[ ! -e $ROOT/stop ]]; do n=$((n + 1))
            curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "$URL/v1/tweets" \
                -H "authorization: Bearer $token" -H 'content-type: application/json' \
                -d "{\"text\":\"load $client $n\"}" >>"$ROOT/load.txt"
        done) &
    done
    sleep 5
    timed "backup, under load" "$BIN" backup --to "$ROOT/backup-load" --url http://127.0.0.1:28051
    sleep 5
    touch "$ROOT/stop"
    sleep 3
    say "load: $(wc -l <"$ROOT/load.txt") posts; statuses: $(cut -d' ' -f1 "$ROOT/load.txt" | sort | uniq -c | xargs)"
    say "load: median post $(cut -d' ' -f2 "$ROOT/load.txt" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') s, slowest $(cut -d' ' -f2 "$ROOT/load.txt" | sort -n | tail -1) s"
    stop_mesh
    timed "restore" env TWTR_DATA_DIR="$ROOT/restored" "$BIN" restore --from "$ROOT/backup-idle"
    ;;
cql)
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    export TWTR_SCYLLA_NODES="${TWTR_SCYLLA_NODES:-127.0.0.1:9042}"
    now=$(date +%s%3N)
    source_prefix="t${now}pbk" target_prefix="t${now}pbkim"
    TWTR_SCYLLA_KEYSPACE_PREFIX=$source_prefix "$BIN" migrate >"$ROOT/migrate.log" 2>&1
    export TWTR_SCYLLA_KEYSPACE_PREFIX=$source_prefix
    start_mesh "$ROOT/data"
    seed "${BENCH_CQL_USERS:-2001}" "${BENCH_CQL_TWEETS:-6000}" "$ROOT/data"
    sleep 10 # the fan-out and the relays settle
    stop_mesh
    timed "export" env TWTR_SCYLLA_KEYSPACE_PREFIX="$source_prefix" \
        "$BIN" export --to "$ROOT/export" 2>>"$ROOT/export.log"
    du -sh "$ROOT/export" >&2
    TWTR_SCYLLA_KEYSPACE_PREFIX=$target_prefix "$BIN" migrate >"$ROOT/migrate2.log" 2>&1
    timed "import" env TWTR_SCYLLA_KEYSPACE_PREFIX="$target_prefix" \
        "$BIN" import --from "$ROOT/export" 2>>"$ROOT/import.log"
    ;;
*)
    say "usage: $0 embedded|cql"
    exit 2
    ;;
esac
