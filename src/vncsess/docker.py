"""The one door to Docker: no other module runs a docker command.

Plain docker CLI calls (list, inspect, exec, kill: the hot paths of `ls`, `inspect`, `wait`)
are a subprocess each, through `_run`. Compose, image pulls and imports go through
python-on-whales, imported on first use: importing it costs about 0.2 s, more than all of
`ls`'s docker calls together. Every failure leaves here as a VncsessError with a hint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vncsess.errors import BuildFailed, Conflict, DockerUnavailable, NotFound, VncsessError

SESSION_LABEL = "vncsess.session"
PROJECT_LABEL = "com.docker.compose.project"


def _not_installed() -> DockerUnavailable:
    return DockerUnavailable(
        "Docker is not installed (no `docker` command on PATH)",
        hint="install Docker Engine: https://docs.docker.com/engine/install/",
    )


def _docker() -> str:
    exe = shutil.which("docker")
    if exe is None:
        raise _not_installed()
    return exe


def _explain(output: str, returncode: int, doing: str) -> VncsessError:
    """Turn a failed docker command's output into a one-line error a person can act on."""
    if "Cannot connect to the Docker daemon" in output or "docker daemon running" in output:
        return DockerUnavailable(
            "Docker is not running (cannot reach the Docker daemon)",
            hint="start it (`sudo systemctl start docker`) or set DOCKER_HOST",
        )
    if "permission denied" in output and "docker.sock" in output:
        return DockerUnavailable(
            "permission denied on the Docker socket",
            hint="add yourself to the `docker` group, or run with sudo",
        )
    if "port is already allocated" in output or "address already in use" in output:
        return Conflict(
            "the requested port is already in use",
            hint="choose another --port, or leave it out to get a free one",
        )
    last = next((ln for ln in reversed(output.strip().splitlines()) if ln.strip()), "")
    return VncsessError(f"{doing} failed: {last or f'docker exited {returncode}'}")


def _whales_error(exc: Exception, doing: str) -> VncsessError:
    """The same, for an exception raised by python-on-whales."""
    from python_on_whales.client_config import ClientNotFoundError
    from python_on_whales.exceptions import DockerException

    if isinstance(exc, DockerException):
        return _explain((exc.stderr or "") + (exc.stdout or ""), exc.return_code, doing)
    if isinstance(exc, ClientNotFoundError):
        return _not_installed()
    raise exc  # not a docker failure: a bug, and it should look like one


def _run(args: Sequence[str], doing: str) -> str:
    proc = subprocess.run([_docker(), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise _explain(proc.stderr + proc.stdout, proc.returncode, doing)
    return proc.stdout


def _client(**compose: Any) -> Any:
    from python_on_whales import DockerClient

    return DockerClient(**compose)


def _compose(project: str, files: Sequence[Path] = (), env_file: Path | None = None) -> Any:
    return _client(
        compose_files=list(files),
        compose_env_files=[env_file] if env_file else [],
        compose_project_name=project,
    ).compose


def require_compose() -> None:
    """Compose v2 (`docker compose`) must be there; v1 `docker-compose` cannot run sessions."""
    _docker()
    try:
        installed = _client().compose.is_installed()
    except Exception as exc:
        raise _whales_error(exc, "checking docker compose") from None
    if not installed:
        raise DockerUnavailable(
            "Docker Compose v2 (`docker compose`) is not installed",
            hint="install the docker-compose-plugin package, or run `make setup`",
        )


# ---------------------------------------------------------------- images


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels, or None when the image is not there."""
    text = subprocess.run(
        [_docker(), "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if text.returncode != 0:
        if "No such image" in text.stderr:
            return None
        raise _explain(text.stderr, text.returncode, f"inspecting image {image}")
    return dict(json.loads(text.stdout) or {})


def try_pull(image: str) -> bool:
    return (
        subprocess.run([_docker(), "pull", "--quiet", image], capture_output=True, check=False)
    ).returncode == 0


def import_rootfs(tarball: Path, tag: str) -> None:
    _run(["image", "import", str(tarball), tag], f"importing {tag}")


def build(context: Path, tag: str, labels: dict[str, str]) -> Iterator[str]:
    """`docker build` with the classic builder, yielding its output lines as they come.

    Buildx is optional on many engines (and absent here), so the plain builder is used.
    """
    # --force-rm: a failed step leaves no stopped container behind.
    # --force-rm: a failed step leaves no stopped container behind.
    args = [_docker(), "build", "--force-rm", "--tag", tag]
    for k, v in labels.items():
        args += ["--label", f"{k}={v}"]
    args.append(str(context))
    tail: list[str] = []
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-19:], line]
            yield line
    if proc.returncode != 0:
        detail = next((ln for ln in reversed(tail) if ln.strip()), "")
        raise BuildFailed(
            f"building {tag} failed: {detail or f'docker build exited {proc.returncode}'}",
            hint="run `vncsess build` to see the full output",
        )


# ---------------------------------------------------------------- compose projects


def ensure_display_network(name: str) -> None:
    """The bridge every session's vnc container publishes its port from, with
    inter-container traffic off: one shared network instead of one per session, because
    Docker's default address pools hold only about 30 networks, and sessions on it still
    cannot reach each other (ICC disabled), only the host's port mapping reaches them."""
    if _run(["network", "ls", "-q", "--filter", f"name=^{name}$"], "docker network ls").strip():
        return
    try:
        _run(
            ["network", "create", "--driver", "bridge", "--label", "vncsess.shared=display",
             "--opt", "com.docker.network.bridge.enable_icc=false", name],
            "creating the display network",
        )  # fmt: skip
    except VncsessError as exc:
        if "already exists" not in exc.message:  # another `up` made it at the same moment
            raise


def compose_up(project: str, files: Sequence[Path], env_file: Path) -> None:
    try:
        _compose(project, files, env_file).up(detach=True, quiet=True, no_build=True)
    except Exception as exc:
        raise _whales_error(exc, "docker compose up") from None


def compose_down(project: str) -> None:
    """Remove the project's containers, networks and volumes, found by project label
    (compose v2 needs no compose file for this, so it works after the data dir is gone)."""
    try:
        _compose(project).down(volumes=True, remove_orphans=True, timeout=5, quiet=True)
    except Exception as exc:
        raise _whales_error(exc, "docker compose down") from None
    # What `down` could not remove: a network that a container from outside the project
    # was attached to (a model server a user joined to the session's network), a volume
    # still held by a dying container. Detach the strangers, then sweep by label.
    left = project_resources(project)
    for network in left["networks"]:
        attached = _run(
            ["network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}", network],
            "inspecting a session network",
        ).split()
        for container in attached:
            with contextlib.suppress(VncsessError):
                _run(["network", "disconnect", "--force", network, container], "disconnecting")
    for kind in ("volume", "network"):
        if left[kind + "s"]:
            with contextlib.suppress(VncsessError):
                _run([kind, "rm", *left[kind + "s"]], f"removing {kind}s")


def project_resources(project: str) -> dict[str, list[str]]:
    """Containers, networks and volumes that still carry the project's label."""
    flt = f"label={PROJECT_LABEL}={project}"
    out: dict[str, list[str]] = {}
    for kind, fmt in (
        ("container", "{{.Names}}"),
        ("network", "{{.Name}}"),
        ("volume", "{{.Name}}"),
    ):
        extra = ["-a"] if kind == "container" else []
        text = _run([kind, "ls", *extra, "--filter", flt, "--format", fmt], f"listing {kind}s")
        out[kind + "s"] = [ln for ln in text.splitlines() if ln.strip()]
    return out


def compose_logs(
    project: str, services: Sequence[str], follow: bool, tail: int | None
) -> Iterator[str]:
    try:
        stream = _compose(project).logs(
            services=list(services),
            follow=follow,
            tail=str(tail) if tail is not None else None,
            stream=True,
        )
        for _, raw in stream:
            yield raw.decode(errors="replace").rstrip("\n")
    except Exception as exc:
        raise _whales_error(exc, "docker compose logs") from None


# ---------------------------------------------------------------- containers


def session_containers(session_id: str | None = None) -> list[dict[str, Any]]:
    """`docker inspect` JSON of every vncsess container (or one session's): two docker
    calls however many sessions there are (list ids, then inspect them all at once)."""
    label = f"{SESSION_LABEL}={session_id}" if session_id else SESSION_LABEL
    ids = _run(["container", "ls", "-aq", "--no-trunc", "--filter", f"label={label}"], "docker ps")
    ids_list = ids.split()
    if not ids_list:
        return []
    try:
        text = _run(["container", "inspect", *ids_list], "docker inspect")
    except VncsessError:
        # A container vanished between the two calls (another shell ran `stop`): retry once.
        ids_list = _run(
            ["container", "ls", "-aq", "--no-trunc", "--filter", f"label={label}"], "docker ps"
        ).split()
        if not ids_list:
            return []
        text = _run(["container", "inspect", *ids_list], "docker inspect")
    data: list[dict[str, Any]] = json.loads(text)
    return data


def exec_in(container: str, command: Sequence[str], detach: bool = False) -> tuple[int, str]:
    """Run a command in a running container: (exit code, stdout+stderr)."""
    args = [_docker(), "exec", *(["-d"] if detach else []), container, *command]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    err = proc.stderr
    if proc.returncode != 0 and ("No such container" in err or "is not running" in err):
        raise NotFound(f"container {container} is not running", hint="see `vncsess ls`")
    if proc.returncode != 0 and "Cannot connect to the Docker daemon" in err:
        raise _explain(err, proc.returncode, "docker exec")
    return proc.returncode, proc.stdout + err


def signal(container: str, sig: str) -> None:
    _run(["kill", "--signal", sig, container], f"signalling {container}")


def run_oneoff(image: str, command: Sequence[str], mounts: dict[Path, str], user: str) -> str:
    """A throwaway container (`--rm`, no network) for file work when a session is gone."""
    args = ["run", "--rm", "--network", "none", "--user", user, "--entrypoint", command[0]]
    for host, inside in mounts.items():
        args += ["--volume", f"{host}:{inside}"]
    return _run([*args, image, *command[1:]], f"running {command[0]} in {image}")
