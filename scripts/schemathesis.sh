#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with schemathesis (PyPI): a live
# all-in-one mesh on a temporary data directory and a free port, a valid bearer token (a user
# signed up for the run), every check but one (below), and at least MIN_REQUESTS requests
# (counted by the gateway's own /metrics). Fails on any server error, any response the document
# does not describe (status, content type, headers, body schema), any bad input the API
# accepts, and any route that ignores a missing or wrong token.
#
# Bad input may be refused with a size status too (413, 414, 431): scripts/schemathesis.toml.
#
# Not checked: positive_data_acceptance ("every schema-valid request succeeds"). The API has
# rules JSON Schema cannot state (no self-follow, unique usernames, lengths counted after NFC
# and trimming, no control characters, a password change needs the current password), so a
# schema-valid request can rightly get a 4xx; those 4xx are documented and checked.
#
# DELETE /v1/users/me is left out: it would revoke the run's token after a few requests. So is
# GET /v1/feed/stream: a live feed never ends, so every valid request would run into the
# request timeout. The black-box tests cover both (tests/blackbox/live.rs for the stream).
#
# Usage: scripts/schemathesis.sh [path/to/twtr]   (default: target/debug/twtr, built if missing)
# Environment: SCHEMATHESIS_EXAMPLES (test cases per operation, default 50), SCHEMATHESIS_SEED
# (replay the run a failure printed the seed of), CI=true (nothing may be skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
MIN_REQUESTS=1000
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-50}"
TOOLS="$PWD/.tools/pypi-schemathesis"
TWTR="${1:-target/debug/twtr}"
config="$PWD/scripts/schemathesis.toml"

not_run() {
    if [[ "${CI:-}" == "true" ]]; then
        echo "schemathesis.sh: $1 (in CI nothing may be skipped)" >&2
        exit 1
    fi
    echo "schemathesis.sh: NOT RUN: $1" >&2
    exit 0
}

schemathesis() {
    PYTHONPATH="$TOOLS" python3 -m schemathesis.cli "$@"
}

if ! schemathesis --version 2>/dev/null | grep -q "$VERSION"; then
    command -v python3 >/dev/null 2>&1 || not_run "python3 (with pip) is needed to install schemathesis"
    echo "schemathesis.sh: installing schemathesis $VERSION from PyPI into .tools" >&2
    rm -rf "$TOOLS"
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS" \
        "schemathesis==$VERSION" || not_run "pip could not install schemathesis"
fi

if [[ ! -x "$TWTR" ]]; then
    cargo build --quiet --bin twtr
fi

work=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n "$pid" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The mesh as `cargo run` starts it, but on free ports, with its rate limits off: the fuzzer is
# one client sending a thousand requests a minute, which is what those limits refuse (they
# have black-box tests of their own).
TWTR_DATA_DIR="$work/data" TWTR_LOG_FORMAT=json TWTR_LOG=warn,twtr=info \
    TWTR_HTTP_ADDR=127.0.0.1:0 TWTR_USERS_ADDR=127.0.0.1:0 TWTR_TWEETS_ADDR=127.0.0.1:0 \
    TWTR_FOLLOWERS_ADDR=127.0.0.1:0 TWTR_FEEDS_ADDR=127.0.0.1:0 \
    TWTR_RATE_LIMIT_PER_IP=0 TWTR_RATE_LIMIT_PER_CALLER=0 TWTR_RATE_LIMIT_AUTH_PER_IP=0 \
    "$TWTR" all >"$work/twtr.log" 2>&1 &
pid=$!

http=""
for _ in $(seq 1 300); do
    http=$(sed -nE 's/.*"message":"twtr mesh starting".*"http":"([^"]+)".*/\1/p' "$work/twtr.log" | head -1)
    if [[ -z "$http" ]]; then
        http=$(sed -nE 's/.*"http":"([^"]+)".*"message":"twtr mesh starting".*/\1/p' "$work/twtr.log" | head -1)
    fi
    [[ -n "$http" ]] && curl -fsS "$http/health/details" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/twtr.log" >&2; echo "schemathesis.sh: twtr exited" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "$http/health/details" >/dev/null || { cat "$work/twtr.log" >&2; echo "schemathesis.sh: twtr not ready" >&2; exit 1; }

account='{"username":"fuzzer","password":"schemathesis-run"}'
curl -fsS "$http/v1/users" -H 'content-type: application/json' -d "$account" >/dev/null
token=$(curl -fsS "$http/v1/sessions" -H 'content-type: application/json' -d "$account" |
    sed -E 's/.*"token":"([^"]+)".*/\1/')

echo "schemathesis.sh: schemathesis $VERSION against $http/openapi.json ($EXAMPLES cases per operation)" >&2
started=$SECONDS
# From the temporary directory, so schemathesis's own files (.schemathesis/) do not land in the
# repository.
(cd "$work" && schemathesis --config-file "$config" run "$http/openapi.json" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$EXAMPLES" \
    --header "Authorization: Bearer $token" \
    --exclude-operation-id delete_me \
    --exclude-operation-id feed_stream \
    --request-timeout 20 \
    ${SCHEMATHESIS_SEED:+--seed "$SCHEMATHESIS_SEED"} \
    --no-color)

requests=$(curl -fsS "$http/metrics" |
    awk '/^twtr_http_requests_total\{/ && !/route="\/(metrics|readyz|healthz|health\/details|openapi.json)"/ { sum += $NF } END { printf "%d", sum }')
echo "schemathesis.sh: $requests API requests answered in $((SECONDS - started)) s, no failure" >&2
if (( requests < MIN_REQUESTS )); then
    echo "schemathesis.sh: only $requests requests; at least $MIN_REQUESTS are required" >&2
    exit 1
fi
