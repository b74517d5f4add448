"""k8s_check: validates the Kubernetes manifests (run by tests/deploy/k8s_check, in the venv that
tests/deploy/deps.sh makes, which has kubernetes-validate and PyYAML).

1. Schemas: `kubernetes-validate --strict` for the oldest and the newest version it knows; any
   line that is not INFO (a WARN for an apiVersion it has no schema for, an ERROR) fails.
2. What schemas cannot see: every Ingress backend is a Service here, with that port; every
   Service, HPA and PDB selects a Deployment here; each Deployment keeps serving through a
   rolling update (maxUnavailable 0), runs non-root with a read-only root and no capabilities,
   has requests and limits, probes /livez and /readyz on the port EFFE_ADMIN_LISTEN names, sets
   a shutdown delay, and gives the host more time than it takes to stop
   (terminationGracePeriodSeconds > EFFE_SHUTDOWN_DELAY + EFFE_SHUTDOWN_TIMEOUT +
   EFFE_STOP_TIMEOUT, the host's defaults where unset).
3. Each check can fail: broken copies of the manifests must be refused.
"""

import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from kubernetes_validate import utils
from packaging.version import Version

CHECK = "k8s_check"
# effe-host's defaults (README, "Running effe-host"), for variables a Deployment leaves unset.
HOST_DEFAULTS = {"EFFE_SHUTDOWN_DELAY": "0", "EFFE_SHUTDOWN_TIMEOUT": "30s", "EFFE_STOP_TIMEOUT": "5s",
                 "EFFE_LISTEN": "0.0.0.0:8080", "EFFE_ADMIN_LISTEN": "0.0.0.0:9090"}


def say(msg):
    print(f"{CHECK}: {msg}", file=sys.stderr)


def versions():
    known = sorted(set(utils.all_versions()), key=Version)
    return known[0], known[-1]


def schema_problems(validator, files, version):
    """kubernetes-validate --strict on files for one version: every line that is not INFO."""
    run = subprocess.run([validator, "--strict", "--kubernetes-version", version, *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    problems = [line for line in (run.stdout + run.stderr).splitlines()
                if line.strip() and not line.startswith("INFO ")]
    if run.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {run.returncode}")
    return problems


def seconds(duration):
    """A duration as effe-host reads it (the forms the manifests use: 0, 500ms, 5s, 1m, 1h)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration.strip())
    if not m:
        raise ValueError(f"cannot read the duration {duration!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def consistency_problems(docs):
    """What the schemas cannot see (see the module's doc). docs: (file name, resource) pairs."""
    problems = []
    by_kind = {}
    for name, doc in docs:
        by_kind.setdefault(doc["kind"], []).append((name, doc))
    deployments = {d["metadata"]["name"]: d for _, d in by_kind.get("Deployment", [])}
    services = {s["metadata"]["name"]: s for _, s in by_kind.get("Service", [])}
    if not deployments:
        problems.append("no Deployment")

    for name, d in deployments.items():
        where = f"Deployment {name}"
        spec = d["spec"]
        pod = spec["template"]["spec"]
        update = spec.get("strategy", {})
        if update.get("type") != "RollingUpdate" or update.get("rollingUpdate", {}).get("maxUnavailable") != 0:
            problems.append(f"{where}: a rolling update must keep every replica (maxUnavailable: 0)")
        psc = pod.get("securityContext", {})
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                problems.append(f"{cw}: runAsNonRoot is not true")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{cw}: capabilities are not all dropped")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    if what not in res.get(part, {}):
                        problems.append(f"{cw}: no {what} in resources.{part}")
            env = dict(HOST_DEFAULTS)
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            admin = port_of(env["EFFE_ADMIN_LISTEN"])
            if port_of(env["EFFE_LISTEN"]) not in ports.values():
                problems.append(f"{cw}: EFFE_LISTEN's port is not a containerPort")
            for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = get.get("port")
                port = ports.get(port) if isinstance(port, str) else port
                if get.get("path") != path or port != admin:
                    problems.append(f"{cw}: {probe} is not GET {path} on the admin port {admin}")
            delay = seconds(env["EFFE_SHUTDOWN_DELAY"])
            if delay <= 0:
                problems.append(f"{cw}: no EFFE_SHUTDOWN_DELAY: requests routed during endpoint removal would fail")
            needed = delay + seconds(env["EFFE_SHUTDOWN_TIMEOUT"]) + seconds(env["EFFE_STOP_TIMEOUT"])
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= needed:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} is not above the "
                                f"{needed:g} s the host may take to stop (delay + shutdown + stop timeouts)")

    def selects_deployment(what, selector):
        if not any(matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))
                   for d in deployments.values()):
            problems.append(f"{what}: selects no Deployment's pods")

    for _, s in by_kind.get("Service", []):
        selects_deployment(f"Service {s['metadata']['name']}", s["spec"].get("selector", {}))
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            pods = [d for d in deployments.values()
                    if matches(s["spec"].get("selector", {}), d["spec"]["template"]["metadata"].get("labels", {}))]
            for d in pods:
                declared = {q.get("name") for c in d["spec"]["template"]["spec"]["containers"] for q in c.get("ports", [])}
                declared |= {q["containerPort"] for c in d["spec"]["template"]["spec"]["containers"] for q in c.get("ports", [])}
                if target not in declared:
                    problems.append(f"Service {s['metadata']['name']}: targetPort {target} is not a port of {d['metadata']['name']}")
    for _, p in by_kind.get("PodDisruptionBudget", []):
        selects_deployment(f"PodDisruptionBudget {p['metadata']['name']}", p["spec"]["selector"].get("matchLabels", {}))
    for _, h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            problems.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: scales no Deployment here")
        if h["spec"].get("minReplicas", 1) < 2:
            problems.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: fewer than 2 replicas leave nothing serving in a disruption")
    for _, i in by_kind.get("Ingress", []):
        for rule in i["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                svc = path["backend"]["service"]
                s = services.get(svc["name"])
                if s is None:
                    problems.append(f"Ingress {i['metadata']['name']} {path['path']}: no Service {svc['name']}")
                    continue
                wanted = svc["port"].get("name", svc["port"].get("number"))
                if wanted not in {p.get("name") for p in s["spec"]["ports"]} | {p["port"] for p in s["spec"]["ports"]}:
                    problems.append(f"Ingress {i['metadata']['name']} {path['path']}: Service {svc['name']} has no port {wanted}")
    return problems


def load(files):
    return [(f.name, doc) for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


def all_problems(validator, files):
    problems = []
    for version in versions():
        problems += [f"kubernetes {version}: {p}" for p in schema_problems(validator, files, version)]
    return problems + consistency_problems(load(files))


def main():
    validator, manifests = sys.argv[1], Path(sys.argv[2])
    files = sorted(manifests.glob("*.yaml")) + sorted(manifests.glob("*.yml"))
    if not files:
        say(f"FAIL: no manifests in {manifests}")
        return 1
    oldest, newest = versions()
    problems = all_problems(validator, files)
    if problems:
        for p in problems:
            say(f"FAIL: {p}")
        return 1
    docs = load(files)
    say(f"{len(docs)} resources in {len(files)} files valid (--strict) for Kubernetes {oldest} and {newest}, "
        f"and consistent: {', '.join(sorted({d['kind'] for _, d in docs}))}")

    # Each part can fail: broken copies must be refused, for the reason broken.
    deployment = next(d for _, d in docs if d["kind"] == "Deployment")
    hpa = next(d for _, d in docs if d["kind"] == "HorizontalPodAutoscaler")
    ingress = next(d for _, d in docs if d["kind"] == "Ingress")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = typo["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    old_api = copy.deepcopy(hpa)
    old_api["apiVersion"] = "autoscaling/v2beta2"   # removed in Kubernetes 1.26
    short_grace = copy.deepcopy(deployment)
    short_grace["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    stray = copy.deepcopy(ingress)
    stray["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "effe-nowhere"
    broken = {
        "an unknown field (readinessProbes)": ([typo], "readinessProbes"),
        "an apiVersion with no schema (autoscaling/v2beta2)": ([old_api], "WARN"),
        "a grace period shorter than the host's stop": ([short_grace], "terminationGracePeriodSeconds"),
        "an Ingress to a Service that is not there": ([stray], "no Service effe-nowhere"),
    }
    others = [d for _, d in docs]
    with tempfile.TemporaryDirectory(prefix="effe-k8s-check.") as tmp:
        for what, (replaced, expect) in broken.items():
            names = {(r["kind"], r["metadata"]["name"]) for r in replaced}
            kept = [d for d in others if (d["kind"], d["metadata"]["name"]) not in names]
            path = Path(tmp) / "broken.yaml"
            path.write_text(yaml.safe_dump_all(kept + replaced, sort_keys=False))
            found = all_problems(validator, [path])
            if not any(expect in p for p in found):
                say(f"FAIL: manifests with {what} passed (or failed for another reason: {found}): the check cannot fail")
                return 1
            say(f"refused, as it should be, manifests with {what}")
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
