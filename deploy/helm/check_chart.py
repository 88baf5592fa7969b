#!/usr/bin/env python3
"""Lints, renders, validates and checks the knockgate-controller Helm chart.

Run by test.sh inside its venv (helm-python-sdk, kubernetes-validate, PyYAML):

    check_chart.py CHART_DIR EXAMPLES_DIR OUT_DIR KUBE_VERSION...

For each values file (the chart's defaults, examples/sqlite.yaml,
examples/postgresql.yaml) it lints the chart with Helm's linter (strict), renders it
like `helm template`, writes one file per object under OUT_DIR/<case>/, validates every
object with `kubernetes-validate --strict` against each KUBE_VERSION, and asserts on the
rendered objects. Then it checks what must not render (SQLite with replicas=2, misspelt
keys) and that the validator itself rejects an unknown field.

Each failed check prints what was expected and what was found; the exit status is 1
when any check failed. The last line is "helm-chart: N passed, M failed".
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

import helm_python as helm

RELEASE = "kg"
NAMESPACE = "knockgate"
SQLITE_REFUSAL = "database.type=sqlite allows exactly one replica, got replicas=2"
PKI_FILES = ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "admin.pem"]


class Checks:
    """Counts checks; prints every failure with what was expected and found."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.case = "-"

    def check(self, ok: bool, what: str, expected: Any, found: Any) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL [{self.case}] {what}\n     expected: {expected}\n     found:    {found}")
        return ok

    def equal(self, what: str, expected: Any, found: Any) -> bool:
        return self.check(found == expected, what, expected, found)


C = Checks()


# ---------------------------------------------------------------------------- helpers


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of user values: `over` wins, maps merge recursively."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects_of(manifests: dict[str, str]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                doc.setdefault("__template", path)
                objs.append(doc)
    return objs


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def dig(obj: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        try:
            obj = obj[p]
        except (KeyError, IndexError, TypeError):
            return default
    return obj


def flags(args: list[str]) -> dict[str, str]:
    """`--k=v` and `--k v` into {k: v}; a bare flag maps to ""."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                k, v = a[2:], str(args[i + 1])
                i += 1
            else:
                k, v = a[2:], ""
            out[k] = v
        i += 1
    return out


def port_of(hostport: str) -> int | None:
    m = re.search(r":(\d+)$", hostport or "")
    return int(m.group(1)) if m else None


def resolve_port(container: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def pdb_keeps(pdb: dict[str, Any], replicas: int) -> int | None:
    """How many replicas the budget keeps through voluntary disruptions."""
    spec = pdb.get("spec") or {}

    def count(v: Any, round_up: bool) -> int:
        if isinstance(v, str) and v.endswith("%"):
            x = replicas * int(v[:-1]) / 100
            return int(-(-x // 1)) if round_up else int(x // 1)
        return int(v)

    if "minAvailable" in spec:
        return count(spec["minAvailable"], True)
    if "maxUnavailable" in spec:
        return replicas - count(spec["maxUnavailable"], True)
    return None


# ------------------------------------------------------------------------ the checks


def check_metadata(chart: helm.Chart) -> None:
    C.case = "Chart.yaml"
    md = chart.metadata
    C.equal("Chart.yaml apiVersion", "v2", md.get("apiVersion"))
    C.equal("Chart.yaml version", "0.1.0", md.get("version"))
    C.equal("Chart.yaml appVersion", "0.1.0", md.get("appVersion"))
    C.equal("Chart.yaml kubeVersion", ">=1.25.0-0", md.get("kubeVersion"))
    schema = chart.schema or {}
    C.equal("values.schema.json $schema", "http://json-schema.org/draft-07/schema#", schema.get("$schema"))
    C.equal("values.schema.json top-level additionalProperties", False, schema.get("additionalProperties"))


def check_lint(chart_dir: str, values: dict[str, Any], kube_versions: list[str]) -> None:
    for kv in kube_versions:
        report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{kv}")
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        C.check(
            not bad and not report.get("errors"),
            f"helm lint --strict --kube-version v{kv}: no warnings or errors",
            "none",
            bad or report.get("errors"),
        )


def check_common(objs: list[dict[str, Any]], notes: str, exp: dict[str, Any]) -> dict[str, Any]:
    """Checks every case shares; returns the pod spec and the controller container."""
    for o in objs:
        C.equal(f"{o['kind']}/{dig(o, 'metadata', 'name')} namespace", NAMESPACE, dig(o, "metadata", "namespace"))

    workloads = of_kind(objs, "StatefulSet") + of_kind(objs, "Deployment")
    if not C.equal("workloads (StatefulSet + Deployment)", 1, len(workloads)):
        return {}
    wl = workloads[0]
    pod = dig(wl, "spec", "template", "spec", default={})
    pod_labels = dig(wl, "spec", "template", "metadata", "labels", default={})
    sel = dig(wl, "spec", "selector", "matchLabels", default={})
    C.check(bool(sel) and sel.items() <= pod_labels.items(), "workload selector matches its pod labels", sel, pod_labels)

    containers = pod.get("containers") or []
    ctl = next((c for c in containers if c.get("name") == "controller"), None)
    if not C.check(ctl is not None, "a container named controller", "controller", [c.get("name") for c in containers]):
        return {}
    C.equal("image", exp["image"], ctl.get("image"))

    args = [str(a) for a in ctl.get("args") or []]
    C.equal("first argument", "run", args[0] if args else None)
    f = flags(args)
    env = {e["name"]: e for e in ctl.get("env") or []}
    named_ports = {p.get("name"): p.get("containerPort") for p in ctl.get("ports") or []}

    # Ports: gRPC 7443 for agents, a separate plain-HTTP health port.
    C.equal("--listen port", 7443, port_of(f.get("listen", "")))
    C.equal("container port grpc", 7443, named_ports.get("grpc"))
    health_port = port_of(f.get("health-listen", ""))
    C.check(health_port is not None and health_port != 7443, "--health-listen: a port other than 7443", "e.g. 0.0.0.0:8080", f.get("health-listen"))
    C.equal("container port health = --health-listen port", health_port, named_ports.get("health"))

    # Probes: HTTP on the health port; /healthz for liveness and startup, /readyz for readiness.
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = dig(ctl, probe, "httpGet")
        if not C.check(isinstance(get, dict), f"{probe}.httpGet", "an httpGet probe", ctl.get(probe)):
            continue
        C.equal(f"{probe} path", path, get.get("path"))
        C.equal(f"{probe} port (resolved)", health_port, resolve_port(ctl, get.get("port")))
        C.check(get.get("scheme", "HTTP") == "HTTP", f"{probe} scheme", "HTTP", get.get("scheme"))

    # Security.
    psc = pod.get("securityContext") or {}
    csc = ctl.get("securityContext") or {}
    C.equal("pod runAsNonRoot", True, psc.get("runAsNonRoot"))
    C.check(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, "pod runAsUser non-zero", "> 0", psc.get("runAsUser"))
    C.check(isinstance(psc.get("fsGroup"), int) and psc["fsGroup"] > 0, "pod fsGroup set", "> 0", psc.get("fsGroup"))
    C.equal("pod seccompProfile", "RuntimeDefault", dig(psc, "seccompProfile", "type"))
    C.equal("container runAsNonRoot", True, csc.get("runAsNonRoot"))
    C.equal("container readOnlyRootFilesystem", True, csc.get("readOnlyRootFilesystem"))
    C.equal("container allowPrivilegeEscalation", False, csc.get("allowPrivilegeEscalation"))
    C.check("ALL" in (dig(csc, "capabilities", "drop") or []), "container capabilities.drop", "contains ALL", dig(csc, "capabilities"))
    C.check(not dig(csc, "capabilities", "add"), "container capabilities.add", "none", dig(csc, "capabilities", "add"))
    C.check(csc.get("privileged") in (None, False), "container not privileged", "false/absent", csc.get("privileged"))
    C.equal("container seccompProfile", "RuntimeDefault", dig(csc, "seccompProfile", "type"))
    C.equal("automountServiceAccountToken", False, pod.get("automountServiceAccountToken"))

    # The PKI Secret, read-only at --pki-dir.
    mounts = {m.get("mountPath"): m for m in ctl.get("volumeMounts") or []}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    pki_dir = f.get("pki-dir")
    C.check(bool(pki_dir), "--pki-dir passed", "a path", pki_dir)
    pm = mounts.get(pki_dir)
    if C.check(pm is not None, "a volumeMount at --pki-dir", pki_dir, sorted(mounts)):
        C.equal("PKI mount readOnly", True, pm.get("readOnly"))
        C.equal("PKI volume's Secret", exp["pki_secret"], dig(volumes.get(pm.get("name")), "secret", "secretName"))
    C.check(f.get("data-dir") not in (None, "", pki_dir), "--data-dir set and not the PKI dir", f"!= {pki_dir}", f.get("data-dir"))
    tmp = mounts.get("/tmp")
    C.check(tmp is not None and "emptyDir" in (volumes.get(tmp.get("name")) or {}), "/tmp is an emptyDir", "emptyDir at /tmp", tmp)

    # Services: agents on 7443 (no health port there), health on its own Service.
    services = of_kind(objs, "Service")
    main = [s for s in services if any(p.get("port") == 7443 for p in dig(s, "spec", "ports", default=[])) and dig(s, "spec", "clusterIP") != "None"]
    if C.equal("Services with port 7443 (not headless)", 1, len(main)):
        svc = main[0]
        C.equal("agents' Service type", exp["service_type"], dig(svc, "spec", "type"))
        port = next(p for p in svc["spec"]["ports"] if p.get("port") == 7443)
        C.equal("agents' Service 7443 target (resolved)", 7443, resolve_port(ctl, port.get("targetPort")))
        other = [resolve_port(ctl, p.get("targetPort")) for p in svc["spec"]["ports"]]
        C.check(health_port not in other, "agents' Service does not expose the health port", f"not {health_port}", other)
        s_sel = dig(svc, "spec", "selector", default={})
        C.check(bool(s_sel) and s_sel.items() <= pod_labels.items(), "agents' Service selects the pods", s_sel, pod_labels)
        if "node_port" in exp:
            C.equal("agents' Service nodePort", exp["node_port"], port.get("nodePort"))
    health_svcs = [s for s in services if any(resolve_port(ctl, p.get("targetPort")) == health_port for p in dig(s, "spec", "ports", default=[]))]
    C.check(len(health_svcs) == 1 and dig(health_svcs[0], "spec", "type") == "ClusterIP", "one ClusterIP Service for the health port", "1 ClusterIP", [(dig(s, "metadata", "name"), dig(s, "spec", "type")) for s in health_svcs])

    # The PodDisruptionBudget.
    pdbs = of_kind(objs, "PodDisruptionBudget")
    if C.equal("PodDisruptionBudgets", 1, len(pdbs)):
        replicas = dig(wl, "spec", "replicas")
        keeps = pdb_keeps(pdbs[0], replicas)
        if replicas > 1:
            C.check(keeps is not None and 1 <= keeps < replicas, f"PDB keeps at least one of {replicas} replicas and allows a disruption", f"1..{replicas - 1}", pdbs[0].get("spec"))
        else:
            C.check(keeps is not None and keeps < 1, "PDB of a single replica does not block node drains", "keeps 0", pdbs[0].get("spec"))
        p_sel = dig(pdbs[0], "spec", "selector", "matchLabels", default={})
        C.check(bool(p_sel) and p_sel.items() <= pod_labels.items(), "PDB selects the pods", p_sel, pod_labels)

    # NetworkPolicy.
    nps = of_kind(objs, "NetworkPolicy")
    if not exp["network_policy"]:
        C.equal("NetworkPolicies (off)", 0, len(nps))
    elif C.equal("NetworkPolicies", 1, len(nps)):
        np = nps[0]
        n_sel = dig(np, "spec", "podSelector", "matchLabels", default={})
        C.check(bool(n_sel) and n_sel.items() <= pod_labels.items(), "NetworkPolicy selects the pods", n_sel, pod_labels)
        in_ports = [resolve_port(ctl, p.get("port")) for r in dig(np, "spec", "ingress", default=[]) for p in r.get("ports") or []]
        C.check(7443 in in_ports and health_port in in_ports, "NetworkPolicy admits the gRPC and health ports", [7443, health_port], in_ports)
        C.check("Egress" in dig(np, "spec", "policyTypes", default=[]), "NetworkPolicy restricts egress", "Egress in policyTypes", dig(np, "spec", "policyTypes"))
        out_ports = [p.get("port") for r in dig(np, "spec", "egress", default=[]) or [] for p in r.get("ports") or []]
        for port in exp.get("egress_ports", []):
            C.check(port in out_ports, f"NetworkPolicy egress to port {port}", port, out_ports)

    # NOTES.txt: the enrolment steps.
    for needle in (
        f"create secret generic {exp['pki_secret']}",
        *(f"--from-file={name}=" for name in PKI_FILES),
        "KNOCKADM_CONTROLLER=",
        "KNOCKADM_IDENTITY=",
        "admin\\.pem",
        "knockadm agent add gw1",
        "knockgate-agent enroll",
        "--controller https://",
        "--token",
        "--ca-sha256",
    ):
        C.check(needle in notes, f"NOTES.txt mentions {needle!r}", needle, "absent")

    return {"workload": wl, "pod": pod, "ctl": ctl, "flags": f, "env": env, "mounts": mounts, "volumes": volumes}


def check_sqlite(objs: list[dict[str, Any]], r: dict[str, Any]) -> None:
    sts = of_kind(objs, "StatefulSet")
    C.equal("StatefulSets", 1, len(sts))
    C.equal("Deployments", 0, len(of_kind(objs, "Deployment")))
    if not sts or not r:
        return
    s = sts[0]
    C.equal("StatefulSet replicas", 1, dig(s, "spec", "replicas"))
    vcts = dig(s, "spec", "volumeClaimTemplates", default=[])
    if C.equal("volumeClaimTemplates", 1, len(vcts)):
        claim = dig(vcts[0], "metadata", "name")
        dm = r["mounts"].get(r["flags"].get("data-dir"))
        C.check(dm is not None and dm.get("name") == claim and not dm.get("readOnly"), "the claim is mounted writable at --data-dir", f"{claim} at {r['flags'].get('data-dir')}", dm)
        C.check(claim not in r["volumes"], "no pod volume shadows the claim", f"no volume {claim!r}", sorted(r["volumes"]))
        C.check(bool(dig(vcts[0], "spec", "resources", "requests", "storage")), "claim requests storage", "a size", dig(vcts[0], "spec"))
    db_env = [n for n in r["env"] if "DATABASE_URL" in n]
    C.equal("DATABASE_URL env vars", [], db_env)
    C.check("database-url" not in r["flags"], "no --database-url", "absent", r["flags"].get("database-url"))
    headless = [x for x in of_kind(objs, "Service") if dig(x, "metadata", "name") == dig(s, "spec", "serviceName")]
    C.check(len(headless) == 1 and dig(headless[0], "spec", "clusterIP") == "None", "StatefulSet serviceName is a rendered headless Service", dig(s, "spec", "serviceName"), [dig(x, "metadata", "name") for x in of_kind(objs, "Service")])


def check_postgresql(objs: list[dict[str, Any]], r: dict[str, Any]) -> None:
    deps = of_kind(objs, "Deployment")
    C.equal("Deployments", 1, len(deps))
    C.equal("StatefulSets", 0, len(of_kind(objs, "StatefulSet")))
    C.equal("PersistentVolumeClaims", 0, len(of_kind(objs, "PersistentVolumeClaim")))
    if not deps or not r:
        return
    C.equal("Deployment replicas", 3, dig(deps[0], "spec", "replicas"))
    C.check("volumeClaimTemplates" not in deps[0]["spec"], "no volumeClaimTemplates", "absent", deps[0]["spec"].get("volumeClaimTemplates"))
    pvc_vols = [n for n, v in r["volumes"].items() if "persistentVolumeClaim" in v]
    C.equal("pod volumes from a PVC", [], pvc_vols)
    url = r["env"].get("KNOCKGATE_DATABASE_URL")
    C.check(url is not None and "value" not in url, "KNOCKGATE_DATABASE_URL set, and not as a literal", "valueFrom", url)
    C.equal("KNOCKGATE_DATABASE_URL secretKeyRef", {"name": "knockgate-db", "key": "url"}, dig(url, "valueFrom", "secretKeyRef"))
    C.check("database-url" not in r["flags"], "no --database-url on the command line (it would show in ps)", "absent", r["flags"].get("database-url"))
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        C.check(var in r["env"], f"env {var}", "set", sorted(r["env"]))
    C.equal("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability.svc:4317", dig(r["env"].get("OTEL_EXPORTER_OTLP_ENDPOINT"), "value"))


def check_render_fails(chart: helm.Chart, what: str, values: dict[str, Any], error: type, needle: str) -> None:
    try:
        render(chart, values)
    except error as e:
        C.check(needle in str(e), f"{what}: error names the cause", needle, str(e).strip()[:400])
        return
    except helm.HelmError as e:
        C.check(False, f"{what}: refused with {error.__name__}", error.__name__, f"{type(e).__name__}: {str(e)[:300]}")
        return
    C.check(False, f"{what}: refused at render time", f"{error.__name__} containing {needle!r}", "rendered without error")


def validate(files: list[Path], kube_versions: list[str], want_ok: bool) -> tuple[int, str]:
    """Runs the kubernetes-validate CLI (strict) on files for every version."""
    cli = Path(sys.executable).with_name("kubernetes-validate")
    cmd = [str(cli), "--strict"]
    for kv in kube_versions:
        cmd += ["-k", kv]
    proc = subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    if want_ok:
        passed = len(re.findall(r"^INFO .* passed for resource ", out, re.M))
        expected = len(files) * len(kube_versions)
        problems = [line for line in out.splitlines() if not line.startswith("INFO ")]
        C.check(proc.returncode == 0 and passed == expected and not problems,
                f"kubernetes-validate --strict -k {' -k '.join(kube_versions)}: every object passes",
                f"exit 0, {expected} passed, no WARN/ERROR", f"exit {proc.returncode}, {passed} passed, {problems[:10]}")
    return proc.returncode, out


# ----------------------------------------------------------------------------- main


def main() -> int:
    chart_dir, examples_dir, out_dir, *kube_versions = sys.argv[1:]
    if not kube_versions:
        print("usage: check_chart.py CHART_DIR EXAMPLES_DIR OUT_DIR KUBE_VERSION...", file=sys.stderr)
        return 2
    helm.enable_logging(level=40)  # the library's own INFO lines (lint's `fail` notes) stay quiet
    out = Path(out_dir)
    chart = helm.Chart.load(chart_dir)
    check_metadata(chart)

    cases: list[tuple[str, str | None, Callable[..., None], dict[str, Any]]] = [
        ("defaults", None, check_sqlite,
         {"image": "knockgate/knockgate-controller:0.1.0", "pki_secret": f"{RELEASE}-knockgate-controller-pki",
          "service_type": "ClusterIP", "network_policy": False}),
        ("examples/sqlite.yaml", os.path.join(examples_dir, "sqlite.yaml"), check_sqlite,
         {"image": "registry.example.net/knockgate/knockgate-controller:0.1.0", "pki_secret": "knockgate-pki",
          "service_type": "NodePort", "node_port": 30443, "network_policy": True}),
        ("examples/postgresql.yaml", os.path.join(examples_dir, "postgresql.yaml"), check_postgresql,
         {"image": "registry.example.net/knockgate/knockgate-controller:0.1.0", "pki_secret": "knockgate-pki",
          "service_type": "LoadBalancer", "network_policy": True, "egress_ports": [53, 5432, 4317]}),
    ]
    files_by_case: dict[str, list[Path]] = {}
    for case, values_file, check_db, exp in cases:
        C.case = case
        values = helm.values_from_yaml(Path(values_file).read_text()) if values_file else {}
        check_lint(chart_dir, values, kube_versions)
        try:
            manifests = render(chart, values)
        except helm.HelmError as e:
            C.check(False, "renders", "no error", f"{type(e).__name__}: {e}")
            continue
        objs = objects_of(manifests)
        notes = next((v for k, v in manifests.items() if k.endswith("NOTES.txt")), "")
        case_dir = out / re.sub(r"[^a-z0-9]+", "-", case.lower()).strip("-")
        case_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, o in enumerate(objs):
            o.pop("__template", None)
            f = case_dir / f"{i:02d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
            f.write_text(yaml.safe_dump(o, sort_keys=False))
            files.append(f)
        (case_dir / "NOTES.txt").write_text(notes)
        files_by_case[case] = files
        validate(files, kube_versions, want_ok=True)
        r = check_common(objs, notes, exp)
        check_db(objs, r)

    # What must not render.
    C.case = "refusals"
    defaults_file = {}
    sqlite_example = helm.values_from_yaml(Path(examples_dir, "sqlite.yaml").read_text())
    pg_example = helm.values_from_yaml(Path(examples_dir, "postgresql.yaml").read_text())
    set_replicas_2 = helm.parse_set_string("replicas=2")
    check_render_fails(chart, "defaults + --set replicas=2 (SQLite)", deep_merge(defaults_file, set_replicas_2), helm.HelmRenderError, SQLITE_REFUSAL)
    check_render_fails(chart, "examples/sqlite.yaml + --set replicas=2", deep_merge(sqlite_example, set_replicas_2), helm.HelmRenderError, SQLITE_REFUSAL)
    check_render_fails(chart, "postgresql without existingSecret", {"database": {"type": "postgresql"}}, helm.HelmRenderError, "needs database.postgresql.existingSecret")
    check_render_fails(chart, "misspelt top-level key (replica)", helm.parse_set_string("replica=2"), helm.HelmValuesError, "additional properties 'replica' not allowed")
    check_render_fails(chart, "misspelt nested key (service.tpye)", helm.parse_set_string("service.tpye=NodePort"), helm.HelmValuesError, "additional properties 'tpye' not allowed")
    check_render_fails(chart, "service.type outside the enum", helm.parse_set_string("service.type=Loadbalancer"), helm.HelmValuesError, "value must be one of")
    check_render_fails(chart, "database.type outside the enum", helm.parse_set_string("database.type=postgres"), helm.HelmValuesError, "value must be one of")
    # Controls: the refusal is about SQLite, not about replicas.
    try:
        objs = objects_of(render(chart, deep_merge(pg_example, set_replicas_2)))
        C.equal("examples/postgresql.yaml + --set replicas=2 renders 2 replicas", [2], [dig(d, "spec", "replicas") for d in of_kind(objs, "Deployment")])
    except helm.HelmError as e:
        C.check(False, "examples/postgresql.yaml + --set replicas=2 renders", "no error", str(e)[:300])

    # The validator itself: strict mode must reject an unknown field.
    C.case = "validator"
    sts_file = next((f for f in files_by_case.get("defaults", []) if "-statefulset-" in f.name), None)
    if C.check(sts_file is not None, "a rendered StatefulSet to corrupt", "a file", None):
        bad = yaml.safe_load(sts_file.read_text())
        bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz", "port": "health"}
        bad_file = out / "negative" / "statefulset-unknown-field.yaml"
        bad_file.parent.mkdir(parents=True, exist_ok=True)
        bad_file.write_text(yaml.safe_dump(bad, sort_keys=False))
        for kv in kube_versions:
            rc, text = validate([bad_file], [kv], want_ok=False)
            C.check(rc != 0 and re.search(r"^ERROR .*httpGett", text, re.M) is not None,
                    f"kubernetes-validate --strict -k {kv} rejects an unknown field",
                    "non-zero exit, ERROR naming httpGett", f"exit {rc}: {text.strip()[:300]}")

    total = sum(len(v) for v in files_by_case.values())
    print(f"rendered {total} objects in {len(files_by_case)} cases, validated against Kubernetes {', '.join(kube_versions)}")
    print(f"helm-chart: {C.passed} passed, {C.failed} failed")
    return 1 if C.failed else 0


if __name__ == "__main__":
    sys.exit(main())
