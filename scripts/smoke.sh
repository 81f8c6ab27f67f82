#!/usr/bin/env bash
# Smoke test of a running twtr, over its public HTTP API with curl: signs up two fresh users,
# logs both in, the first follows the second, the second posts, and the first's home feed is
# polled until the tweet shows (it travels as an event through RabbitMQ to the feeds service).
#
#   scripts/smoke.sh http://localhost:8080     # any running gateway (cargo run, compose, ...)
#   scripts/smoke.sh                           # port-forwards the gateway of a Helm release
#
# Without a URL, it port-forwards the gateway Service of release $TWTR_RELEASE (default twtr)
# in namespace $TWTR_NAMESPACE (default twtr) with kubectl. $TWTR_SMOKE_DEADLINE seconds
# (default 60) bound each wait. Exits non-zero, with the failing response, on any surprise.
set -euo pipefail

deadline_secs="${TWTR_SMOKE_DEADLINE:-60}"
base="${1:-}"

if [[ -z "$base" ]]; then
    release="${TWTR_RELEASE:-twtr}"
    namespace="${TWTR_NAMESPACE:-twtr}"
    service="$(kubectl --namespace "$namespace" get service \
        -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component=gateway" \
        -o name | head -n 1)"
    [[ -n "$service" ]] || {
        echo "smoke.sh: no gateway Service for release $release in namespace $namespace" >&2
        exit 1
    }
    port="${TWTR_SMOKE_PORT:-18080}"
    kubectl --namespace "$namespace" port-forward "$service" "$port:80" >/dev/null &
    forward=$!
    trap 'kill "$forward" 2>/dev/null || true' EXIT
    base="http://127.0.0.1:$port"
    echo "smoke.sh: port-forwarding $service to $base" >&2
fi
base="${base%/}"

fail() {
    echo "smoke.sh: FAIL: $*" >&2
    exit 1
}

# request METHOD PATH [TOKEN] [JSON]: sets $status and $body.
request() {
    local method="$1" path="$2" token="${3:-}" json="${4:-}" args=() out
    args=(-sS -X "$method" -w '\n%{http_code}' --max-time 10)
    [[ -n "$token" ]] && args+=(-H "authorization: Bearer $token")
    [[ -n "$json" ]] && args+=(-H 'content-type: application/json' -d "$json")
    out="$(curl "${args[@]}" "$base$path")" || return 1
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
}

expect() {
    local want="$1" what="$2"
    [[ "$status" == "$want" ]] || fail "$what: HTTP $status (wanted $want): $body"
}

# field NAME: the first "NAME":"value" string in $body (IDs and tokens are JSON strings; a
# tweet's own id comes before its author's).
field() {
    grep -o "\"$1\":\"[^\"]*\"" <<<"$body" | head -n 1 | cut -d '"' -f 4
}

# Waits for the mesh to be healthy (every service ready, its broker connected), up to the deadline.
end=$((SECONDS + deadline_secs))
until request GET /health/details 2>/dev/null && [[ "$status" == 200 ]]; do
    ((SECONDS < end)) || fail "the gateway at $base is not ready: ${status:-no answer} ${body:-}"
    sleep 1
done
echo "smoke.sh: $base is ready" >&2

# Fresh names every run: 3..15 of [A-Za-z0-9_].
suffix="$(date +%s)$((RANDOM % 10))"
alice="sa_${suffix: -11}"
bob="sb_${suffix: -11}"
password="smoke-test-password"

for user in "$alice" "$bob"; do
    request POST /v1/users "" "{\"username\":\"$user\",\"password\":\"$password\"}"
    expect 201 "sign up $user"
done
request POST /v1/sessions "" "{\"username\":\"$alice\",\"password\":\"$password\"}"
expect 200 "log in $alice"
alice_token="$(field token)"
request POST /v1/sessions "" "{\"username\":\"$bob\",\"password\":\"$password\"}"
expect 200 "log in $bob"
bob_token="$(field token)"
request GET "/v1/users/by-username/$bob"
expect 200 "look up $bob"
bob_id="$(field id)"

request POST "/v1/users/$bob_id/follow" "$alice_token"
expect 204 "$alice follows $bob"
request POST /v1/tweets "$bob_token" "{\"text\":\"smoke test $suffix\"}"
expect 201 "$bob posts"
tweet_id="$(field id)"
[[ -n "$tweet_id" && "$tweet_id" != "$bob_id" ]] || fail "no tweet id in the answer: $body"
echo "smoke.sh: $bob ($bob_id) posted tweet $tweet_id; waiting for it in $alice's feed" >&2

started=$SECONDS
end=$((SECONDS + deadline_secs))
while :; do
    request GET /v1/feed "$alice_token"
    expect 200 "read $alice's feed"
    [[ "$body" == *"\"id\":\"$tweet_id\""* ]] && break
    ((SECONDS < end)) || fail "tweet $tweet_id not in $alice's feed after ${deadline_secs}s: $body"
    sleep 0.5
done
echo "smoke.sh: PASS: the tweet reached the follower's feed within $((SECONDS - started)) s" >&2
