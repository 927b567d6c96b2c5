"""The Kubernetes engine: each session is one Pod `vncsess-<id>` with the `vnc` and `agent`
containers, one Secret and one NetworkPolicy, both owned by the Pod (garbage-collected
with it). The one door to the Kubernetes API: no other module imports the client.

How the compose project maps (docs/kubernetes.md has the whole table and its reasons):

- the X socket volume is an emptyDir at /tmp/.X11-unix; the containers of a Pod share its
  IPC namespace already (MIT-SHM works as with `ipc: service:vnc`);
- the compose hardening becomes securityContext: non-root, read-only root, drop ALL,
  allowPrivilegeEscalation false, seccomp RuntimeDefault (explicit: Kubernetes defaults to
  Unconfined), limits. The pids limit has no per-Pod field in Kubernetes: the one gap;
- the data dir lives on a ReadWriteMany claim (`kube_data_claim`) that vncsess itself mounts
  at $VNCSESS_HOME/sessions; a Pod mounts only its own `<id>/{recordings,screenshots,agent}`
  subPaths of it, never `<id>/secrets`;
- secrets come from the Secret, never env or annotations. The vnc side's copy lives in a
  Memory emptyDir (filled by an init container) so `control` can rotate the full-access
  password at once by exec: a Secret volume refreshes only after a minute or so;
- `--ttl` stays in the containers (graceful: the recording is finalised) and
  activeDeadlineSeconds = ttl + 60 is the backstop;
- NetworkPolicy: only `vncsess serve` Pods reach noVNC (6080); egress to the internet but
  not to private, link-local or carrier-grade NAT ranges (cluster, node and cloud metadata
  addresses); `--no-internet` gets no egress at all.

The client (`kubernetes`, the `vncsess[kubernetes]` extra) is imported on first use: it
costs most of a second, more than `ls` itself. `render` needs no client and no cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shlex
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vncsess.engines.base import META_KEYS, Happening, Observed, SessionSpec
from vncsess.errors import BadInput, Conflict, NotFound, VncsessError
from vncsess.models import project_name

if TYPE_CHECKING:
    from vncsess.config import Settings

SESSION_LABEL = "vncsess.session"
NO_INTERNET_LABEL = "vncsess.no-internet"
OWNER_LABEL = "vncsess.owner"
NAME_LABEL = "app.kubernetes.io/name"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
META_PREFIX = "vncsess."  # annotations: label values cannot hold timestamps, paths, `a:b`
# The Pods of `vncsess serve` (deploy/kubernetes): the only ones that may reach noVNC.
SERVE_SELECTOR = {NAME_LABEL: "vncsess-serve"}
NOVNC_PORT = 6080
SECRETS_DIR = "/run/secrets"
SECRET_SOURCE = "/run/vncsess-secret"  # where the init container reads the Secret
# Egress a session may not reach even with internet: private ranges (the cluster's Pods,
# Services, nodes on most networks), link-local (cloud metadata at 169.254.169.254),
# carrier-grade NAT (some CNIs' Pod ranges), and their IPv6 counterparts.
BLOCKED_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
BLOCKED_V6 = ["fc00::/7", "fe80::/10"]
# The display answers within a few seconds; not ready for longer than this is unhealthy.
STARTING_S = 30
# Waiting reasons after which a container will not start without someone's help:
# `up` fails fast on these instead of waiting out its timeout.
FATAL_WAITING = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
)
TIMEOUT = 15  # seconds for one API request: a dead API server must not hang `ls`
JOB_TIMEOUT = 300.0
EXEC_TIMEOUT = 120


# ---------------------------------------------------------------- quantities


def cpu_quantity(cpus: str) -> str:
    """Docker's `--cpus 1.5` as a Kubernetes quantity: `1500m`."""
    return f"{round(float(cpus) * 1000)}m"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_quantity(size: str) -> str:
    """Docker's `2g`, `1500m`, `512k` (binary units) as a Kubernetes quantity: `2Gi`,
    `1500Mi`, `512Ki`; the largest unit that divides it, else plain bytes."""
    m = _SIZE.match(size.strip())
    if not m:
        raise BadInput(f"malformed memory limit {size!r}", hint="for example 2g or 1500m")
    n = round(float(m.group(1)) * _UNITS[m.group(2).lower()])
    for suffix, unit in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# ---------------------------------------------------------------- rendering


def _hardened() -> dict[str, Any]:
    """Every container's securityContext (the Pod's adds uid, gid, runAsNonRoot, seccomp)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security(uid: int, gid: int) -> dict[str, Any]:
    # Seccomp explicitly: Kubernetes runs containers Unconfined unless told (Docker applies
    # its default profile without being asked).
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(cpus: str, memory: str) -> dict[str, Any]:
    # Requests = limits: the session gets what it was promised (Guaranteed QoS, the last to
    # be evicted), as a Docker session has its limits to itself.
    q = {"cpu": cpu_quantity(cpus), "memory": memory_quantity(memory)}
    return {"requests": dict(q), "limits": dict(q)}


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _memory_dir(name: str, size: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def owner_reference(pod_name: str, pod_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod_name,
        "uid": pod_uid,
        "blockOwnerDeletion": False,
        "controller": True,
    }


def render(
    spec: SessionSpec,
    namespace: str = "vncsess",
    data_claim: str = "vncsess-data",
    pod_uid: str = "",
    with_secrets: bool = True,
) -> list[dict[str, Any]]:
    """The session's objects, in creation order: the Pod, its NetworkPolicy, its Secret.
    The last two are owned by the Pod once its uid is known (POD_UID). Without
    WITH_SECRETS the Secret's values are empty (what `--dry-run` prints)."""
    if spec.port is not None:
        raise BadInput(
            "--port is for the Docker engine", hint="on Kubernetes, `vncsess serve` is the door"
        )
    name = project_name(spec.session_id)
    labels = {
        NAME_LABEL: "vncsess-session",
        MANAGED_LABEL: "vncsess",
        SESSION_LABEL: spec.session_id,
    }
    if spec.no_internet:
        labels[NO_INTERNET_LABEL] = "1"
    if spec.owner:  # selectable, as on Docker: `kubectl delete pod -l vncsess.owner=...`
        labels[OWNER_LABEL] = spec.owner
    annotations = {META_PREFIX + k: v for k, v in spec.meta.items()}
    ttl = str(spec.ttl_s) if spec.ttl_s else ""
    idle = str(spec.idle_timeout_s) if spec.idle_timeout_s else ""
    data = spec.session_id  # the data dir's path inside the claim (see DataDir)

    def data_mount(sub: str, at: str) -> dict[str, Any]:
        return {"name": "data", "mountPath": at, "subPath": f"{data}/{sub}"}

    vnc = {
        "name": "vnc",
        "image": spec.vnc_image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env(
            {
                "RESOLUTION": spec.resolution,
                "SESSION_ID": spec.session_id,
                "RECORD_FPS": str(spec.record_fps),
                "RECORD_ON_START": "1" if spec.record else "",
                "SESSION_TTL": ttl,
                "SESSION_IDLE_TIMEOUT": idle,
                # The warm pool runs on Docker only (`pool fill` refuses other engines), so
                # this is "" here; rendered as compose renders it, to keep them alike.
                "SESSION_POOL": "1" if spec.pool else "",
            }
        ),
        "ports": [{"name": "novnc", "containerPort": NOVNC_PORT, "protocol": "TCP"}],
        "securityContext": _hardened(),
        "resources": _resources(spec.vnc_cpus, spec.vnc_memory),
        # For `ls` to spot a display that stopped answering, as compose's healthcheck.
        # No liveness probe: a session is never restarted behind its viewers' backs.
        "readinessProbe": {
            "exec": {"command": ["vnc-health"]},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "x11", "mountPath": "/tmp/.X11-unix"},
            {"name": "vnc-tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "vnc-secrets", "mountPath": SECRETS_DIR},
            data_mount("recordings", "/data/recordings"),
            data_mount("screenshots", "/data/screenshots"),
            data_mount("activity", "/activity"),
        ],
    }
    agent = {
        "name": "agent",
        "image": spec.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "env": _env(
            {
                "DISPLAY": ":99",
                "XAUTHORITY": f"{SECRETS_DIR}/xauth",
                "RESOLUTION": spec.resolution,
                "SESSION_ID": spec.session_id,
                "VNCSESS_LLM": spec.llm,
                "VNCSESS_LLM_BASE_URL": spec.llm_base_url,
                "VNCSESS_MAX_STEPS": str(spec.max_steps),
                "VNCSESS_DEMO_STEP_DELAY": f"{spec.demo_step_delay:g}",
                "VNCSESS_NO_INTERNET": "1" if spec.no_internet else "",
                "VNCSESS_TTL": ttl,
                "VNCSESS_IDLE_TIMEOUT": idle,
                "VNCSESS_POOL": "1" if spec.pool else "",
            }
        ),
        "securityContext": _hardened(),
        "resources": _resources(spec.agent_cpus, spec.agent_memory),
        "volumeMounts": [
            # Read-only: connecting to a socket needs no write access to its directory.
            {"name": "x11", "mountPath": "/tmp/.X11-unix", "readOnly": True},
            {"name": "agent-tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "agent-secrets", "mountPath": SECRETS_DIR, "readOnly": True},
            data_mount("agent", "/data"),
            # Files put into the session (files.py): the agent reads, never writes.
            {**data_mount("agent/uploads", "/data/uploads"), "readOnly": True},
            # `up --script` (refused on this engine for now): mounted as compose does, empty.
            {**data_mount("script", "/opt/vncsess-script"), "readOnly": True},
            data_mount("activity", "/activity"),
        ],
    }
    # The vnc container's secrets, copied into a Memory emptyDir that `control` rewrites by
    # exec (see push_vnc_passwd). Same image, same hardening, a second or so.
    copy = f"install -m 0600 {SECRET_SOURCE}/xauth {SECRET_SOURCE}/vnc_passwd {SECRETS_DIR}/"
    init = {
        "name": "secrets",
        "image": spec.vnc_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", copy],
        "securityContext": _hardened(),
        "resources": _resources("0.1", "32m"),
        "volumeMounts": [
            {"name": "vnc-secret", "mountPath": SECRET_SOURCE, "readOnly": True},
            {"name": "vnc-secrets", "mountPath": SECRETS_DIR},
        ],
    }

    def secret_volume(vol: str, keys: Sequence[str]) -> dict[str, Any]:
        # 0440 + fsGroup: the kubelet makes the files group-readable by the containers'
        # group; a 0400 file would belong to root and be unreadable by uid 1000.
        items = [{"key": k, "path": k} for k in keys]
        return {
            "name": vol,
            "secret": {"secretName": name, "defaultMode": 0o440, "items": items},
        }

    pod_spec: dict[str, Any] = {
        # Never restarted: a session whose display died shows as degraded, as on Docker.
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # `vnc-record stop` gives ffmpeg up to 10 s to finish a recording.
        "terminationGracePeriodSeconds": 15,
        "securityContext": _pod_security(spec.uid, spec.gid),
        "initContainers": [init],
        "containers": [vnc, agent],
        "volumes": [
            {"name": "x11", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            _memory_dir("vnc-tmp", "64Mi"),
            _memory_dir("agent-tmp", "512Mi"),
            _memory_dir("shm", "512Mi"),
            _memory_dir("vnc-secrets", "1Mi"),
            secret_volume("vnc-secret", ["xauth", "vnc_passwd"]),
            secret_volume("agent-secrets", ["xauth", "llm_env", "task"]),
            {"name": "data", "persistentVolumeClaim": {"claimName": data_claim}},
        ],
    }
    if spec.ttl_s:
        # The backstop of --ttl: the containers end themselves at ttl; this ends the Pod
        # (Failed, DeadlineExceeded) if they did not.
        pod_spec["activeDeadlineSeconds"] = spec.ttl_s + 60
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": pod_spec,
    }

    owned = [owner_reference(name, pod_uid)] if pod_uid else []

    def meta() -> dict[str, Any]:
        m: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": {k: v for k, v in labels.items() if k != NO_INTERNET_LABEL},
        }
        if owned:
            m["ownerReferences"] = owned
        return m

    serve = {"podSelector": {"matchLabels": dict(SERVE_SELECTOR)}}
    egress: list[dict[str, Any]] = []
    if not spec.no_internet:
        egress = [
            {
                "to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": BLOCKED_V4}},
                    {"ipBlock": {"cidr": "::/0", "except": BLOCKED_V6}},
                ]
            },
            # Names must resolve: DNS to the cluster's resolver, wherever it runs.
            {
                "to": [{"namespaceSelector": {}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ]
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(),
        "spec": {
            "podSelector": {"matchLabels": {SESSION_LABEL: spec.session_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [serve], "ports": [{"protocol": "TCP", "port": NOVNC_PORT}]}],
            "egress": egress,
        },
    }
    s = spec.secrets
    values = {"xauth": s.xauth, "vnc_passwd": s.vnc_passwd, "llm_env": s.llm_env, "task": s.task}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(),
        "type": "Opaque",
        "immutable": False,
        "data": {
            k: base64.b64encode(v if with_secrets else b"").decode() for k, v in values.items()
        },
    }
    return [pod, policy, secret]


def render_job(
    name: str,
    image: str,
    argv: Sequence[str],
    subpaths: dict[str, str],
    ids: tuple[int, int],
    namespace: str = "vncsess",
    data_claim: str = "vncsess-data",
) -> dict[str, Any]:
    """A one-off Pod for file work on data dirs (SUBPATHS of the claim -> mount points)
    after a session is gone: hardened like a session, and no network (no policy allows it
    anything, and deploy/kubernetes denies all by default)."""
    mounts = [{"name": "data", "mountPath": at, "subPath": sub} for sub, at in subpaths.items()]
    container = {
        "name": "job",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(argv),
        "securityContext": _hardened(),
        "resources": _resources("1", "512m"),
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {NAME_LABEL: "vncsess-job", MANAGED_LABEL: "vncsess"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "activeDeadlineSeconds": int(JOB_TIMEOUT),
            "securityContext": _pod_security(*ids),
            "containers": [container],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": data_claim}},
                _memory_dir("tmp", "64Mi"),
            ],
        },
    }


def to_yaml(objects: Sequence[dict[str, Any]]) -> str:
    try:
        import yaml
    except ImportError:
        raise VncsessError(
            "printing manifests needs PyYAML", hint="pip install 'vncsess[kubernetes]'"
        ) from None

    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


# ---------------------------------------------------------------- reading Pods


def _started(state: dict[str, Any]) -> datetime | None:
    stamp = (state.get("running") or {}).get("startedAt")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def observed_from_pod(pod: dict[str, Any], now: datetime | None = None) -> Observed:
    """What a Pod (as the API returns it, JSON) says about its session: the same words
    Docker's engine uses, so sessions.py judges both alike."""
    now = now or datetime.now(UTC)
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    notes = meta.get("annotations") or {}
    sid = (meta.get("labels") or {}).get(SESSION_LABEL, "")
    services = {"vnc": "created", "agent": "created"}
    reasons: list[str] = []
    health = ""
    by_name = {c.get("name"): c for c in status.get("containerStatuses") or []}

    for init in status.get("initContainerStatuses") or []:
        state = init.get("state") or {}
        waiting, done = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") in FATAL_WAITING:
            services = dict.fromkeys(services, "dead")
            reasons.append(_why(init["name"], waiting))
        elif done and done.get("exitCode", 0) != 0:
            services = dict.fromkeys(services, "dead")
            reasons.append(_why(init["name"], done))

    for svc in ("vnc", "agent"):
        cs = by_name.get(svc)
        if cs is None:
            continue
        state = cs.get("state") or {}
        if "running" in state:
            services[svc] = "running"
        elif "terminated" in state:
            services[svc] = "exited"
            if state["terminated"].get("reason") == "OOMKilled":
                reasons.append(f"{svc} ran out of memory")
        elif (state.get("waiting") or {}).get("reason") in FATAL_WAITING:
            services[svc] = "dead"
            reasons.append(_why(svc, state["waiting"]))
        if svc == "vnc" and services[svc] == "running":
            started = _started(state)
            young = started is not None and (now - started).total_seconds() < STARTING_S
            health = "healthy" if cs.get("ready") else ("starting" if young else "unhealthy")

    phase = status.get("phase", "")
    if phase in ("Failed", "Succeeded"):
        # The kubelet ends every container of an ended Pod; a status may lag behind.
        services = {k: "exited" if v in ("running", "created") else v for k, v in services.items()}
    if status.get("reason") == "DeadlineExceeded":
        reasons.append("the time limit's backstop (activeDeadlineSeconds) ended the Pod")
    elif status.get("reason"):  # Evicted, NodeLost, ...
        reasons.append(f"{status['reason']}: {status.get('message', '')}".rstrip(": "))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            reasons.append(f"not scheduled: {cond.get('message') or cond.get('reason')}")

    ip = str(status.get("podIP") or "")
    up = services["vnc"] == "running" and ip and not meta.get("deletionTimestamp")
    return Observed(
        session_id=sid,
        meta={k: notes.get(META_PREFIX + k, "") for k in META_KEYS},
        services=services,
        health=health,
        endpoint=(ip, NOVNC_PORT) if up else None,
        novnc_port=None,
        reason="; ".join(reasons),
    )


def _why(container: str, state: dict[str, Any]) -> str:
    words = state.get("message") or state.get("reason") or f"exit {state.get('exitCode')}"
    return f"{container}: {state.get('reason', 'failed')}: {words}"


def exit_status(error_channel: str) -> tuple[int, str]:
    """An exec's exit code from the API server's error channel (a Status object):
    Success is 0; a command that ran and failed carries its code as an ExitCode cause;
    one that could not run at all (not found, not executable) becomes 127, as in a shell."""
    if not error_channel.strip():  # API servers since 1.x always send one (protocol v4+)
        return 1, "no exit status came back from the API server"
    try:
        st = json.loads(error_channel)
    except ValueError:
        return 127, error_channel.strip()
    if st.get("status") == "Success":
        return 0, ""
    for cause in (st.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1")), ""
    return 127, str(st.get("message", "the command could not run"))


# ---------------------------------------------------------------- exec commands


def signal_argv(sig: str) -> list[str]:
    """There is no kill subresource: ask the container's PID 1 (tini, which passes the
    signal on to the main process, as with `docker kill`) from inside the container."""
    return ["sh", "-c", f"kill -s {shlex.quote(sig.upper().removeprefix('SIG'))} 1"]


def push_passwd_argv(size: int) -> list[str]:
    """Replace the vnc container's passwdfile with SIZE bytes read from stdin, at once
    (a rename: x11vnc never reads half a file). `head -c`: the command ends by itself,
    since closing stdin needs the v5 exec protocol, which older API servers lack."""
    script = (
        f'umask 077 && head -c "$1" > {SECRETS_DIR}/.vnc_passwd.new'
        f" && mv -f {SECRETS_DIR}/.vnc_passwd.new {SECRETS_DIR}/vnc_passwd"
    )
    return ["sh", "-c", script, "sh", str(size)]


# ---------------------------------------------------------------- the API


def _api_error(exc: Exception, doing: str) -> VncsessError:
    """A failure of the client or the API server as one line a person can act on."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    if isinstance(exc, ConfigException):
        return VncsessError(
            f"no Kubernetes cluster is configured ({exc})",
            hint="set VNCSESS_KUBECONFIG (or KUBECONFIG), or run vncsess in the cluster",
        )
    if isinstance(exc, ApiException):
        reason = _api_message(exc)
        if exc.status in (401, 403):
            return VncsessError(
                f"{doing}: the Kubernetes API refused ({reason})",
                hint="vncsess needs the Role in deploy/kubernetes/rbac.yaml in its namespace",
            )
        if exc.status == 404:
            return NotFound(f"{doing}: not found ({reason})", hint="see `vncsess ls`")
        if exc.status == 409:
            return Conflict(f"{doing}: {reason}")
        if exc.status == 0 and ("not found" in reason or "not running" in reason):
            return NotFound(f"{doing}: the container is not running", hint="see `vncsess ls`")
        return VncsessError(f"{doing} failed: {reason}")
    return VncsessError(
        f"{doing}: cannot reach the Kubernetes API ({type(exc).__name__}: {exc})",
        hint="check VNCSESS_KUBECONFIG / VNCSESS_KUBE_CONTEXT and that the cluster answers",
    )


def _api_message(exc: Any) -> str:
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(exc.body).get("message") or exc.reason)
    return str(exc.reason or exc.status)


def _is_api_failure(exc: Exception) -> bool:
    """Exceptions that are the cluster's answer or its absence, not a bug of ours."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    return isinstance(exc, ApiException | ConfigException | HTTPError | OSError)


class PodWatch:
    """Engine.watch on Kubernetes, by listing the session Pods every POLL_S: a session that
    appears was created, one that is gone was removed. Kubernetes keeps no history to replay
    by time, so `since` reaches back to nothing (sessions present at the start are the
    caller's to list). A container that ended is not told yet: in a listing, a Pod being
    deleted and one whose container failed look alike (so no session.expired/failed)."""

    POLL_S = 1.0

    def __init__(self, observe: Any, until: float | None) -> None:
        self._observe = observe
        self._until = until
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Happening]:
        seen: dict[str, dict[str, str]] | None = None
        while not self._closed.is_set():
            now = time.time()
            if self._until is not None and now >= self._until:
                return
            current = {o.session_id: o.meta for o in self._observe()}
            if seen is not None:
                for sid in sorted(current.keys() - seen.keys()):
                    yield Happening(sid, "vnc", "created", now, current[sid])
                for sid in sorted(seen.keys() - current.keys()):
                    yield Happening(sid, "vnc", "removed", now, seen[sid])
            seen = current
            self._closed.wait(self.POLL_S)

    def close(self) -> None:
        self._closed.set()


class KubernetesEngine:
    """Sessions as Pods in one namespace."""

    name = "kubernetes"
    builds_images = False  # images come from a registry the cluster pulls from

    def __init__(self, settings: Settings, api: Any = None, net: Any = None) -> None:
        self.settings = settings
        self.namespace = settings.kube_namespace
        self._api = api  # a CoreV1Api (tests pass a fake one)
        self._net = net  # a NetworkingV1Api

    # -- the client ----------------------------------------------------------
    def _connect(self) -> Any:
        """The ApiClient from VNCSESS_KUBECONFIG/VNCSESS_KUBE_CONTEXT, else the Pod's own
        service account when running in a cluster, else KUBECONFIG or ~/.kube/config."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise VncsessError(
                "the Kubernetes engine needs the kubernetes client",
                hint="pip install 'vncsess[kubernetes]'",
            ) from None
        s = self.settings
        if s.kube_config and not Path(s.kube_config).expanduser().is_file():
            raise VncsessError(
                f"kubeconfig not found: {s.kube_config}",
                hint="set VNCSESS_KUBECONFIG to a kubeconfig file, or leave it unset",
            )
        try:
            if (
                not s.kube_config
                and not s.kube_context
                and os.environ.get("KUBERNETES_SERVICE_HOST")
            ):
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                return client.ApiClient(cfg)
            return config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(Path(s.kube_config).expanduser()) if s.kube_config else None,
                context=s.kube_context or None,
            )
        except Exception as exc:
            if _is_api_failure(exc):
                raise _api_error(exc, "loading the Kubernetes configuration") from None
            raise

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CoreV1Api(self._connect())
        return self._api

    @property
    def net(self) -> Any:
        if self._net is None:
            from kubernetes import client

            self._net = client.NetworkingV1Api(self.api.api_client)
        return self._net

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call; its raw answer (the client's models are never built: they cost
        time, and a field a newer API server adds must not break a delete)."""
        try:
            return fn(*args, _request_timeout=TIMEOUT, _preload_content=False, **kwargs)
        except Exception as exc:
            if _is_api_failure(exc):
                raise _api_error(exc, doing) from None
            raise

    def _json(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A call whose answer is read as plain JSON (the shape `kubectl get -o json`
        shows)."""
        return json.loads(self._call(doing, fn, *args, **kwargs).data)

    # -- the seam ------------------------------------------------------------
    def check(self) -> None:
        """The cluster answers and lets us list Pods in our namespace."""
        self._json(
            f"listing Pods in namespace {self.namespace}",
            self.api.list_namespaced_pod,
            self.namespace,
            limit=1,
        )

    def render(self, spec: SessionSpec, pod_uid: str = "") -> list[dict[str, Any]]:
        return render(spec, self.namespace, self.settings.kube_data_claim, pod_uid=pod_uid)

    def plan(self, spec: SessionSpec) -> str:
        objects = render(spec, self.namespace, self.settings.kube_data_claim, with_secrets=False)
        return (
            "# vncsess: what `up` would create (nothing was). The Secret's values are not\n"
            "# printed; the NetworkPolicy and the Secret get ownerReferences to the Pod\n"
            "# (its uid) when it exists, so they go when it goes.\n" + to_yaml(objects)
        )

    def start(self, spec: SessionSpec) -> None:
        self._data_subdir(spec.data_dir)
        pod = self.render(spec)[0]
        created = self._json("creating the session's Pod", self.api.create_namespaced_pod,
                             self.namespace, body=pod)  # fmt: skip
        # The Pod cannot start before its Secret exists (the kubelet waits for the volume),
        # and its NetworkPolicy is made before the Secret: no moment without the policy.
        _, policy, secret = self.render(spec, pod_uid=created["metadata"]["uid"])
        net = self.net
        self._call("creating the session's NetworkPolicy",
                   net.create_namespaced_network_policy, self.namespace, body=policy)  # fmt: skip
        self._call("creating the session's Secret",
                   self.api.create_namespaced_secret, self.namespace, body=secret)  # fmt: skip

    def _data_subdir(self, path: Path) -> str:
        """A data dir's path inside the data claim: vncsess mounts the claim's root at
        $VNCSESS_HOME/sessions, so the data dir must be there."""
        try:
            return str(path.relative_to(self.settings.sessions_dir))
        except ValueError:
            raise BadInput(
                f"{path} is not on the data volume ({self.settings.sessions_dir})",
                hint="on Kubernetes, mount the data claim at $VNCSESS_HOME/sessions",
            ) from None

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        found = self._json("listing Pods", self.api.list_namespaced_pod, self.namespace,
                           label_selector=selector)  # fmt: skip
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    def observe(self, session_id: str | None = None) -> list[Observed]:
        selector = f"{SESSION_LABEL}={session_id}" if session_id else SESSION_LABEL
        return [observed_from_pod(p) for p in self._pods(selector)]

    def watch(self, since: float, until: float | None = None) -> PodWatch:
        return PodWatch(self.observe, until)

    def remove(self, session_ids: Sequence[str]) -> None:
        """Delete each Pod (its Secret and NetworkPolicy go with it, by ownerReferences),
        and delete those two by name as well: garbage collection is asynchronous, and a
        half-started session may have them without an owner."""
        for sid in session_ids:
            name = project_name(sid)
            for doing, fn in (
                ("deleting the session's Pod", self.api.delete_namespaced_pod),
                ("deleting the session's Secret", self.api.delete_namespaced_secret),
                ("deleting the NetworkPolicy", self.net.delete_namespaced_network_policy),
            ):
                with contextlib.suppress(NotFound):
                    self._call(doing, fn, name, self.namespace, grace_period_seconds=5)
            self._wait_gone(name)

    def _wait_gone(self, name: str, timeout: float = 30) -> None:
        """Until the Pod is gone (its containers stopped), as `docker compose down` waits:
        after `stop` the session is not in `ls` any more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._call("reading the session's Pod", self.api.read_namespaced_pod, name,
                           self.namespace)  # fmt: skip
            except NotFound:
                return
            time.sleep(0.5)
        raise VncsessError(
            f"Pod {name} is still terminating after {timeout:g} s",
            hint=f"kubectl -n {self.namespace} describe pod {name}",
        )

    def logs(
        self, session_id: str, services: Sequence[str], follow: bool, tail: int | None
    ) -> Iterator[str]:
        wanted = list(services) or ["vnc", "agent"]
        if not follow:
            for svc in wanted:
                yield from (f"{svc}  | {ln}" for ln in self._log(session_id, svc, tail))
            return
        # Follow both at once, in arrival order, as `docker compose logs -f` does.
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(svc: str) -> None:
            try:
                for ln in self._log_stream(session_id, svc, tail):
                    lines.put(f"{svc}  | {ln}")
            except VncsessError as exc:
                lines.put(f"{svc}  | ({exc.message})")
            finally:
                lines.put(None)

        for svc in wanted:
            threading.Thread(target=pump, args=(svc,), daemon=True).start()
        ended = 0
        while ended < len(wanted):
            line = lines.get()
            if line is None:
                ended += 1
            else:
                yield line

    def _log(self, session_id: str, service: str, tail: int | None) -> list[str]:
        resp = self._call(f"reading the {service} log", self.api.read_namespaced_pod_log,
                          project_name(session_id), self.namespace, container=service,
                          tail_lines=tail)  # fmt: skip
        return str(resp.data.decode(errors="replace")).splitlines()

    def _log_stream(self, session_id: str, service: str, tail: int | None) -> Iterator[str]:
        try:
            resp = self.api.read_namespaced_pod_log(
                project_name(session_id), self.namespace, container=service, follow=True,
                tail_lines=tail, _preload_content=False,
            )  # fmt: skip
            rest = ""
            for raw in resp.stream(decode_content=True):
                *whole, rest = (rest + raw.decode(errors="replace")).split("\n")
                yield from whole
            if rest:
                yield rest
        except Exception as exc:
            if _is_api_failure(exc):
                raise _api_error(exc, f"following the {service} log") from None
            raise

    def exec(self, session_id: str, service: str, argv: Sequence[str]) -> tuple[int, str]:
        return self._exec(session_id, service, argv)

    def _exec(
        self, session_id: str, service: str, argv: Sequence[str], stdin: bytes = b""
    ) -> tuple[int, str]:
        """Run a command through the API server (the exec subresource): (exit code,
        stdout + stderr). Commands that read stdin must read a known number of bytes:
        closing stdin needs the v5 protocol, which older API servers do not speak."""
        from kubernetes.stream import stream

        doing = f"running {argv[0]} in {service}"
        try:
            ws = stream(
                self.api.connect_get_namespaced_pod_exec,
                project_name(session_id), self.namespace, container=service,
                command=list(argv), stdin=bool(stdin), stdout=True, stderr=True, tty=False,
                _preload_content=False,
            )  # fmt: skip
            if stdin:
                ws.write_stdin(stdin)
                ws.close_channel(0)
            ws.run_forever(timeout=EXEC_TIMEOUT)
            if ws.is_open():
                ws.close()
                raise VncsessError(f"{doing}: no answer within {EXEC_TIMEOUT} s")
            rc, why = exit_status(ws.read_channel(3))
            out = str(ws.read_all())
            ws.close()
        except Exception as exc:
            if _is_api_failure(exc):
                raise _api_error(exc, doing) from None
            raise
        return rc, out + (why + "\n" if why else "")

    def signal(self, session_id: str, service: str, sig: str) -> None:
        rc, out = self._exec(session_id, service, signal_argv(sig))
        if rc != 0:
            raise VncsessError(f"signalling {service} failed: {out.strip() or f'exit {rc}'}")

    def push_vnc_passwd(self, session_id: str, data_dir: Path, passwdfile: bytes) -> None:
        """Write the new passwdfile into the vnc container's secrets (a Memory emptyDir)
        by exec with stdin, replacing the file at once (x11vnc re-reads it per client);
        then update the Secret, which holds what a restarted container would get."""
        rc, out = self._exec(session_id, "vnc", push_passwd_argv(len(passwdfile)), passwdfile)
        if rc != 0:
            raise VncsessError(f"rotating the VNC password failed: {out.strip()}")
        self._patch_secret(session_id, {"vnc_passwd": passwdfile})

    def _patch_secret(self, session_id: str, values: dict[str, bytes]) -> None:
        # A merge patch, said so: the client's default for a patch is a JSON Patch (a list
        # of operations), which the API server refuses for an object like this one.
        patch = {"data": {k: base64.b64encode(v).decode() for k, v in values.items()}}
        self._call("updating the session's Secret", self.api.patch_namespaced_secret,
                   project_name(session_id), self.namespace, body=patch,
                   _content_type="application/merge-patch+json")  # fmt: skip

    def run_job(self, image: str, argv: Sequence[str], mounts: dict[Path, str]) -> str:
        """A throwaway Pod (render_job) on the data claim; waits for it to end, returns its
        log, deletes it."""
        import secrets as random

        from vncsess.datadir import container_ids

        subpaths = {self._data_subdir(host): inside for host, inside in mounts.items()}
        pod = render_job(
            f"vncsess-job-{random.token_hex(4)}", image, argv, subpaths, container_ids(),
            self.namespace, self.settings.kube_data_claim,
        )  # fmt: skip
        name = pod["metadata"]["name"]
        self._call("starting a job Pod", self.api.create_namespaced_pod, self.namespace, body=pod)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT
            phase = ""
            while phase not in ("Succeeded", "Failed") and time.monotonic() < deadline:
                time.sleep(0.5)
                got = self._json("reading a job Pod", self.api.read_namespaced_pod, name,
                                 self.namespace)  # fmt: skip
                phase = (got.get("status") or {}).get("phase", "")
            resp = self._call("reading a job's log", self.api.read_namespaced_pod_log, name,
                              self.namespace)  # fmt: skip
            out = str(resp.data.decode(errors="replace"))
            if phase != "Succeeded":
                last = out.strip().splitlines()[-1] if out.strip() else phase or "timed out"
                raise VncsessError(f"running {argv[0]} in {image} failed: {last}")
            return out
        finally:
            with contextlib.suppress(VncsessError):
                self._call("deleting a job Pod", self.api.delete_namespaced_pod, name,
                           self.namespace, grace_period_seconds=0)  # fmt: skip
