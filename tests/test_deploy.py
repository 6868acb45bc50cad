"""deploy/: the Kubernetes manifests validate offline, wire the service's contracts, and the Grafana dashboard
queries only metrics a live server exports."""
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from service.config import OPTIONS
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_k8s_manifests_pass_kubernetes_validate_strict():
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) >= 6
    exe = Path(sys.executable).with_name("kubernetes-validate")
    p = subprocess.run([str(exe), "--strict", *files], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("passed") == sum(len(docs(Path(f).name)) for f in files)


def test_the_manifests_wire_the_service_contracts():
    (deploy,) = docs("deployment.yaml")
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]["httpGet"]["path"] == "/live"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    config = docs("configmap.yaml")[0]["data"]
    known = {var for var, _ in OPTIONS.values()}
    assert set(config) <= known, set(config) - known
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["RNNSERVE_DRAIN_SECONDS"])
    assert config["RNNSERVE_SESSIONS"].startswith("redis://rnnserve-redis:")
    (hpa,) = docs("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Pods"]["pods"]["metric"]["name"] == "rnnserve_active_streams"
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert {d["kind"] for d in docs("redis.yaml")} == {"Service", "StatefulSet"}
    assert {d["kind"] for d in docs("pdb.yaml")} == {"PodDisruptionBudget"}


def test_the_dashboard_queries_only_exported_metrics(server):
    # traffic first, so every labelled series exists
    httpx.post(server.url + "/generate", json={"prompt": "x", "max_tokens": 5, "stream": False})
    httpx.post(server.url + "/classify", json={"text": "aeiou"})
    sid = httpx.post(server.url + "/sessions", json={}).json()["session_id"]
    httpx.post(server.url + "/generate", json={"prompt": "x", "max_tokens": 2, "stream": False, "session_id": sid})
    httpx.post(server.url + "/generate", json={"max_tokens": 0})  # a 422
    exported = {line.split("{")[0].split(" ")[0] for line in httpx.get(server.url + "/metrics").text.splitlines()
                if line and not line.startswith("#")}
    dash = json.loads((ROOT / "deploy" / "grafana" / "rnnserve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"rnnserve_[a-z_]+", e)}
    assert len(queried) >= 15
    assert queried <= exported, queried - exported
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("tokens", "first token", "inter-token", "active streams", "queue", "batch", "4xx", "sessions",
                  "store"):
        assert topic in titles, topic


def test_the_local_cluster_explains_itself():
    p = subprocess.run([sys.executable, "deploy/local/cluster.py", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "--replicas" in p.stdout and "redis-server" in p.stdout
