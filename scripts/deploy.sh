#!/usr/bin/env bash
# Installs or upgrades twtr on the current kubectl context with Helm (charts/twtr).
#
#   scripts/deploy.sh -f my-values.yaml [--keys DIR] [--amqp-url-file FILE] [--image REF]
#                     [--release NAME] [--namespace NS] [--template] [-- more helm arguments]
#
#   -f FILE             values file (repeatable); it must name the ScyllaDB nodes (scylla.nodes)
#   --keys DIR          make (or update) the Secret <release>-token-keys from DIR/token_private.pem
#                       and DIR/token_public.pem (README: "Tokens and keys"), and point the chart
#                       at it (tokens.existingSecret)
#   --amqp-url-file F   make (or update) the Secret <release>-amqp, key amqp-url, from the first
#                       line of F (the RabbitMQ URL with its password), and point the chart at it
#                       (rabbitmq.existingSecret)
#   --image REF         the image scripts/image.sh printed: repository:tag, repository@sha256:...
#                       (image.digest; what runs cannot change when a tag moves) or
#                       repository:tag@sha256:... (both: the tag names the version label)
#   --release NAME      Helm release (default twtr), --namespace NS (default twtr, created)
#   --template          print what would be applied (helm template with the same values) and
#                       stop: no cluster is touched, no Secret made (scripts/chart.sh uses it)
#
# Secrets are made with kubectl from the files, so credentials never pass through a values file
# or the command line. Helm runs the migration Job first (a pre-install/pre-upgrade hook) and
# waits until every part is ready. Then: scripts/smoke.sh.
#
# Uses helm and kubectl from PATH, else ./.tools/bin (scripts/chart.sh tools installs helm there).
# Not run on the project's machines: they have no cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$PWD/.tools/bin"

release=twtr
namespace=twtr
keys=""
amqp_file=""
image=""
helm_args=()
template=0

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

while (($#)); do
    case "$1" in
        -f | --values) helm_args+=(-f "${2:?-f needs a file}"); shift 2 ;;
        --keys) keys="${2:?--keys needs a directory}"; shift 2 ;;
        --amqp-url-file) amqp_file="${2:?--amqp-url-file needs a file}"; shift 2 ;;
        --image) image="${2:?--image needs repository:tag}"; shift 2 ;;
        --release) release="${2:?}"; shift 2 ;;
        --namespace | -n) namespace="${2:?}"; shift 2 ;;
        --template) template=1; shift ;;
        --) shift; helm_args+=("$@"); break ;;
        -h | --help) usage ;;
        *) echo "deploy.sh: unknown argument $1" >&2; usage ;;
    esac
done

# The chart's image values from a reference: [registry[:port]/]path[:tag][@sha256:digest].
# A colon after the last slash starts the tag (a registry's port comes before a slash).
if [[ -n "$image" ]]; then
    ref="$image"
    if [[ "$ref" == *@* ]]; then
        digest="${ref#*@}"
        ref="${ref%%@*}"
        [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || {
            echo "deploy.sh: --image digest '$digest' is not sha256:<64 hex digits>" >&2
            exit 1
        }
        helm_args+=(--set "image.digest=$digest")
    fi
    if [[ "${ref##*/}" == *:* ]]; then
        helm_args+=(--set "image.tag=${ref##*:}")
        ref="${ref%:*}"
    fi
    helm_args+=(--set "image.repository=$ref")
fi

if ((template)); then
    [[ -z "$keys" ]] || helm_args+=(--set "tokens.existingSecret=$release-token-keys")
    [[ -z "$amqp_file" ]] || helm_args+=(--set "rabbitmq.existingSecret=$release-amqp" --set "rabbitmq.existingSecretKey=amqp-url")
    exec helm template "$release" charts/twtr --namespace "$namespace" "${helm_args[@]}"
fi

for tool in helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "deploy.sh: $tool not found (helm: scripts/chart.sh tools; kubectl: gcloud components install kubectl)" >&2
        exit 1
    }
done

echo "deploy.sh: context $(kubectl config current-context), namespace $namespace, release $release" >&2
kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"

# Creates or updates a generic Secret from files (kubectl create ... | kubectl apply).
apply_secret() {
    local name="$1"
    shift
    kubectl create secret generic "$name" --namespace "$namespace" "$@" \
        --dry-run=client -o yaml | kubectl apply -f -
}

if [[ -n "$keys" ]]; then
    for file in token_private.pem token_public.pem; do
        [[ -r "$keys/$file" ]] || { echo "deploy.sh: $keys/$file not found" >&2; exit 1; }
    done
    apply_secret "$release-token-keys" \
        --from-file=token_private.pem="$keys/token_private.pem" \
        --from-file=token_public.pem="$keys/token_public.pem"
    helm_args+=(--set "tokens.existingSecret=$release-token-keys")
fi

if [[ -n "$amqp_file" ]]; then
    url="$(head -n 1 "$amqp_file")"
    [[ "$url" == amqp://* || "$url" == amqps://* ]] || {
        echo "deploy.sh: the first line of $amqp_file is not an amqp:// or amqps:// URL" >&2
        exit 1
    }
    tmp="$(mktemp)"
    trap 'rm -f "$tmp"' EXIT
    printf '%s' "$url" >"$tmp"
    apply_secret "$release-amqp" --from-file=amqp-url="$tmp"
    helm_args+=(--set "rabbitmq.existingSecret=$release-amqp" --set "rabbitmq.existingSecretKey=amqp-url")
fi

helm upgrade --install "$release" charts/twtr \
    --namespace "$namespace" \
    --wait --timeout 15m \
    "${helm_args[@]}"

kubectl --namespace "$namespace" get pods -l "app.kubernetes.io/instance=$release"
echo "deploy.sh: done; smoke test: TWTR_RELEASE=$release TWTR_NAMESPACE=$namespace scripts/smoke.sh" >&2
