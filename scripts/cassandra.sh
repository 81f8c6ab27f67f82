#!/usr/bin/env bash
# Runs a real single-node Apache Cassandra 5.0 for local development and tests.
#
#   scripts/cassandra.sh start    start a node (or reuse one that already answers CQL), wait until
#                                 it answers CQL, print how long that took
#   scripts/cassandra.sh stop     stop the node this script started (and only that one)
#   scripts/cassandra.sh status   say whether a node answers CQL on the port, and whether it is ours
#
# Cassandra comes from Maven Central: the jars of org.apache.cassandra:cassandra-all and its runtime
# dependencies are copied once into $TWTR_CASSANDRA_DIR/lib and reused. No Docker, no tarball.
#
# Environment (all optional):
#   TWTR_CASSANDRA_PORT          CQL (native transport) port on 127.0.0.1     (default 9042)
#   TWTR_CASSANDRA_STORAGE_PORT  inter-node port, only bound on 127.0.0.1     (default CQL port + 10000)
#   TWTR_CASSANDRA_HEAP          JVM heap, used for -Xms and -Xmx              (default 2g)
#   TWTR_CASSANDRA_DIR           jars, config, data and logs                   (default <repo>/.cassandra)
#   TWTR_CASSANDRA_LIB_DIR       the resolved jars, shareable between nodes    (default $TWTR_CASSANDRA_DIR/lib)
#   TWTR_CASSANDRA_START_TIMEOUT seconds to wait for CQL to answer on start    (default 180)
#   TWTR_CASSANDRA_JVM_OPTS      extra JVM options, whitespace-separated       (default none)
#
# Layout of $TWTR_CASSANDRA_DIR: pom.xml and lib/ (resolved jars), conf/ (cassandra.yaml,
# logback.xml), data/ (data, commitlog, hints, saved_caches, cdc_raw), logs/ (system.log, and
# stdout.log for anything the JVM prints before logging starts), cassandra.pid, script.lock,
# maven.log.
set -euo pipefail

CASSANDRA_VERSION=5.0.9
DEPENDENCY_PLUGIN_VERSION=3.8.1

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CASS_DIR="${TWTR_CASSANDRA_DIR:-$REPO_ROOT/.cassandra}"
HOST=127.0.0.1
PORT="${TWTR_CASSANDRA_PORT:-9042}"
STORAGE_PORT="${TWTR_CASSANDRA_STORAGE_PORT:-$((PORT + 10000))}"
HEAP="${TWTR_CASSANDRA_HEAP:-2g}"
START_TIMEOUT="${TWTR_CASSANDRA_START_TIMEOUT:-180}"

LIB_DIR="${TWTR_CASSANDRA_LIB_DIR:-$CASS_DIR/lib}"
LIB_MARKER="$LIB_DIR/.resolved-cassandra-all-$CASSANDRA_VERSION"
CONF_DIR="$CASS_DIR/conf"
DATA_DIR="$CASS_DIR/data"
LOG_DIR="$CASS_DIR/logs"
PID_FILE="$CASS_DIR/cassandra.pid"

say() { echo "cassandra.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# Milliseconds since the epoch, for the timings printed.
now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100)); }

# True when a CQL server answers on HOST:PORT: sends a protocol v4 OPTIONS frame (header only:
# version 0x04, flags 0, stream 0, opcode 0x05, body length 0) and expects a SUPPORTED frame back
# (response version 0x84, opcode 0x06). Pure bash, so no CQL client is needed.
cql_answers() {
    # shellcheck disable=SC2016 # the inner script expands its own $0/$1
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x04\x00\x00\x00\x05\x00\x00\x00\x00" >&3
        reply=$(head -c 5 <&3 | od -An -tx1 | tr -d " \n")
        [[ $reply == 84??????06 ]]' "$HOST" "$PORT" 2>/dev/null
}

# True when anything accepts TCP connections on HOST:$1.
# shellcheck disable=SC2016 # the inner script expands its own $0/$1
port_in_use() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null; }

# Prints the PID from the pid file if that process is still the CassandraDaemon started from this
# directory's config; prints nothing otherwise (no pid file, process gone, or PID reused).
our_pid() {
    [[ -f $PID_FILE ]] || return 0
    local pid cmdline
    pid="$(cat "$PID_FILE")"
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    cmdline="$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" || true)"
    if [[ $cmdline == *org.apache.cassandra.service.CassandraDaemon* && $cmdline == *"$CONF_DIR/cassandra.yaml"* ]]; then
        echo "$pid"
    fi
}

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Sets JAVA to a Java 17 binary (Cassandra 5.0 runs on 11 or 17; the options below are Java 17's),
# and makes sure mvn exists. Installs them from Debian only when they are missing.
ensure_tools() {
    local candidate
    JAVA=""
    for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/java-17-openjdk-*/bin/java; do
        if [[ -x $candidate ]] && "$candidate" -version 2>&1 | grep -q 'version "17\.'; then
            JAVA="$candidate"
            break
        fi
    done
    if [[ -z $JAVA ]] || ! command -v mvn >/dev/null 2>&1; then
        say "installing Java 17 and Maven from Debian"
        as_root apt-get update
        as_root apt-get install -y openjdk-17-jre-headless maven
        local installed=(/usr/lib/jvm/java-17-openjdk-*/bin/java)
        [[ -n $JAVA ]] || JAVA="${installed[0]}"
    fi
}

# Copies cassandra-all and its runtime dependencies from Maven Central into LIB_DIR, once per
# version: later runs see the marker file and skip Maven altogether.
resolve_jars() {
    [[ -f $LIB_MARKER ]] && return 0
    local started
    started="$(now_ms)"
    say "resolving org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION with Maven into $LIB_DIR"
    mkdir -p "$CASS_DIR"
    cat > "$CASS_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/cassandra.sh: only used to copy Cassandra's jars into lib/. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.twtr</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>$DEPENDENCY_PLUGIN_VERSION</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
EOF
    # Copy into a fresh directory and swap it in, so an interrupted run never looks complete.
    rm -rf "$LIB_DIR.partial"
    # Maven's own output goes to maven.log and is only shown when it fails.
    if ! mvn -B -Dstyle.color=never -f "$CASS_DIR/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$LIB_DIR.partial" > "$CASS_DIR/maven.log" 2>&1; then
        tail -n 40 "$CASS_DIR/maven.log" >&2
        die "Maven could not resolve cassandra-all $CASSANDRA_VERSION (full output: $CASS_DIR/maven.log)"
    fi
    [[ -f $LIB_DIR.partial/cassandra-all-$CASSANDRA_VERSION.jar ]] || die "Maven did not produce cassandra-all-$CASSANDRA_VERSION.jar"
    rm -rf "$LIB_DIR"
    mv "$LIB_DIR.partial" "$LIB_DIR"
    touch "$LIB_MARKER"
    say "resolved $(find "$LIB_DIR" -name '*.jar' | wc -l) jars in $(elapsed "$started")"
}

# Writes a minimal single-node cassandra.yaml and a logback.xml into CONF_DIR (every start, so
# changed ports apply). Option names are Cassandra 5.0's (with units: "10000ms", "128MiB").
write_config() {
    mkdir -p "$CONF_DIR/triggers" "$LOG_DIR" \
        "$DATA_DIR/data" "$DATA_DIR/commitlog" "$DATA_DIR/saved_caches" "$DATA_DIR/hints" "$DATA_DIR/cdc_raw"
    cat > "$CONF_DIR/cassandra.yaml" <<EOF
# Generated by scripts/cassandra.sh on every start; edit the script, not this file.
cluster_name: twtr-dev
# One node, one token: nothing to allocate or stream, no bootstrap.
num_tokens: 1
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
start_native_transport: true
native_transport_port: $PORT

# No authentication or authorization: anyone on loopback may do anything.
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - $DATA_DIR/data
commitlog_directory: $DATA_DIR/commitlog
saved_caches_directory: $DATA_DIR/saved_caches
hints_directory: $DATA_DIR/hints
cdc_raw_directory: $DATA_DIR/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB

# A fresh development cluster: use the Cassandra 5.0 storage format and features outright
# (the shipped default keeps 4.x compatibility for rolling upgrades).
storage_compatibility_mode: NONE

# Small machine (2 cores, shared with builds): few threads, small memtables, one compactor.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_materialized_view_writes: 4
concurrent_compactors: 1
compaction_throughput: 64MiB/s
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB

# Tests drop and truncate a lot: no snapshot on each DROP/TRUNCATE.
auto_snapshot: false

# A little more patience than the defaults, for a CPU-starved machine.
read_request_timeout: 5000ms
range_request_timeout: 10000ms
write_request_timeout: 5000ms
cas_contention_timeout: 3000ms
request_timeout: 10000ms
EOF
    cat > "$CONF_DIR/logback.xml" <<EOF
<!-- Generated by scripts/cassandra.sh: INFO and above to logs/system.log, nothing on stdout. -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$LOG_DIR/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>$LOG_DIR/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>5</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG" />
  </root>
</configuration>
EOF
}

# The JVM options: Cassandra's own jvm-server.options and jvm17-server.options (minus
# -XX:+AlwaysPreTouch, which only slows start-up here), the jamm agent that cassandra-env.sh adds,
# a modest heap, and system properties that skip the waits meant for multi-node clusters.
jvm_options() {
    local jamm=("$LIB_DIR"/jamm-*.jar)
    JVM_OPTS=(
        -Xms"$HEAP" -Xmx"$HEAP" -Xss256k
        # jvm-server.options
        -ea -da:net.openhft...
        -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$LOG_DIR"
        -XX:+ExitOnOutOfMemoryError   # Cassandra's start-up checks ask for one of these
        -XX:ErrorFile="$LOG_DIR/hs_err_%p.log"
        -XX:+UseTLAB -XX:+ResizeTLAB -XX:+UseNUMA -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        # jvm17-server.options: G1
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
        -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
        # jvm17-server.options: module system
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        # jvm17-server.options: Netty
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        # cassandra-env.sh: jamm measures object sizes for memtable accounting
        -javaagent:"${jamm[0]}"
        # Where things are
        -Dcassandra.config="file://$CONF_DIR/cassandra.yaml"
        -Dcassandra.storagedir="$DATA_DIR"
        -Dcassandra.logdir="$LOG_DIR"
        -Dcassandra.triggers_dir="$CONF_DIR/triggers"
        -Dlogback.configurationFile="$CONF_DIR/logback.xml"
        # Single node: do not wait for gossip to settle nor for a ring to form
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=1000
    )
    # jvm17-server.options also opens jdk.compiler and jdk.attach; Debian's JRE-only package does
    # not have those modules, so only pass them when present (else the JVM warns on every start).
    if "$JAVA" --list-modules 2>/dev/null | grep -q '^jdk.compiler@'; then
        JVM_OPTS+=(--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
                   --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED)
    fi
    if "$JAVA" --list-modules 2>/dev/null | grep -q '^jdk.attach@'; then
        JVM_OPTS+=(--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED)
    fi
    # Extra options from the caller, split on whitespace (e.g. "-Dcassandra.unsafesystem=true").
    local extra=()
    read -r -a extra <<< "${TWTR_CASSANDRA_JVM_OPTS:-}"
    JVM_OPTS+=("${extra[@]}")
}

# Polls (every half second) until the node answers CQL, the process dies, or the deadline passes.
wait_until_ready() {
    local pid="$1" started="$2"
    local deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
    until cql_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "Cassandra (pid $pid) exited during start-up; end of its logs:"
            show_log_tail
            rm -f "$PID_FILE"
            exit 1
        fi
        if (( $(now_ms) > deadline )); then
            say "Cassandra (pid $pid) did not answer CQL on $HOST:$PORT within ${START_TIMEOUT}s; end of its logs (it is left running; '$0 stop' stops it):"
            show_log_tail
            exit 1
        fi
        sleep 0.5
    done
    say "Cassandra $CASSANDRA_VERSION answers CQL on $HOST:$PORT (pid $pid, started in $(elapsed "$started"); logs in $LOG_DIR)"
}

show_log_tail() {
    tail -n 40 "$LOG_DIR/system.log" >&2 2>/dev/null || true
    tail -n 20 "$LOG_DIR/stdout.log" >&2 2>/dev/null || true
}

cmd_start() {
    if cql_answers; then
        if [[ -n $(our_pid) ]]; then
            say "Cassandra already answers CQL on $HOST:$PORT (ours, pid $(our_pid)); nothing to do"
        else
            say "something already answers CQL on $HOST:$PORT (not started by this script); using it as is"
        fi
        return 0
    fi
    local pid started
    pid="$(our_pid)"
    if [[ -n $pid ]]; then
        # Started earlier and still booting: just wait for it.
        say "Cassandra (pid $pid) is already starting; waiting for it"
        wait_until_ready "$pid" "$(now_ms)"
        return 0
    fi
    port_in_use "$PORT" && die "port $HOST:$PORT is taken by something that does not speak CQL; set TWTR_CASSANDRA_PORT"
    port_in_use "$STORAGE_PORT" && die "storage port $HOST:$STORAGE_PORT is taken; set TWTR_CASSANDRA_STORAGE_PORT"

    ensure_tools
    resolve_jars
    write_config
    jvm_options

    started="$(now_ms)"
    say "starting Cassandra $CASSANDRA_VERSION on $HOST:$PORT (storage port $STORAGE_PORT, heap $HEAP, data in $DATA_DIR)"
    # setsid + nohup: the node outlives this shell and its terminal. In a non-interactive script
    # setsid execs directly (no fork), so $! is the java process itself. 9>&- keeps the script's
    # lock out of the node.
    cd "$CASS_DIR"
    setsid nohup "$JAVA" "${JVM_OPTS[@]}" -cp "$CONF_DIR:$LIB_DIR/*" \
        org.apache.cassandra.service.CassandraDaemon > "$LOG_DIR/stdout.log" 2>&1 < /dev/null 9>&- &
    pid=$!
    echo "$pid" > "$PID_FILE"
    wait_until_ready "$pid" "$started"
}

cmd_stop() {
    local pid waited=0
    pid="$(our_pid)"
    if [[ -z $pid ]]; then
        say "no Cassandra started by this script is running; nothing to stop"
        rm -f "$PID_FILE"
        return 0
    fi
    say "stopping Cassandra (pid $pid)"
    # SIGTERM runs Cassandra's shutdown hook, which drains: memtables are flushed to disk.
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= 120 )); then   # 60 s in half-second polls
            say "still running after 60s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    say "stopped"
}

cmd_status() {
    local pid
    pid="$(our_pid)"
    if cql_answers; then
        if [[ -n $pid ]]; then
            say "Cassandra answers CQL on $HOST:$PORT; it is ours (pid $pid, dir $CASS_DIR)"
        else
            say "something answers CQL on $HOST:$PORT; it was not started by this script (from $CASS_DIR)"
        fi
        return 0
    fi
    if [[ -n $pid ]]; then
        say "nothing answers CQL on $HOST:$PORT; our Cassandra (pid $pid, dir $CASS_DIR) is running (starting, stopping, or on another port)"
    else
        say "nothing answers CQL on $HOST:$PORT; no Cassandra of ours is running"
    fi
    return 1
}

# One start or stop at a time per directory, so two concurrent starts cannot launch two nodes on
# the same data (the second waits, then finds the first node answering).
take_lock() {
    mkdir -p "$CASS_DIR"
    exec 9> "$CASS_DIR/script.lock"
    flock -w 300 9 || die "another cassandra.sh is still busy with $CASS_DIR"
}

case "${1:-}" in
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
