#!/usr/bin/env python3
"""Checks rendered deployment manifests against the twtr binary itself.

Usage: check_chart.py --bin target/debug/twtr [--compose docker-compose.yml] RENDERED.yaml...

The truth comes from the built binary, never from a list kept here: `twtr --help` names the
subcommands, and `twtr <subcommand> --help` prints `[env: TWTR_X=...]` for every variable that
subcommand reads. Then, for every container that runs the twtr image in the rendered Helm
manifests (and every twtr service in the compose file):

  - it runs a subcommand the binary has (the first argument; the image's entrypoint is twtr),
  - every TWTR_* variable it sets is one that subcommand reads,
  - it runs as non-root with a read-only root filesystem, no privilege escalation, no
    capabilities and the RuntimeDefault seccomp profile (Helm manifests only),
  - a gRPC part's readiness probe is a native gRPC health check on its own port, for a service
    name of that part's package that the binary contains (tonic-health answers NOT_FOUND for a
    name nobody registered, and the probe would never pass); with mutual TLS on (the container
    sets TWTR_GRPC_TLS_CERT), which native gRPC probes cannot speak, a TCP check of that port,
    and the three TLS files are all set and under a read-only mount,

And across every rendered object:

  - every label value is a valid one (at most 63 characters of [A-Za-z0-9._-], alphanumeric at
    both ends): a digest in app.kubernetes.io/version would be refused by the API server,
  - every key a pod mounts from a Secret (volume items, secretKeyRef) exists in that Secret
    when the render makes it: a missing one is a FailedMount,
  - the Ingress routes only the public API (/v1, /docs, /openapi.json), never /metrics,
    /healthz, /readyz or /health/details, and has no default backend that would route them,
  - a `gce` Ingress with TLS answers plain HTTP with a redirect (a FrontendConfig it names,
    rendered, with redirectToHttps), and every ManagedCertificate / FrontendConfig it names is
    rendered,
  - every twtr_* metric the alert rules and the dashboard query is one the binary exports.

Custom resources have no schema in kubernetes-validate; the kinds the chart renders are checked
here against the fields GKE, managed Prometheus and the Prometheus Operator document (a
structural check, not the real CRD schema). Any other kind is an error.

For the compose file: every bind mount of a twtr service uses the long syntax with
`create_host_path: false`, so a missing key file stops `docker compose up` with a clear error
instead of Docker creating a root-owned directory in its place.

Needs PyYAML (scripts/chart.sh puts it on PYTHONPATH with kubernetes-validate).
"""

import argparse
import json
import mmap
import re
import subprocess
import sys

import yaml

# Kinds without a schema in kubernetes-validate, and the fields this check requires of them.
CUSTOM_KINDS = {
    ("cloud.google.com/v1", "BackendConfig"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.googleapis.com/v1", "PodMonitoring"),
    ("monitoring.googleapis.com/v1", "Rules"),
    ("networking.gke.io/v1", "ManagedCertificate"),
    ("networking.gke.io/v1beta1", "FrontendConfig"),
}
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Paths the Ingress must route, and paths it must never route (they are for probes and scrapes).
PUBLIC_PATHS = {"/v1": "Prefix", "/docs": "Prefix", "/openapi.json": "Exact"}
PRIVATE_PATHS = ["/metrics", "/healthz", "/readyz", "/health/details"]
METRIC = re.compile(r"\b(twtr_[a-z0-9_]+)")
WORKLOAD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}
ENV_PATTERN = re.compile(r"\[env: (TWTR_[A-Z0-9_]+)")


class Failures:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


def help_text(binary, *args):
    done = subprocess.run(
        [binary, *args, "--help"], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


def subcommands(root_help):
    """The names under `Commands:` in clap's help, without clap's own `help`."""
    names, inside = [], False
    for line in root_help.splitlines():
        if line.strip() == "Commands:":
            inside = True
            continue
        if inside:
            if not line.startswith("  "):
                break
            name = line.split()[0]
            if name != "help":
                names.append(name)
    return names


def binary_truth(binary):
    """{subcommand: set of TWTR_* variables it reads}, from the binary's own help."""
    commands = subcommands(help_text(binary))
    if not commands:
        sys.exit(f"check_chart: {binary} --help lists no subcommands")
    truth = {}
    for command in commands:
        truth[command] = set(ENV_PATTERN.findall(help_text(binary, command)))
        if not truth[command]:
            sys.exit(f"check_chart: {binary} {command} --help lists no TWTR_* variables")
    return truth


def pod_spec(doc):
    kind = doc.get("kind")
    if kind in WORKLOAD_KINDS:
        return doc["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def check_command(where, args, env_names, truth, failures):
    if not args:
        failures.add(where, "runs no subcommand (twtr would run `all`, the embedded mesh)")
        return None
    command = args[0]
    if command not in truth:
        failures.add(where, f"runs `twtr {command}`, a subcommand the binary does not have "
                            f"(it has: {', '.join(sorted(truth))})")
        return None
    for name in env_names:
        if name.startswith("TWTR_") and name not in truth[command]:
            failures.add(where, f"sets {name}, which `twtr {command} --help` does not list "
                                "as a variable it reads")
    return command


def check_security(where, pod, container, failures):
    pod_sc = pod.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        failures.add(where, "may run as root (runAsNonRoot is not set)")
    if sc.get("readOnlyRootFilesystem") is not True:
        failures.add(where, "root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        failures.add(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        failures.add(where, "does not drop ALL capabilities")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        failures.add(where, "seccomp profile is not RuntimeDefault")


class BinaryStrings:
    """Whether a string occurs in the binary (the names services register are literals in it)."""

    def __init__(self, binary):
        self.binary = binary
        self.cache = {}

    def __contains__(self, text):
        if text not in self.cache:
            with open(self.binary, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                self.cache[text] = m.find(text.encode()) != -1
        return self.cache[text]


def check_tls(where, container, failures):
    """With mutual TLS on, the three files are set and mounted read-only; True when it is on."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    files = [env.get(f"TWTR_GRPC_TLS_{name}") for name in ("CERT", "KEY", "CA")]
    if not any(files):
        return False
    if not all(files):
        failures.add(where, "sets only some of TWTR_GRPC_TLS_CERT, _KEY and _CA")
        return True
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("readOnly")]
    for path in files:
        if not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
            failures.add(where, f"{path} is not under a read-only volume mount")
    return True


def check_probes(where, command, container, strings, failures):
    tls = check_tls(where, container, failures)
    if command not in {"users", "tweets", "followers", "feeds"}:
        return
    ports = {p.get("containerPort") for p in container.get("ports") or []}
    port_names = {p.get("name") for p in container.get("ports") or []}
    if tls:
        tcp = (container.get("readinessProbe") or {}).get("tcpSocket")
        if not tcp or tcp.get("port") not in ports | port_names:
            failures.add(where, "with mutual TLS, readiness must be a TCP check of the gRPC port")
        if (container.get("livenessProbe") or {}).get("grpc"):
            failures.add(where, "with mutual TLS, a native gRPC liveness probe cannot connect")
        return
    probe = (container.get("readinessProbe") or {}).get("grpc")
    if not probe:
        failures.add(where, "readiness is not a native gRPC health probe")
        return
    if probe.get("port") not in ports:
        failures.add(where, f"gRPC probe port {probe.get('port')} is not a container port")
    service = probe.get("service", "")
    if not service.startswith(f"twtr.{command}.v1."):
        failures.add(where, f"gRPC probe asks for {service!r}, not the {command} service")
    elif service not in strings:
        failures.add(where, f"gRPC probe asks for {service!r}, which the binary does not contain")


def check_custom(doc, failures):
    where = name_of(doc)
    spec = doc.get("spec") or {}
    if doc["kind"] == "BackendConfig":
        check = spec.get("healthCheck") or {}
        if check.get("type") not in {"HTTP", "HTTPS", "HTTP2"}:
            failures.add(where, "healthCheck.type must be HTTP, HTTPS or HTTP2")
        if not str(check.get("requestPath", "")).startswith("/"):
            failures.add(where, "healthCheck.requestPath must be a path")
        for field in ("port", "checkIntervalSec", "timeoutSec", "healthyThreshold",
                      "unhealthyThreshold"):
            if field in check and not isinstance(check[field], int):
                failures.add(where, f"healthCheck.{field} must be an integer")
        draining = (spec.get("connectionDraining") or {}).get("drainingTimeoutSec", 0)
        if not isinstance(draining, int):
            failures.add(where, "connectionDraining.drainingTimeoutSec must be an integer")
        policy = spec.get("securityPolicy")
        if policy is not None and not (isinstance(policy, dict) and policy.get("name")):
            failures.add(where, "securityPolicy must be {name: <Cloud Armor policy>}")
        if "timeoutSec" in spec and not isinstance(spec["timeoutSec"], int):
            failures.add(where, "timeoutSec must be an integer")
        unknown = set(spec) - {"healthCheck", "connectionDraining", "timeoutSec", "cdn",
                               "iap", "securityPolicy", "sessionAffinity", "logging",
                               "customRequestHeaders", "customResponseHeaders"}
        if unknown:
            failures.add(where, f"unknown spec fields {sorted(unknown)}")
    elif doc["kind"] in {"PodMonitoring", "ServiceMonitor"}:
        if not (spec.get("selector") or {}).get("matchLabels"):
            failures.add(where, "spec.selector.matchLabels is required")
        endpoints = spec.get("endpoints") or []
        if not endpoints or not all(isinstance(e, dict) and e.get("port") for e in endpoints):
            failures.add(where, "every endpoint needs a named port")
    elif doc["kind"] in {"PrometheusRule", "Rules"}:
        groups = spec.get("groups") or []
        if not groups:
            failures.add(where, "spec.groups is empty")
        for group in groups:
            if not group.get("name") or not group.get("rules"):
                failures.add(where, "every group needs a name and rules")
            for rule in group.get("rules") or []:
                if not rule.get("alert") or not isinstance(rule.get("expr"), str):
                    failures.add(where, f"rule {rule!r} needs an alert name and an expr")
                if set(rule) - {"alert", "record", "expr", "for", "labels", "annotations",
                                "keep_firing_for"}:
                    failures.add(where, f"rule {rule.get('alert')}: unknown fields")
    elif doc["kind"] == "ManagedCertificate":
        domains = spec.get("domains") or []
        if not domains or len(domains) > 100 or any("*" in str(d) for d in domains):
            failures.add(where, "spec.domains must list 1 to 100 domains, no wildcards")
    elif doc["kind"] == "FrontendConfig":
        unknown = set(spec) - {"redirectToHttps", "sslPolicy"}
        if unknown:
            failures.add(where, f"unknown spec fields {sorted(unknown)}")
        redirect = spec.get("redirectToHttps") or {}
        if redirect and redirect.get("responseCodeName", "MOVED_PERMANENTLY_DEFAULT") not in {
                "MOVED_PERMANENTLY_DEFAULT", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT",
                "PERMANENT_REDIRECT"}:
            failures.add(where, "redirectToHttps.responseCodeName is not one GKE knows")


def check_disruption_budget(doc, failures):
    """A PDB lets pods that are not ready be evicted: they serve nothing, and a budget that
    counts them would stall node drains whenever pods are unready (a crash loop, an outage)."""
    if doc.get("kind") != "PodDisruptionBudget":
        return
    policy = (doc.get("spec") or {}).get("unhealthyPodEvictionPolicy")
    if policy != "AlwaysAllow":
        failures.add(name_of(doc), f"unhealthyPodEvictionPolicy is {policy!r}, not AlwaysAllow")


def labels_of(doc):
    """Every label map of an object: its own and its pod template's."""
    yield (doc.get("metadata") or {}).get("labels") or {}
    template = ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}
    yield template.get("labels") or {}


def check_labels(doc, failures):
    for labels in labels_of(doc):
        for key, value in labels.items():
            value = str(value)
            if len(value) > 63 or not LABEL_VALUE.match(value):
                failures.add(name_of(doc), f"label {key}={value!r} is not a valid label value "
                                           f"({len(value)} characters; at most 63 of "
                                           "[A-Za-z0-9._-], alphanumeric at both ends)")


def check_secret_keys(docs, failures):
    """Keys pods take from Secrets that the render makes must be in them (else FailedMount)."""
    secrets = {}
    for doc in docs:
        if doc.get("kind") == "Secret":
            keys = set((doc.get("data") or {})) | set((doc.get("stringData") or {}))
            secrets[doc["metadata"]["name"]] = keys
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        wanted = []
        for volume in pod.get("volumes") or []:
            secret = volume.get("secret")
            if secret:
                for item in secret.get("items") or []:
                    wanted.append((secret.get("secretName"), item.get("key"), "volume"))
        for container in (pod.get("initContainers") or []) + pod["containers"]:
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    wanted.append((ref.get("name"), ref.get("key"), f"env {env['name']}"))
        for secret, key, use in wanted:
            if secret in secrets and key not in secrets[secret]:
                failures.add(name_of(doc), f"{use} takes key {key!r} of Secret {secret}, which "
                                           f"the render makes with only {sorted(secrets[secret])}")


def path_matches(rule_path, path_type, path):
    if path_type == "Exact":
        return path == rule_path
    # Prefix (and GKE's ImplementationSpecific): element-wise prefix.
    prefix = rule_path.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def check_ingress(doc, by_kind_name, failures):
    where = name_of(doc)
    spec = doc.get("spec") or {}
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    if spec.get("defaultBackend"):
        failures.add(where, "has a defaultBackend: every path, /metrics included, reaches the gateway")
    routed = {}
    for rule in spec.get("rules") or []:
        for entry in ((rule.get("http") or {}).get("paths")) or []:
            routed[entry.get("path")] = entry.get("pathType")
    for path in PRIVATE_PATHS:
        for rule_path, path_type in routed.items():
            if path_matches(rule_path, path_type, path):
                failures.add(where, f"routes {path} (through {rule_path} {path_type}): it must "
                                    "stay off the public entry")
    if routed != PUBLIC_PATHS:
        failures.add(where, f"routes {routed}, not the public API {PUBLIC_PATHS}")
    gce = annotations.get("kubernetes.io/ingress.class") == "gce"
    certs = [c.strip() for c in annotations.get("networking.gke.io/managed-certificates", "").split(",") if c.strip()]
    for cert in certs:
        if ("ManagedCertificate", cert) not in by_kind_name:
            failures.add(where, f"names ManagedCertificate {cert}, which nothing renders")
    frontend = annotations.get("networking.gke.io/v1beta1.FrontendConfig")
    if frontend and ("FrontendConfig", frontend) not in by_kind_name:
        failures.add(where, f"names FrontendConfig {frontend}, which nothing renders")
    tls = spec.get("tls") or certs or annotations.get("ingress.gcp.kubernetes.io/pre-shared-cert")
    if gce and tls and annotations.get("kubernetes.io/ingress.allow-http") != "false":
        config = by_kind_name.get(("FrontendConfig", frontend)) or {}
        if not ((config.get("spec") or {}).get("redirectToHttps") or {}).get("enabled"):
            failures.add(where, "serves HTTPS but accepts plain HTTP on port 80 (no FrontendConfig "
                                "with redirectToHttps, no allow-http: \"false\"): passwords "
                                "would be accepted in clear text")


def check_metric_names(doc, strings, failures):
    """Every twtr_* metric a rule or the dashboard queries must be one the binary exports."""
    if doc.get("kind") in {"PrometheusRule", "Rules"}:
        exprs = [r.get("expr", "") for g in (doc.get("spec") or {}).get("groups") or []
                 for r in g.get("rules") or []]
    elif doc.get("kind") == "ConfigMap" and any(k.endswith(".json") for k in doc.get("data") or {}):
        exprs = []
        for key, text in doc["data"].items():
            if key.endswith(".json"):
                try:
                    exprs += json_exprs(json.loads(text))
                except ValueError as e:
                    failures.add(name_of(doc), f"{key} is not JSON: {e}")
    else:
        return
    for expr in exprs:
        for metric in METRIC.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            if base not in strings:
                failures.add(name_of(doc), f"queries {metric}, which the binary does not export")


def json_exprs(node):
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        for value in node.values():
            found += json_exprs(value)
        return found
    if isinstance(node, list):
        return [e for item in node for e in json_exprs(item)]
    return []


def check_manifests(path, truth, strings, failures):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    seen_custom, containers = set(), 0
    by_kind_name = {(d.get("kind"), (d.get("metadata") or {}).get("name")): d for d in docs}
    check_secret_keys(docs, failures)
    for doc in docs:
        check_disruption_budget(doc, failures)
        check_labels(doc, failures)
        check_metric_names(doc, strings, failures)
        if doc.get("kind") == "Ingress":
            check_ingress(doc, by_kind_name, failures)
        kind = (doc.get("apiVersion"), doc.get("kind"))
        if kind in CUSTOM_KINDS:
            seen_custom.add(kind[1])
            check_custom(doc, failures)
            continue
        pod = pod_spec(doc)
        if pod is None:
            continue
        for container in (pod.get("initContainers") or []) + pod["containers"]:
            containers += 1
            where = f"{path}: {name_of(doc)} container {container['name']}"
            if container.get("command"):
                failures.add(where, "overrides the image's entrypoint (twtr)")
            env_names = [e["name"] for e in container.get("env") or []]
            command = check_command(where, container.get("args"), env_names, truth, failures)
            check_security(where, pod, container, failures)
            check_probes(where, command, container, strings, failures)
    if containers == 0:
        failures.add(path, "renders no containers")
    return containers, seen_custom


def check_compose(path, truth, failures):
    with open(path) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services") or {}
    count = 0
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("${TWTR_IMAGE") and "build" not in service:
            continue  # ScyllaDB, RabbitMQ
        count += 1
        where = f"{path}: service {name}"
        command = service.get("command")
        args = command.split() if isinstance(command, str) else list(command or [])
        env = service.get("environment") or {}
        names = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        check_command(where, args, names, truth, failures)
        for volume in service.get("volumes") or []:
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                if source.startswith((".", "/", "~")):
                    failures.add(where, f"bind mount {volume!r} in the short syntax: Docker "
                                        "creates a missing source as a root-owned directory")
            elif volume.get("type") == "bind" and (volume.get("bind") or {}).get("create_host_path") is not False:
                failures.add(where, f"bind mount of {volume.get('source')} lacks "
                                    "bind.create_host_path: false")
        for dependency in service.get("depends_on") or {}:
            if dependency not in services:
                failures.add(where, f"depends on {dependency!r}, which is not a service")
    if count == 0:
        failures.add(path, "has no twtr service")
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="the built twtr binary")
    parser.add_argument("--compose", help="a docker-compose.yml to check as well")
    parser.add_argument("manifests", nargs="+", help="rendered manifests (helm template)")
    args = parser.parse_args()

    truth = binary_truth(args.bin)
    strings = BinaryStrings(args.bin)
    failures = Failures()
    for path in args.manifests:
        containers, custom = check_manifests(path, truth, strings, failures)
        extra = ""
        if custom:
            extra = f"; custom kinds checked structurally: {', '.join(sorted(custom))}"
        print(f"check_chart: {path}: {containers} containers checked against `twtr --help`{extra}")
    if args.compose:
        count = check_compose(args.compose, truth, failures)
        print(f"check_chart: {args.compose}: {count} twtr services checked against `twtr --help`")
    if failures.items:
        for item in failures.items:
            print(f"check_chart: FAIL {item}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
