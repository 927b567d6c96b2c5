"""Run a session Pod, as the Kubernetes engine renders it, with Debian's podman
(`podman kube play`): real Xvfb, x11vnc and Chromium in the `vnc` and `agent` containers.

    .venv/bin/python tests/podman_kube_play.py

Not part of the test suite (podman is not a Kubernetes node, and CI does not install it):
a trial, run by hand, whose output docs/kubernetes.md records. podman 4.3 cannot take the
manifests exactly as rendered, so three things are translated, and only these:

- Secret volumes: podman 4.3 crashes on them (a nil dereference in VolumeFromSecret), so the
  Secret's items are written to host directories the way the kubelet projects them
  (0440, group = fsGroup) and mounted as hostPath;
- the data claim and its subPaths: podman 4.3 ignores subPath on hostPath, so each subPath
  mount becomes a hostPath of that very subdirectory (what the kubelet's subPath gives);
- the noVNC port: podman publishes containerPorts on the host; here it gets hostIP
  127.0.0.1 and a free port, so the trial is reachable from loopback only.

Everything else (the init container, the emptyDirs, securityContext, seccomp, limits, env,
the readiness probe's command) is the rendered Pod. The commands the engine runs by exec
(signal, password push, recorder tools) are run with `podman exec` in the same words.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from vncsess.datadir import DataDir, new_password, new_secrets
from vncsess.engines.base import SessionSpec
from vncsess.engines.kubernetes import push_passwd_argv, render, signal_argv
from vncsess.rfb import AuthFailed, RfbClient, wait_ready

VNC_IMAGE = os.environ.get("VNCSESS_VNC_IMAGE") or "vncsess-vnc"
AGENT_IMAGE = os.environ.get("VNCSESS_AGENT_IMAGE") or "vncsess-agent"
results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> bool:
    results.append((ok, what))
    print(f"{'PASS' if ok else 'FAIL'}  {what}", flush=True)
    return ok


def podman(*args: str, input: bytes | None = None, check: bool = True) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)} failed: {proc.stderr.decode()[-500:]}")
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def exec_rc(container: str, *argv: str, stdin: bytes | None = None) -> tuple[int, str]:
    args = ["podman", "exec", *(["-i"] if stdin is not None else []), container, *argv]
    proc = subprocess.run(args, capture_output=True, input=stdin, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def translate(objects: list[dict[str, Any]], work: Path, sessions: Path) -> dict[str, Any]:
    """The three translations the module docstring lists; nothing else changes."""
    pod, _, secret = objects
    spec = pod["spec"]
    gid = spec["securityContext"]["fsGroup"]
    volumes = []
    for v in spec["volumes"]:
        if "secret" in v:
            d = work / "secret-volumes" / v["name"]
            d.mkdir(parents=True)
            for item in v["secret"]["items"]:
                f = d / item["path"]
                f.write_bytes(base64.b64decode(secret["data"][item["key"]]))
                os.chown(f, 0, gid)
                f.chmod(v["secret"]["defaultMode"])
            volumes.append({"name": v["name"], "hostPath": {"path": str(d), "type": "Directory"}})
        elif "persistentVolumeClaim" not in v:
            volumes.append(v)
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] == "data":
                sub = m.pop("subPath")
                m["name"] = "data-" + sub.replace("/", "-")
                path = {"path": str(sessions / sub), "type": "Directory"}
                volumes.append({"name": m["name"], "hostPath": path})
        for p in c.get("ports", []):
            p.update(hostIP="127.0.0.1", hostPort=free_port())
    spec["volumes"] = volumes
    return pod


def main() -> int:
    if shutil.which("podman") is None:
        print("podman is not installed (apt-get install podman catatonit)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="vncsess-podman-"))
    # podman's default ulimits (nofile 1048576...) exceed what a container like this one
    # may set: ask for less than this process's own hard limits.
    import resource

    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 16384)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 8192)  # half its hard limit fails
    conf = work / "containers.conf"
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
                    f'"nproc={nproc}:{nproc}"]\n')  # fmt: skip
    os.environ["CONTAINERS_CONF"] = str(conf)
    for image in (VNC_IMAGE, AGENT_IMAGE):
        if subprocess.run(["podman", "image", "exists", image], check=False).returncode:
            print(f"copying {image} from the Docker engine into podman...", flush=True)
            podman("pull", f"docker-daemon:{image if ':' in image else image + ':latest'}")

    sessions = work / "sessions"
    sid = os.urandom(4).hex()
    keys = new_secrets("demo", "")
    data = DataDir(sessions / sid)
    data.create(keys)
    spec = SessionSpec(
        session_id=sid, name="podman-trial", created_at="2026-01-01T00:00:00+00:00",
        resolution="1280x720", data_dir=data.path, public_host="", bind="127.0.0.1",
        port=None, vnc_image=VNC_IMAGE, agent_image=AGENT_IMAGE, uid=1000, gid=1000,
        llm="demo", llm_base_url="", max_steps=10, demo_step_delay=0.5, no_internet=False,
        record=True, record_fps=5, ttl_s=0, expires_at="", agent_cpus="1.5",
        agent_memory="2g", secrets=keys,
    )  # fmt: skip
    pod = translate(render(spec), work, sessions)
    (work / "pod.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
    name = pod["metadata"]["name"]
    vnc, agent = f"{name}-vnc", f"{name}-agent"
    port = pod["spec"]["containers"][0]["ports"][0]["hostPort"]
    try:
        t0 = time.monotonic()
        print(podman("kube", "play", str(work / "pod.yaml")).strip().splitlines()[0])
        ready = wait_ready("127.0.0.1", port, time.monotonic() + 60)
        check(True, f"noVNC answers RFB through websockify {time.monotonic() - t0:.1f} s "
                    f"after kube play (RFB {ready:.2f} s)")  # fmt: skip
        view, control = data.vnc_secrets()
        with RfbClient("127.0.0.1", port) as rfb:
            check(rfb.login(view).width == 1280, "the view password from the Secret logs in")

        # The two containers: one IPC and network namespace, their own PID namespaces.
        ns = {
            c: {n: exec_rc(c, "readlink", f"/proc/self/ns/{n}")[1].strip() for n in
                ("ipc", "net", "pid")}
            for c in (vnc, agent)
        }  # fmt: skip
        check(ns[vnc]["ipc"] == ns[agent]["ipc"], "vnc and agent share the IPC namespace")
        check(ns[vnc]["net"] == ns[agent]["net"], "and the network namespace (localhost)")
        check(ns[vnc]["pid"] != ns[agent]["pid"], "but not the PID namespace")
        for c in (vnc, agent):
            status = exec_rc(c, "cat", "/proc/1/status")[1]
            fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
            check(fields["Uid"].split()[0] == "1000" and fields["CapEff"].strip() == "0" * 16
                  and fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2",
                  f"{c}: uid 1000, no capabilities, no_new_privs, a seccomp filter")  # fmt: skip
            rc, _ = exec_rc(c, "touch", "/usr/x")
            check(rc != 0, f"{c}: the root file system is read-only")
        mounts = exec_rc(agent, "cat", "/proc/mounts")[1]
        x11 = next((ln for ln in mounts.splitlines() if " /tmp/.X11-unix " in ln), "")
        check(" ro," in x11, "agent: /tmp/.X11-unix is mounted read-only")

        # The agent (real browser-use, the scripted demo model, Chromium) on the display.
        deadline = time.monotonic() + 180
        while not data.result_file.exists() and time.monotonic() < deadline:
            time.sleep(1)
        result = data.read_json(data.result_file) or {}
        check(
            result.get("status") == "succeeded",
            f"agent: Chromium drew on vnc's display, task {result.get('status')} "
            f"{time.monotonic() - t0:.1f} s after kube play: {result.get('final_text')}",
        )

        # What the engine does by exec, in its own words.
        rc, out = exec_rc(vnc, "vnc-health")
        check(rc == 0, "the readiness probe's command (vnc-health) passes")
        rc, out = exec_rc(vnc, "vnc-screenshot", "/data/screenshots/trial.png")
        shot = data.screenshots / "trial.png"
        check(rc == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n",
              f"vnc-screenshot wrote {shot}")  # fmt: skip
        rc, out = exec_rc(vnc, "vnc-record", "status")
        check(rc == 0 and ".partial.mp4" in out, "--record: recording since the first frame")
        new = f"{new_password()}\n__BEGIN_VIEWONLY__\n{view}\n".encode()
        rc, out = exec_rc(vnc, *push_passwd_argv(len(new)), stdin=new)
        check(rc == 0, "the password push (exec with stdin) succeeds")
        with RfbClient("127.0.0.1", port) as rfb:
            check(rfb.login(new.decode().split()[0]).width == 1280, "the new password logs in")
        try:
            with RfbClient("127.0.0.1", port) as rfb:
                rfb.login(control)
            check(False, "the old control password is refused")
        except AuthFailed:
            check(True, "the old control password is refused")
        rc, _ = exec_rc(agent, *signal_argv("SIGUSR1"))
        time.sleep(1)
        logs = podman("logs", agent)
        check(rc == 0 and "SIGUSR1" in logs, "a signal sent by exec to PID 1 reaches the runner")
        rc, out = exec_rc(vnc, "vnc-record", "stop")
        check(rc == 0 and out.strip().endswith(".mp4"), f"vnc-record stop: {out.strip()[-60:]}")
    finally:
        podman("pod", "rm", "--force", "--time", "5", name, check=False)
        shutil.rmtree(work, ignore_errors=True)
    failed = [w for ok, w in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
