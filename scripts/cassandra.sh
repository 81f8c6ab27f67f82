#!/usr/bin/env bash
# Runs a real Apache Cassandra 5.0 for local development and tests: one node (the default, what
# scripts/test.sh uses), or a small cluster of nodes on loopback addresses of one machine.
#
#   scripts/cassandra.sh start    start a node (or reuse one that already answers CQL), wait until
#                                 it answers CQL, print how long that took
#   scripts/cassandra.sh stop     stop the node this script started (and only that one)
#   scripts/cassandra.sh status   say whether a node answers CQL on the port, and whether it is ours
#
# A cluster (one data center `dc1`, rack `rack1`, one JVM per node, every node a seed):
#
#   scripts/cassandra.sh start --nodes 3   start (or restart) the cluster, wait until every node
#                                          answers CQL and sees every other node up
#   scripts/cassandra.sh stop --cluster    stop every node of the cluster
#   scripts/cassandra.sh status --cluster  per node: CQL, pid, and which peers it last saw up
#   scripts/cassandra.sh kill NODE         kill -9 one node (NODE: 1..N, or its address)
#   scripts/cassandra.sh stop NODE         stop one node the way a rolling restart does (SIGTERM:
#                                          it tells its peers it is going, then drains)
#   scripts/cassandra.sh start NODE        start that node again on its data; waits until the
#                                          other nodes see it up (it rejoins, hints replay) and
#                                          every node has the same schema
#   scripts/cassandra.sh agree             wait until every node has the same schema (a node
#                                          left behind past 75 s gets nodetool resetlocalschema,
#                                          again every 30 s while it stays behind)
#   scripts/cassandra.sh nodetool NODE ... nodetool against that node (JMX on 127.0.0.1 only)
#
# Node i listens on the i-th address of TWTR_CASSANDRA_HOSTS, every node on the same CQL and
# storage port (what a real cluster does). With a cluster directory given in TWTR_CASSANDRA_DIR
# (one that `start --nodes` made), stop and status act on the cluster without --cluster.
# Each node gets num_tokens 1 with evenly spaced initial tokens, auto_bootstrap false, the
# GossipingPropertyFileSnitch, and no gossip settle wait: a fresh cluster forms in about the time
# one node takes to start. NetworkTopologyStrategy {'dc1': 3} works on it (TWTR_SCYLLA_REPLICATION=dc1:3).
#
# Cassandra comes from Maven Central: the jars of org.apache.cassandra:cassandra-all and its runtime
# dependencies are copied once into lib/ and reused (by every node of a cluster too). No Docker, no
# tarball.
#
# Environment (all optional):
#   TWTR_CASSANDRA_PORT          CQL (native transport) port                  (default 9042)
#   TWTR_CASSANDRA_STORAGE_PORT  inter-node port, bound on the node's address  (default CQL port + 10000)
#   TWTR_CASSANDRA_HEAP          JVM heap, used for -Xms and -Xmx              (default 2g; 512m per cluster node)
#   TWTR_CASSANDRA_DIR           jars, config, data and logs                   (default <repo>/.cassandra;
#                                                                               <repo>/.cassandra-cluster for a cluster)
#   TWTR_CASSANDRA_LIB_DIR       the resolved jars, shareable between nodes    (default $TWTR_CASSANDRA_DIR/lib,
#                                                                               or <repo>/.cassandra/lib when unset)
#   TWTR_CASSANDRA_START_TIMEOUT seconds to wait for CQL to answer on start    (default 180)
#   TWTR_CASSANDRA_JVM_OPTS      extra JVM options, whitespace-separated       (default none)
#   TWTR_CASSANDRA_HOSTS         a cluster's node addresses, comma-separated   (default 127.0.0.1,...,127.0.0.N)
#   TWTR_CASSANDRA_JMX_PORT      a cluster's first JMX port on 127.0.0.1; node i uses it + i - 1
#                                                                              (default CQL port + 20000)
#
# A cluster on the default addresses needs 127.0.0.1:9042 free. Where a single node already holds
# it (the shared one on the project's machines), put the cluster on other loopback addresses:
#   TWTR_CASSANDRA_HOSTS=127.0.0.4,127.0.0.5,127.0.0.6 scripts/cassandra.sh start --nodes 3
#   TWTR_SCYLLA_NODES=127.0.0.4:9042,127.0.0.5:9042,127.0.0.6:9042 TWTR_SCYLLA_REPLICATION=dc1:3 twtr migrate
# (every 127.0.0.0/8 address is loopback on Linux; on macOS add aliases with `ifconfig lo0 alias`).
# The settings are saved in the cluster directory's cluster.env on `start --nodes`; the other
# cluster commands read them from there.
#
# Layout of $TWTR_CASSANDRA_DIR (one node): pom.xml and lib/ (resolved jars), conf/ (cassandra.yaml,
# logback.xml), data/ (data, commitlog, hints, saved_caches, cdc_raw), logs/ (system.log, and
# stdout.log for anything the JVM prints before logging starts), cassandra.pid, script.lock,
# maven.log. A cluster's directory holds cluster.env, script.lock and node1/ ... nodeN/, each laid
# out like a single node's directory (without lib/).
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

# A cluster's nodes share the single node's jars unless told otherwise, so a cluster never
# resolves them again.
LIB_DIR="${TWTR_CASSANDRA_LIB_DIR:-${TWTR_CASSANDRA_DIR:-$REPO_ROOT/.cassandra}/lib}"
LIB_MARKER="$LIB_DIR/.resolved-cassandra-all-$CASSANDRA_VERSION"
CONF_DIR="$CASS_DIR/conf"
DATA_DIR="$CASS_DIR/data"
LOG_DIR="$CASS_DIR/logs"
PID_FILE="$CASS_DIR/cassandra.pid"

# What write_config and jvm_options put in a node's configuration. These are the single node's;
# use_cluster and select_node replace them for a cluster's nodes.
CLUSTER_NAME=twtr-dev
SNITCH=SimpleSnitch
SEEDS=""
INITIAL_TOKEN=""
JMX_PORT=""
LABEL=Cassandra
# How to stop what this invocation starts, for messages.
STOP_HINT="$0 stop"

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
    local token_line="" token_comment="# One node, one token: nothing to allocate or stream, no bootstrap."
    if [[ -n $INITIAL_TOKEN ]]; then
        # A fresh cluster whose nodes start at once: tokens fixed up front and evenly spaced, so
        # no node bootstraps (streams from the others) or waits for the ring to settle.
        token_line="initial_token: $INITIAL_TOKEN"
        token_comment="# One token per node, fixed and evenly spaced: nothing to allocate or stream, no bootstrap."
    fi
    cat > "$CONF_DIR/cassandra.yaml" <<EOF
# Generated by scripts/cassandra.sh on every start; edit the script, not this file.
cluster_name: $CLUSTER_NAME
$token_comment
num_tokens: 1
$token_line
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: $SNITCH
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "${SEEDS:-$HOST:$STORAGE_PORT}"
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
    if [[ $SNITCH == GossipingPropertyFileSnitch ]]; then
        # Read from the classpath (conf/ is on it): the node's data center and rack.
        printf 'dc=dc1\nrack=rack1\n' > "$CONF_DIR/cassandra-rackdc.properties"
    fi
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
        # Single node: do not wait for gossip to settle nor for a ring to form. A cluster's
        # nodes do not either: their tokens are fixed and none bootstraps, so nothing needs a
        # settled ring before it serves; peers show up through gossip within seconds.
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=1000
        # A node that missed a schema change's push (dropped when it expired in a send queue,
        # which happens here when the nodes share two busy cores) pulls the schema only after
        # migration_delay_ms, 60 s by default, once per change: a migration of two dozen
        # changes once took 29 minutes on a fresh cluster. A pull 5 s after gossip shows the
        # difference costs a tiny schema read.
        -Dcassandra.migration_delay_ms=5000
    )
    if [[ -n $JMX_PORT ]]; then
        # A cluster's nodes serve JMX (for nodetool) on 127.0.0.1 only, one port each.
        JVM_OPTS+=(-Dcassandra.jmx.local.port="$JMX_PORT")
    fi
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
            say "$LABEL (pid $pid) exited during start-up; end of its logs:"
            show_log_tail
            rm -f "$PID_FILE"
            exit 1
        fi
        if (( $(now_ms) > deadline )); then
            say "$LABEL (pid $pid) did not answer CQL on $HOST:$PORT within ${START_TIMEOUT}s; end of its logs (it is left running; '$STOP_HINT' stops it):"
            show_log_tail
            exit 1
        fi
        sleep 0.5
    done
    say "${LABEL/#Cassandra/Cassandra $CASSANDRA_VERSION} answers CQL on $HOST:$PORT (pid $pid, started in $(elapsed "$started"); logs in $LOG_DIR)"
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
    launch
    wait_until_ready "$LAUNCHED_PID" "$started"
}

# Starts the JVM of the node the globals describe (config and JVM options already written) and
# leaves its pid in LAUNCHED_PID and the pid file. Does not wait.
launch() {
    # Where the node's system.log stood before this start: what it logs about its peers from
    # here on is the current view (see peer_state).
    wc -l 2>/dev/null < "$LOG_DIR/system.log" > "$LOG_DIR/start.offset" || echo 0 > "$LOG_DIR/start.offset"
    # setsid + nohup: the node outlives this shell and its terminal. In a non-interactive script
    # setsid execs directly (no fork), so $! is the java process itself. 9>&- keeps the script's
    # lock out of the node.
    cd "$CASS_DIR"
    setsid nohup "$JAVA" "${JVM_OPTS[@]}" -cp "$CONF_DIR:$LIB_DIR/*" \
        org.apache.cassandra.service.CassandraDaemon > "$LOG_DIR/stdout.log" 2>&1 < /dev/null 9>&- &
    LAUNCHED_PID=$!
    echo "$LAUNCHED_PID" > "$PID_FILE"
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

# ---------------------------------------------------------------------------------------------
# A cluster: N nodes, node i on the i-th address of HOSTS, all on the same ports.
# ---------------------------------------------------------------------------------------------

CLUSTER_DIR="${TWTR_CASSANDRA_DIR:-$REPO_ROOT/.cassandra-cluster}"
CLUSTER_ENV="$CLUSTER_DIR/cluster.env"
HOSTS=()
TOKENS=()
NODES=0
JMX_BASE=""

# True while process $1 exists and is not a zombie: a killed node whose exit nobody has reaped
# yet (its parent is init) is gone for every purpose here.
running() { [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Sets the globals of a cluster of $1 nodes from the environment (a new cluster), or from
# cluster.env when $1 is empty (an existing one).
use_cluster() {
    local nodes="$1"
    if [[ -z $nodes ]]; then
        [[ -f $CLUSTER_ENV ]] || die "no cluster in $CLUSTER_DIR (start one with '$0 start --nodes 3')"
        # shellcheck disable=SC1090 # written by this script
        source "$CLUSTER_ENV"
        read -r -a HOSTS <<< "$SAVED_HOSTS"
        PORT="$SAVED_PORT"
        STORAGE_PORT="$SAVED_STORAGE_PORT"
        JMX_BASE="$SAVED_JMX_BASE"
        HEAP="$SAVED_HEAP"
        nodes="${#HOSTS[@]}"
    else
        [[ $nodes =~ ^[0-9]+$ ]] && (( nodes >= 2 && nodes <= 9 )) || die "--nodes takes a number from 2 to 9 (1 is the single node: leave it out)"
        local listed="${TWTR_CASSANDRA_HOSTS:-}"
        if [[ -z $listed && -f $CLUSTER_ENV ]]; then
            # A cluster that exists keeps its addresses unless told otherwise (save_cluster
            # refuses different ones).
            listed="$(sed -n 's/^SAVED_HOSTS=//p' "$CLUSTER_ENV" | tr -d "'\\\\")"
        fi
        if [[ -n $listed ]]; then
            read -r -a HOSTS <<< "${listed//,/ }"
            (( ${#HOSTS[@]} == nodes )) || die "TWTR_CASSANDRA_HOSTS lists ${#HOSTS[@]} addresses for $nodes nodes"
        else
            HOSTS=()
            for ((i = 1; i <= nodes; i++)); do HOSTS+=("127.0.0.$i"); done
        fi
        HEAP="${TWTR_CASSANDRA_HEAP:-512m}"
        JMX_BASE="${TWTR_CASSANDRA_JMX_PORT:-$((PORT + 20000))}"
        (( JMX_BASE + nodes - 1 <= 65535 )) || die "JMX ports from $JMX_BASE do not fit; set TWTR_CASSANDRA_JMX_PORT"
    fi
    NODES="$nodes"
    CLUSTER_NAME=twtr-cluster
    SNITCH=GossipingPropertyFileSnitch
    STOP_HINT="$0 stop --cluster"
    local seeds=() host
    for host in "${HOSTS[@]}"; do seeds+=("$host:$STORAGE_PORT"); done
    SEEDS="$(IFS=,; echo "${seeds[*]}")"
    # Murmur3 tokens run from -2^63 to 2^63-1: node i starts at -2^63 + i * (2^64 / N). Added up
    # step by step, since 2^64 does not fit in bash's arithmetic.
    local step=$(( (9223372036854775807 / NODES) * 2 )) token=$(( -9223372036854775807 - 1 ))
    TOKENS=()
    for ((i = 0; i < NODES; i++)); do
        TOKENS+=("$token")
        token=$(( token + step ))
    done
}

# Remembers a new cluster's settings, or checks that they match the ones its data was made with.
save_cluster() {
    local saved
    saved="$(printf 'SAVED_HOSTS=%q\nSAVED_PORT=%q\nSAVED_STORAGE_PORT=%q\nSAVED_JMX_BASE=%q\nSAVED_HEAP=%q\n' \
        "${HOSTS[*]}" "$PORT" "$STORAGE_PORT" "$JMX_BASE" "$HEAP")"
    if [[ -f $CLUSTER_ENV ]]; then
        # A node's data knows its address, its tokens and its peers: moving it is not a restart.
        local before after
        before="$(grep -v '^SAVED_HEAP=' "$CLUSTER_ENV")"
        after="$(grep -v '^SAVED_HEAP=' <<< "$saved")"
        [[ $before == "$after" ]] || die "the cluster in $CLUSTER_DIR was made with other addresses or ports ($(tr '\n' ' ' < "$CLUSTER_ENV")); remove the directory to start afresh, or set TWTR_CASSANDRA_DIR"
    fi
    mkdir -p "$CLUSTER_DIR"
    echo "$saved" > "$CLUSTER_ENV"
}

# Points the node globals (HOST, CONF_DIR, DATA_DIR, LOG_DIR, PID_FILE, ...) at node $1.
select_node() {
    local i="$1"
    HOST="${HOSTS[$((i - 1))]}"
    CASS_DIR="$CLUSTER_DIR/node$i"
    CONF_DIR="$CASS_DIR/conf"
    DATA_DIR="$CASS_DIR/data"
    LOG_DIR="$CASS_DIR/logs"
    PID_FILE="$CASS_DIR/cassandra.pid"
    INITIAL_TOKEN="${TOKENS[$((i - 1))]}"
    JMX_PORT=$((JMX_BASE + i - 1))
    LABEL="node$i: Cassandra"
}

# The node number NODE names: its number (1..N), nodeN, or its address.
node_number() {
    local name="$1" i
    name="${name#node}"
    if [[ $name =~ ^[0-9]+$ ]] && (( name >= 1 && name <= NODES )); then
        echo "$name"
        return
    fi
    for ((i = 1; i <= NODES; i++)); do
        [[ ${HOSTS[$((i - 1))]} == "$1" ]] && { echo "$i"; return; }
    done
    die "no node $1 in the cluster in $CLUSTER_DIR (nodes 1..$NODES: ${HOSTS[*]})"
}

# UP or DOWN: what the selected node last logged about the peer at $1 since it started, or
# nothing when it has not mentioned it yet. Gossip logs "InetAddress /<addr>:<port> is now UP"
# (or DOWN) whenever its view of a peer changes.
peer_state() {
    local peer="$1" offset
    offset="$(cat "$LOG_DIR/start.offset" 2>/dev/null || echo 0)"
    # A log rotated since the start is read whole.
    (( $(wc -l < "$LOG_DIR/system.log" 2>/dev/null || echo 0) >= offset )) || offset=0
    tail -n +"$((offset + 1))" "$LOG_DIR/system.log" 2>/dev/null \
        | grep -o "/$peer:$STORAGE_PORT is now [A-Z]*" | tail -n 1 | awk '{print $NF}'
}

# Waits until every running node of the cluster sees node $1 up (every node when $1 is empty),
# as their gossip last logged it.
wait_for_gossip() {
    local only="$1" started="$2" deadline=$(( $(now_ms) + START_TIMEOUT * 1000 )) i j missing
    while :; do
        missing=""
        for ((i = 1; i <= NODES; i++)); do
            select_node "$i"
            [[ -n $(our_pid) ]] || continue
            for ((j = 1; j <= NODES; j++)); do
                (( i == j )) && continue
                [[ -n $only && $j != "$only" && $i != "$only" ]] && continue
                [[ $(peer_state "${HOSTS[$((j - 1))]}") == UP ]] || missing+=" node$i->node$j"
            done
        done
        [[ -z $missing ]] && break
        if (( $(now_ms) > deadline )); then
            die "gossip did not report every node up within ${START_TIMEOUT}s (still waiting for:$missing); see the nodes' logs in $CLUSTER_DIR/node*/logs"
        fi
        sleep 0.5
    done
    say "every node sees ${only:+node$only and }the others up (after $(elapsed "$started"))"
}

# The schema versions nodetool describecluster reports, one line each: `<version>: [<addresses>]`.
# (Each is followed by a blank line; the section ends at "Stats for all nodes:".)
schema_versions() {
    sed -n '/Schema versions:/,/Stats for all nodes:/p' <<< "$1" \
        | sed -n 's/^[[:space:]]*\(\([0-9a-f-]\{36\}\|UNREACHABLE\): \[.*\]\)[[:space:]]*$/\1/p'
}

# How long nodes may disagree on the schema before the ones holding a minority version are told to
# reset it (see wait_for_schema_agreement): past Cassandra's periodic schema pull (every 60 s).
# While they still disagree, the reset is repeated every SCHEMA_RESET_EVERY seconds.
SCHEMA_RESET_AFTER=75
SCHEMA_RESET_EVERY=30

# Waits until every node reports one schema version (nodetool describecluster on node 1), so the
# first schema change made on the cluster is not waited out behind the nodes' own start-up or
# catch-up changes; dies with what each node reports when they still differ after START_TIMEOUT.
#
# A node that missed a schema push while busy (just restarted, under load) pulls the schema from
# its peers; but Cassandra 5.0 never retries a pull whose answer did not come (its callback is
# not told of the timeout), and such a node keeps its old schema until something changes the
# schema again. Past SCHEMA_RESET_AFTER the nodes holding a version fewer nodes hold are told
# `nodetool resetlocalschema` (Cassandra's remedy: drop the local schema, pull it afresh from one
# peer). That pull can be lost the same way on a busy machine (the reset then fails, or leaves
# the node on yet another version), so while the nodes still disagree the reset is repeated every
# SCHEMA_RESET_EVERY seconds until START_TIMEOUT.
wait_for_schema_agreement() {
    local started="$1" deadline=$(( $(now_ms) + START_TIMEOUT * 1000 )) report versions
    local next_reset="" resets=0 host lagging
    while :; do
        report="$( (cmd_nodetool 1 describecluster) 2>&1 || true)"
        versions="$(schema_versions "$report")"
        if [[ $(grep -c . <<< "$versions") == 1 ]] && [[ $versions != UNREACHABLE* ]]; then
            break
        fi
        next_reset="${next_reset:-$(( $(now_ms) + SCHEMA_RESET_AFTER * 1000 ))}"
        if (( $(now_ms) > next_reset )); then
            next_reset=$(( $(now_ms) + SCHEMA_RESET_EVERY * 1000 ))
            resets=$((resets + 1))
            # Every version but the one most nodes hold (its address list is the longest).
            lagging="$(grep -v '^UNREACHABLE' <<< "$versions" \
                | awk -F'[][]' '{ print gsub(/,/, ",", $2) "\t" $2 }' \
                | sort -rn | tail -n +2 | cut -f2 | tr -d ' ' | tr ',' '\n' | sed 's/:[0-9]*$//')"
            for host in $lagging; do
                say "node $host still holds another schema version after $(elapsed "$started"); nodetool resetlocalschema on it (reset $resets; versions: $(tr '\n' ' ' <<< "$versions"))"
                (cmd_nodetool "$host" resetlocalschema) || say "nodetool resetlocalschema on $host failed"
            done
        fi
        if (( $(now_ms) > deadline )); then
            die "the nodes did not agree on one schema within ${START_TIMEOUT}s ($resets resets); nodetool describecluster said:
$report
the schema versions, node by node:
$versions"
        fi
        sleep 2
    done
    say "every node has the same schema (after $(elapsed "$started"))"
}

# Checks the selected node's ports are free before it starts.
check_ports() {
    port_in_use "$PORT" && die "port $HOST:$PORT is taken; set TWTR_CASSANDRA_HOSTS or TWTR_CASSANDRA_PORT (see the top of $0)"
    port_in_use "$STORAGE_PORT" && die "storage port $HOST:$STORAGE_PORT is taken; set TWTR_CASSANDRA_HOSTS or TWTR_CASSANDRA_STORAGE_PORT"
    local host="$HOST"
    HOST=127.0.0.1
    port_in_use "$JMX_PORT" && { HOST="$host"; die "JMX port 127.0.0.1:$JMX_PORT is taken; set TWTR_CASSANDRA_JMX_PORT"; }
    HOST="$host"
}

# Starts the selected node unless it runs already; sets LAUNCHED_PID (empty when it was running).
start_node() {
    LAUNCHED_PID=""
    local pid
    pid="$(our_pid)"
    if [[ -n $pid ]]; then
        say "${LABEL%%:*} already runs (pid $pid)"
        return 0
    fi
    check_ports
    write_config
    jvm_options
    say "starting ${LABEL%%:*} on $HOST:$PORT (storage port $STORAGE_PORT, JMX 127.0.0.1:$JMX_PORT, heap $HEAP, token $INITIAL_TOKEN)"
    launch
}

cmd_cluster_start() {
    use_cluster "$1"
    save_cluster
    ensure_tools
    resolve_jars
    local started i pids=()
    started="$(now_ms)"
    say "starting a cluster of $NODES nodes (dc1) on ${HOSTS[*]}, CQL port $PORT, in $CLUSTER_DIR"
    # All at once: fixed tokens and no bootstrap let every node start without waiting for the
    # others, so the cluster takes about as long as one node on this machine's cores.
    for ((i = 1; i <= NODES; i++)); do
        select_node "$i"
        start_node
        pids+=("${LAUNCHED_PID:-$(our_pid)}")
    done
    for ((i = 1; i <= NODES; i++)); do
        select_node "$i"
        wait_until_ready "${pids[$((i - 1))]}" "$started"
    done
    wait_for_gossip "" "$started"
    wait_for_schema_agreement "$started"
    say "cluster of $NODES nodes ready in $(elapsed "$started"); contact points: TWTR_SCYLLA_NODES=$(contact_points)"
}

contact_points() {
    local points=() host
    for host in "${HOSTS[@]}"; do points+=("$host:$PORT"); done
    (IFS=,; echo "${points[*]}")
}

cmd_node_start() {
    use_cluster ""
    local i started
    i="$(node_number "$1")"
    ensure_tools
    select_node "$i"
    if cql_answers && [[ -n $(our_pid) ]]; then
        say "node$i already answers CQL on $HOST:$PORT (pid $(our_pid)); nothing to do"
        return 0
    fi
    started="$(now_ms)"
    start_node
    wait_until_ready "${LAUNCHED_PID:-$(our_pid)}" "$started"
    wait_for_gossip "$i" "$started"
    wait_for_schema_agreement "$started"
}

# Waits until the cluster's nodes agree on one schema (see wait_for_schema_agreement): what a
# test or an operator checks before changing the schema of a cluster whose nodes have just been
# restarted.
cmd_cluster_agree() {
    use_cluster ""
    ensure_tools
    wait_for_schema_agreement "$(now_ms)"
}

cmd_node_kill() {
    use_cluster ""
    local i pid started
    i="$(node_number "$1")"
    select_node "$i"
    pid="$(our_pid)"
    [[ -n $pid ]] || { say "node$i ($HOST) is not running; nothing to kill"; return 0; }
    started="$(now_ms)"
    # SIGKILL: no drain, no flush, no goodbye to the peers; what a crashed machine looks like.
    kill -KILL "$pid"
    while running "$pid"; do sleep 0.1; done
    rm -f "$PID_FILE"
    say "killed node$i ($HOST:$PORT, pid $pid) with SIGKILL in $(elapsed "$started")"
}

cmd_node_stop() {
    use_cluster ""
    local i pid started waited=0
    i="$(node_number "$1")"
    select_node "$i"
    pid="$(our_pid)"
    [[ -n $pid ]] || { say "node$i ($HOST) is not running; nothing to stop"; return 0; }
    started="$(now_ms)"
    # SIGTERM runs the shutdown hook: the node announces its shutdown to its peers through gossip
    # (they mark it down at once, with no failure-detector delay), then drains.
    kill -TERM "$pid"
    while running "$pid"; do
        if (( waited >= 600 )); then   # 60 s in tenth-of-a-second polls
            say "node$i still running after 60s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    say "stopped node$i ($HOST:$PORT, pid $pid) in $(elapsed "$started")"
}

cmd_cluster_stop() {
    use_cluster ""
    local i pid pids=() waited=0
    for ((i = 1; i <= NODES; i++)); do
        select_node "$i"
        pid="$(our_pid)"
        [[ -n $pid ]] || continue
        # SIGTERM runs Cassandra's shutdown hook, which drains: memtables are flushed to disk.
        kill -TERM "$pid"
        pids+=("$pid")
        say "stopping node$i ($HOST, pid $pid)"
    done
    (( ${#pids[@]} )) || { say "no node of the cluster in $CLUSTER_DIR is running; nothing to stop"; return 0; }
    for pid in "${pids[@]}"; do
        while running "$pid"; do
            if (( waited >= 120 )); then   # 60 s in half-second polls
                say "pid $pid still running after 60s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.5
            waited=$((waited + 1))
        done
    done
    for ((i = 1; i <= NODES; i++)); do
        select_node "$i"
        [[ -n $(our_pid) ]] || rm -f "$PID_FILE"
    done
    say "stopped"
}

cmd_cluster_status() {
    use_cluster ""
    local i j pid answers=0 line state
    say "cluster in $CLUSTER_DIR: $NODES nodes, dc1, CQL port $PORT (TWTR_SCYLLA_NODES=$(contact_points))"
    for ((i = 1; i <= NODES; i++)); do
        select_node "$i"
        pid="$(our_pid)"
        line="node$i $HOST:"
        if cql_answers; then
            line+="$PORT answers CQL"
            answers=$((answers + 1))
        else
            line+="$PORT does not answer CQL"
        fi
        if [[ -n $pid ]]; then
            line+=", pid $pid, rss $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0) / 1024 )) MiB; sees"
            for ((j = 1; j <= NODES; j++)); do
                (( i == j )) && continue
                state="$(peer_state "${HOSTS[$((j - 1))]}")"
                line+=" node$j ${state:-unknown}"
            done
        else
            line+=", not running"
        fi
        say "$line"
    done
    (( answers == NODES ))
}

# nodetool against node $1 over its JMX port (127.0.0.1 only).
cmd_nodetool() {
    use_cluster ""
    local i
    i="$(node_number "$1")"
    shift
    ensure_tools
    select_node "$i"
    jvm_options
    # The server's module-system options (nodetool's classes touch the same JDK internals), not
    # its heap, agent or daemon settings.
    local modules=() opt take=0
    for opt in "${JVM_OPTS[@]}"; do
        if (( take )); then modules+=("$opt"); take=0; continue; fi
        case "$opt" in
            --add-exports|--add-opens) modules+=("$opt"); take=1 ;;
        esac
    done
    # Warnings and errors on stderr; never into the node's own system.log.
    cat > "$CONF_DIR/logback-tools.xml" <<'EOF'
<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR" /></root>
</configuration>
EOF
    "$JAVA" -Xmx128m "${modules[@]}" -cp "$CONF_DIR:$LIB_DIR/*" \
        -Dlogback.configurationFile="$CONF_DIR/logback-tools.xml" -Dcassandra.logdir="$LOG_DIR" \
        org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$JMX_PORT" "$@"
}

# One start or stop at a time per directory, so two concurrent starts cannot launch two nodes on
# the same data (the second waits, then finds the first node answering).
take_lock() {
    mkdir -p "$CASS_DIR"
    exec 9> "$CASS_DIR/script.lock"
    flock -w 300 9 || die "another cassandra.sh is still busy with $CASS_DIR"
}

take_cluster_lock() {
    CASS_DIR="$CLUSTER_DIR" take_lock
}

# Whether stop and status mean the cluster: --cluster, or TWTR_CASSANDRA_DIR names a cluster's
# directory.
is_cluster() {
    [[ ${1:-} == --cluster ]] || [[ -n ${TWTR_CASSANDRA_DIR:-} && -f $CLUSTER_ENV ]]
}

usage() {
    echo "usage: $0 start [--nodes N | NODE] | stop [--cluster | NODE] | status [--cluster] | kill NODE | agree | nodetool NODE ARGS..." >&2
    exit 2
}

case "${1:-}" in
    start)
        case "${2:-}" in
            "") if is_cluster; then take_cluster_lock; cmd_cluster_start ""; else take_lock; cmd_start; fi ;;
            --nodes)
                [[ -n ${3:-} ]] || usage
                if [[ $3 == 1 ]]; then take_lock; cmd_start; else take_cluster_lock; cmd_cluster_start "$3"; fi ;;
            -*) usage ;;
            *) take_cluster_lock; cmd_node_start "$2" ;;
        esac ;;
    stop)
        case "${2:-}" in
            ""|--cluster) if is_cluster "${2:-}"; then take_cluster_lock; cmd_cluster_stop; else take_lock; cmd_stop; fi ;;
            -*) usage ;;
            *) take_cluster_lock; cmd_node_stop "$2" ;;
        esac ;;
    status) if is_cluster "${2:-}"; then cmd_cluster_status; else cmd_status; fi ;;
    kill) [[ -n ${2:-} ]] || usage; take_cluster_lock; cmd_node_kill "$2" ;;
    agree) take_cluster_lock; cmd_cluster_agree ;;
    nodetool) [[ -n ${2:-} ]] || usage; node="$2"; shift 2; cmd_nodetool "$node" "$@" ;;
    *) usage ;;
esac
