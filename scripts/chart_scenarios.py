#!/usr/bin/env python3
"""Renders the chart with values a real cluster would be given and checks what only a cluster
would otherwise show (issue 23): each scenario is one defect that once got through lint, render
and schema validation.

Usage: chart_scenarios.py --helm .tools/bin/helm --chart charts/twtr [--deploy scripts/deploy.sh]

  tracing         tracing.otlpEndpoint set: every NetworkPolicy lets its pods reach the
                  collector's port (else no span leaves the pods)
  extra-egress    networkPolicy.extraEgress and <part>.extraEgress are accepted and land in
                  the policies (the schema used to refuse them)
  workload-identity  workloadIdentity on: every NetworkPolicy lets its pods reach the GKE
                  metadata server, and every workload, the migration Job included, runs as a
                  ServiceAccount the render makes, annotated with the Google service account
                  and, for a hook, created before the hook that uses it
  public-keys     two public keys given as PEM values: both land in the Secret (the volume
                  mounts both); a PEM count that differs from the names is refused
  migrate-scheduling  migrate.nodeSelector / tolerations / affinity / priorityClassName reach
                  the Job's pod (a tainted node pool otherwise never runs it)
  checksum        changing rabbitmq.url changes every pod template (so the pods restart and
                  read it); the same values render the same templates
  digest          `deploy.sh --image repo@sha256:...` runs repo@sha256:... and keeps every
                  label valid; a 64-character tag (what deploy.sh used to pass) too
  per-part        per-part podAnnotations / podLabels / priorityClassName land on that part only
  gke-monitoring  with managed Prometheus's API present: a PodMonitoring for every part, alert
                  Rules, and the metrics NetworkPolicy admitting its collectors (gmp-system)
                  where the values narrow who may scrape
  backup-cronjob  backup.enabled renders a CronJob (none by default) on the default schedule,
                  with the parts' restricted security contexts, writing to the named claim, or
                  exporting to scratch and uploading with the named gsutil image to the bucket;
                  its NetworkPolicy reaches ScyllaDB (and HTTPS for a bucket); no destination
                  is refused
  gke-guide       (with --guide docs/gke.md) every Google Cloud object the production values
                  name but the chart cannot make (the static IP, the Cloud Armor policy) is
                  created by a command in the guide, and the nodes get the registry's reader role

Label, Secret-key, Ingress and metric-name checks on every render are check_chart.py's; this
file only makes the renders that exercise them.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile

import yaml

MINIMAL = "ci/minimal-values.yaml"
PRODUCTION = "ci/production-values.yaml"
PARTS = ["gateway", "users", "tweets", "followers", "feeds"]
DIGEST = "sha256:" + "0123456789abcdef" * 4


class Run:
    def __init__(self, helm, chart, deploy, guide=None):
        self.helm, self.chart, self.deploy, self.guide = helm, chart, deploy, guide
        self.failed = []
        self.scratch = tempfile.mkdtemp(prefix="chart-scenarios-")

    def values_file(self, values):
        fd, path = tempfile.mkstemp(suffix=".yaml", dir=self.scratch)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(values, f)
        return path

    def render(self, base, values=None, extra=(), expect_failure=False):
        args = [self.helm, "template", "twtr", self.chart, "--namespace", "twtr",
                "--kube-version", "1.30.0", "-f", os.path.join(self.chart, base)]
        if values:
            args += ["-f", self.values_file(values)]
        done = subprocess.run(args + list(extra), capture_output=True, text=True)
        if expect_failure:
            return done
        if done.returncode != 0:
            raise AssertionError(f"helm template failed: {done.stderr.strip()}")
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    def check(self, name, scenario):
        try:
            scenario(self)
        except AssertionError as e:
            self.failed.append(name)
            print(f"chart_scenarios: FAIL {name}: {e}", file=sys.stderr)
            return
        print(f"chart_scenarios: ok   {name}")


def kind(docs, k):
    return [d for d in docs if d.get("kind") == k]


def named(docs, k, name):
    found = [d for d in kind(docs, k) if d["metadata"]["name"] == name]
    assert found, f"no {k} {name} in the render"
    return found[0]


def pod_of(doc):
    return doc["spec"]["template"]["spec"]


def allows(policy, port, cidr=None):
    """Whether an egress rule of the policy admits TCP `port` (to `cidr`, when given)."""
    for rule in policy["spec"].get("egress") or []:
        ports = [p.get("port") for p in rule.get("ports") or []]
        if ports and port not in ports:
            continue
        peers = rule.get("to") or []
        if cidr is None or not peers:
            return True
        if any((peer.get("ipBlock") or {}).get("cidr") == cidr for peer in peers):
            return True
    return False


def tracing(run):
    for endpoint, port in [("http://otel-collector.observability.svc:4317", 4317),
                           ("https://collector.example.com", 443)]:
        docs = run.render(MINIMAL, {"tracing": {"otlpEndpoint": endpoint}})
        policies = kind(docs, "NetworkPolicy")
        assert len(policies) == len(PARTS) + 1, f"{len(policies)} NetworkPolicies"
        for policy in policies:
            assert allows(policy, port), \
                f"{policy['metadata']['name']} has no egress to the collector's port {port} ({endpoint})"


def extra_egress(run):
    shared = {"to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    own = {"to": [{"ipBlock": {"cidr": "10.30.0.0/24"}}], "ports": [{"port": 6379, "protocol": "TCP"}]}
    docs = run.render(MINIMAL, {"networkPolicy": {"extraEgress": [shared]}, "users": {"extraEgress": [own]}})
    for policy in kind(docs, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        assert shared in policy["spec"]["egress"], f"{name} lacks networkPolicy.extraEgress"
        assert (own in policy["spec"]["egress"]) == name.endswith("-users"), \
            f"{name}: users.extraEgress must be in the users policy only"


def workload_identity(run):
    gsa = "twtr@my-project.iam.gserviceaccount.com"
    docs = run.render(MINIMAL, {"workloadIdentity": {"enabled": True, "gcpServiceAccount": gsa}})
    for policy in kind(docs, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        assert allows(policy, 80, "169.254.169.254/32"), f"{name}: no egress to the metadata server (169.254.169.254:80)"
        assert allows(policy, 988, "169.254.169.252/32"), f"{name}: no egress to the metadata server (169.254.169.252:988)"
    accounts = {d["metadata"]["name"]: d for d in kind(docs, "ServiceAccount")}
    workloads = kind(docs, "Deployment") + kind(docs, "Job")
    assert len(workloads) == len(PARTS) + 1, f"{len(workloads)} workloads"
    for workload in workloads:
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        account = pod_of(workload).get("serviceAccountName")
        assert account in accounts, f"{where} runs as ServiceAccount {account!r}, which the render does not make"
        annotations = accounts[account]["metadata"].get("annotations") or {}
        assert annotations.get("iam.gke.io/gcp-service-account") == gsa, \
            f"{where}: ServiceAccount {account} is not annotated with {gsa}"
        hook = (workload["metadata"].get("annotations") or {}).get("helm.sh/hook")
        if hook:
            # A hook runs before the release's ordinary objects exist: its account must be a
            # hook of the same events with a lower weight.
            assert annotations.get("helm.sh/hook") == hook, \
                f"{where} is a hook; its ServiceAccount {account} is not (it would not exist yet)"
            assert int(annotations.get("helm.sh/hook-weight", 0)) < int(
                workload["metadata"]["annotations"].get("helm.sh/hook-weight", 0)), \
                f"{where}: its ServiceAccount's hook weight is not lower than the Job's"


def public_keys(run):
    pems = ["-----BEGIN PUBLIC KEY-----\nCURRENT\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\nNEXT\n-----END PUBLIC KEY-----\n"]
    names = ["token_public.pem", "token_public_next.pem"]
    docs = run.render(MINIMAL, {"tokens": {"publicKeyNames": names, "publicKey": "", "publicKeys": pems}})
    secret = named(docs, "Secret", "twtr-credentials")
    for name, pem in zip(names, pems):
        assert name in secret["data"], f"the Secret lacks {name} (has {sorted(secret['data'])})"
        assert base64.b64decode(secret["data"][name]).decode() == pem, f"{name} holds the wrong PEM"
    for deployment in kind(docs, "Deployment"):
        items = [i["key"] for v in pod_of(deployment)["volumes"] if v.get("secret")
                 for i in v["secret"].get("items") or []]
        missing = [key for key in items if key not in secret["data"]]
        assert not missing, f"{deployment['metadata']['name']} mounts {missing}, not in the Secret"
    # Two names and one PEM (the old way to ask for two keys): refused, saying why.
    done = run.render(MINIMAL, {"tokens": {"publicKeyNames": names}}, expect_failure=True)
    assert done.returncode != 0, "two key names with one PEM rendered; the second key would fail to mount"
    assert "publicKeyNames has 2 name(s) but 1 public key PEM(s)" in done.stderr, done.stderr.strip()


def migrate_scheduling(run):
    toleration = {"key": "dedicated", "operator": "Equal", "value": "twtr", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["twtr"]}]}]}}}
    docs = run.render(MINIMAL, {"migrate": {"nodeSelector": {"pool": "twtr"}, "tolerations": [toleration],
                                            "affinity": affinity, "priorityClassName": "twtr-batch"}})
    pod = pod_of(kind(docs, "Job")[0])
    assert pod.get("nodeSelector") == {"pool": "twtr"}, "the Job has no nodeSelector"
    assert pod.get("tolerations") == [toleration], "the Job has no tolerations"
    assert pod.get("affinity") == affinity, "the Job has no affinity"
    assert pod.get("priorityClassName") == "twtr-batch", "the Job has no priorityClassName"


def checksum(run):
    def templates(url):
        docs = run.render(MINIMAL, {"rabbitmq": {"url": url}})
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"].get("annotations") or {}
                for d in kind(docs, "Deployment")}
    first = templates("amqp://twtr:one@rabbitmq.rabbitmq.svc:5672/%2f")
    again = templates("amqp://twtr:one@rabbitmq.rabbitmq.svc:5672/%2f")
    second = templates("amqp://twtr:two@rabbitmq.rabbitmq.svc:5672/%2f")
    assert first == again, "the same values render different pod templates (pods would restart on every upgrade)"
    for name in first:
        assert first[name] != second[name], \
            f"{name}: a new rabbitmq.url leaves the pod template unchanged, so the pods keep the old URL"


def digest(run):
    repo = "europe-west1-docker.pkg.dev/my-project/twtr/twtr"
    if run.deploy:
        done = subprocess.run([run.deploy, "--template", "-f", os.path.join(run.chart, MINIMAL),
                               "--image", f"{repo}@{DIGEST}"], capture_output=True, text=True)
        assert done.returncode == 0, f"deploy.sh --template failed: {done.stderr.strip()}"
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        images = {c["image"] for d in kind(docs, "Deployment") + kind(docs, "Job")
                  for c in pod_of(d)["containers"]}
        assert images == {f"{repo}@{DIGEST}"}, f"deploy.sh --image repo@digest runs {images}"
        assert_labels(docs, "deploy.sh --image repo@digest")
    # What deploy.sh used to pass for repo@sha256:<hex>: repository repo@sha256, tag <hex>.
    docs = run.render(MINIMAL, {"image": {"repository": f"{repo}@sha256", "tag": DIGEST.split(":")[1]}})
    assert_labels(docs, "a 64-character image.tag")
    docs = run.render(MINIMAL, {"image": {"repository": repo, "tag": "v0.1.0", "digest": DIGEST}})
    images = {c["image"] for d in kind(docs, "Deployment") for c in pod_of(d)["containers"]}
    assert images == {f"{repo}@{DIGEST}"}, f"image.digest runs {images}"
    assert_labels(docs, "image.digest")


def assert_labels(docs, what):
    import re
    valid = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    for doc in docs:
        maps = [doc["metadata"].get("labels") or {}]
        if doc.get("kind") in {"Deployment", "Job"}:
            maps.append(doc["spec"]["template"]["metadata"].get("labels") or {})
        for labels in maps:
            for key, value in labels.items():
                value = str(value)
                assert len(value) <= 63 and valid.match(value), \
                    f"{what}: {doc['kind']}/{doc['metadata']['name']} label {key}={value!r} ({len(value)} characters) is invalid"


def per_part(run):
    docs = run.render(MINIMAL, {
        "podAnnotations": {"shared": "yes"},
        "feeds": {"podAnnotations": {"own": "feeds"}, "podLabels": {"tier": "events"},
                  "priorityClassName": "twtr-high"},
        "image": {"digest": DIGEST}})
    for deployment in kind(docs, "Deployment"):
        feeds = deployment["metadata"]["name"].endswith("-feeds")
        meta = deployment["spec"]["template"]["metadata"]
        assert meta["annotations"].get("shared") == "yes", "the shared podAnnotations are missing"
        assert (meta["annotations"].get("own") == "feeds") == feeds, "feeds.podAnnotations leaked or missing"
        assert (meta["labels"].get("tier") == "events") == feeds, "feeds.podLabels leaked or missing"
        assert (pod_of(deployment).get("priorityClassName") == "twtr-high") == feeds, \
            "feeds.priorityClassName leaked or missing"


def gke_monitoring(run):
    docs = run.render(PRODUCTION, extra=["--api-versions", "monitoring.googleapis.com/v1"])
    monitors = kind(docs, "PodMonitoring")
    assert len(monitors) == 1, f"{len(monitors)} PodMonitoring with managed Prometheus's API present"
    selector = monitors[0]["spec"]["selector"]["matchLabels"]
    for deployment in kind(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), \
            f"the PodMonitoring does not select {deployment['metadata']['name']}"
        ports = [p["name"] for c in pod_of(deployment)["containers"] for p in c.get("ports") or []]
        assert "metrics" in ports, f"{deployment['metadata']['name']} has no metrics port"
    assert kind(docs, "Rules"), "no alert Rules with managed Prometheus"
    assert not kind(docs, "PrometheusRule"), "a PrometheusRule besides the Rules (alerts would fire twice)"
    for policy in kind(docs, "NetworkPolicy"):
        if policy["metadata"]["name"].endswith("-migrate"):
            continue
        sources = [peer for rule in policy["spec"]["ingress"]
                   if any(p.get("port") == "metrics" for p in rule.get("ports") or [])
                   for peer in rule.get("from") or []]
        namespaces = [((p.get("namespaceSelector") or {}).get("matchLabels") or {}).get(
            "kubernetes.io/metadata.name") for p in sources]
        assert not sources or "gmp-system" in namespaces, \
            f"{policy['metadata']['name']} admits scrapes only from {namespaces}: managed Prometheus (gmp-system) is refused"
    docs = run.render(MINIMAL)
    assert not kind(docs, "PodMonitoring"), "a PodMonitoring without managed Prometheus's API"


def gke_guide(run):
    if not run.guide:
        return
    with open(os.path.join(run.chart, PRODUCTION)) as f:
        values = yaml.safe_load(f)
    with open(run.guide) as f:
        guide = " ".join(f.read().replace("\\\n", " ").split())
    ingress = values.get("ingress") or {}
    ip = ingress.get("staticIpName") or (ingress.get("annotations") or {}).get(
        "kubernetes.io/ingress.global-static-ip-name")
    if ip:
        assert f"gcloud compute addresses create {ip} --global" in guide, \
            f"the production values use the static IP {ip!r}, which no step of {run.guide} creates"
    policy = (ingress.get("backendConfig") or {}).get("securityPolicy")
    if policy:
        assert f"gcloud compute security-policies create {policy}" in guide, \
            f"the production values use the Cloud Armor policy {policy!r}, which no step of {run.guide} creates"
    certificates = (ingress.get("annotations") or {}).get("networking.gke.io/managed-certificates")
    assert not certificates, \
        f"the production values name ManagedCertificate(s) {certificates!r} by annotation; let the chart make them"
    assert "--role roles/artifactregistry.reader" in guide, \
        f"{run.guide} does not grant the nodes roles/artifactregistry.reader (ImagePullBackOff)"
    assert "--workload-pool" in guide, f"{run.guide} does not enable Workload Identity on the cluster"


def backup_cronjob(run):
    assert not kind(run.render(MINIMAL), "CronJob"), "a backup CronJob although backup.enabled is off"
    docs = run.render(MINIMAL, {"backup": {"enabled": True, "volume": {"claimName": "twtr-backups"}}})
    jobs = kind(docs, "CronJob")
    assert len(jobs) == 1, f"{len(jobs)} CronJobs"
    job = jobs[0]
    assert job["spec"]["schedule"] == "0 */4 * * *", job["spec"]["schedule"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"].get("runAsNonRoot") is True, "the backup pod may run as root"
    [export] = pod["containers"]
    assert export["args"][:3] == ["export", "--to", "/backup/$(JOB_NAME)"], export["args"]
    assert export["securityContext"].get("readOnlyRootFilesystem") is True
    assert export["securityContext"].get("allowPrivilegeEscalation") is False
    assert any(e["name"] == "TWTR_SCYLLA_NODES" for e in export["env"]), "no TWTR_SCYLLA_NODES"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["twtr-backups"], claims
    policy = named(docs, "NetworkPolicy", job["metadata"]["name"])
    assert allows(policy, 9042), "the backup pods cannot reach ScyllaDB"
    assert not allows(policy, 443), "the backup pods may reach HTTPS without a bucket"
    assert policy["spec"]["ingress"] == [], "something may reach the backup pods"

    docs = run.render(MINIMAL, {"backup": {"enabled": True, "bucket": "gs://twtr-backups",
                                           "uploader": {"image": "google-cloud-cli:slim"}}})
    pod = kind(docs, "CronJob")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["export"], "the export does not run first"
    [upload] = pod["containers"]
    assert upload["image"] == "google-cloud-cli:slim"
    assert upload["command"][-2:] == ["/backup/$(JOB_NAME)", "gs://twtr-backups/$(JOB_NAME)"], upload["command"]
    assert upload["securityContext"].get("readOnlyRootFilesystem") is True
    policy = named(docs, "NetworkPolicy", kind(docs, "CronJob")[0]["metadata"]["name"])
    assert allows(policy, 443), "the uploader cannot reach Cloud Storage"

    done = run.render(MINIMAL, {"backup": {"enabled": True}}, expect_failure=True)
    assert done.returncode != 0, "a backup CronJob with nowhere to write rendered"
    assert "needs a destination" in done.stderr, done.stderr.strip()


SCENARIOS = [
    ("tracing", tracing),
    ("extra-egress", extra_egress),
    ("workload-identity", workload_identity),
    ("public-keys", public_keys),
    ("migrate-scheduling", migrate_scheduling),
    ("checksum", checksum),
    ("digest", digest),
    ("per-part", per_part),
    ("gke-monitoring", gke_monitoring),
    ("backup-cronjob", backup_cronjob),
    ("gke-guide", gke_guide),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--chart", required=True)
    parser.add_argument("--deploy", help="scripts/deploy.sh, run with --template")
    parser.add_argument("--guide", help="docs/gke.md, checked against the production values")
    parser.add_argument("only", nargs="*", help="scenario names (default: all)")
    args = parser.parse_args()
    run = Run(args.helm, args.chart, args.deploy, args.guide)
    for name, scenario in SCENARIOS:
        if not args.only or name in args.only:
            run.check(name, scenario)
    if run.failed:
        sys.exit(f"chart_scenarios: {len(run.failed)} failed: {', '.join(run.failed)}")


if __name__ == "__main__":
    main()
