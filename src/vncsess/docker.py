"""The one door to Docker. Only this module imports python-on-whales.

Every failure leaves here as a VncsessError with a hint, never as a DockerException.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from python_on_whales import DockerClient
from python_on_whales.client_config import ClientNotFoundError
from python_on_whales.exceptions import DockerException, NoSuchImage
from python_on_whales.utils import run, stream_stdout_and_stderr

from vncsess.errors import BuildFailed, Conflict, DockerUnavailable, NotFound, VncsessError

SESSION_LABEL = "vncsess.session"
PROJECT_LABEL = "com.docker.compose.project"
_DOCKER = DockerClient()


def _explain(exc: DockerException | ClientNotFoundError, doing: str) -> VncsessError:
    """Turn a failed docker command into a one-line error a person can act on."""
    if isinstance(exc, ClientNotFoundError) or shutil.which("docker") is None:
        return DockerUnavailable(
            "Docker is not installed (no `docker` command on PATH)",
            hint="install Docker Engine: https://docs.docker.com/engine/install/",
        )
    err = (exc.stderr or "") + (exc.stdout or "")
    if "Cannot connect to the Docker daemon" in err or "docker daemon running" in err:
        return DockerUnavailable(
            "Docker is not running (cannot reach the Docker daemon)",
            hint="start it (`sudo systemctl start docker`) or set DOCKER_HOST",
        )
    if "permission denied" in err and "docker.sock" in err:
        return DockerUnavailable(
            "permission denied on the Docker socket",
            hint="add yourself to the `docker` group, or run with sudo",
        )
    if "port is already allocated" in err or "address already in use" in err:
        return Conflict(
            "the requested port is already in use",
            hint="choose another --port, or leave it out to get a free one",
        )
    last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
    return VncsessError(f"{doing} failed: {last or 'docker exited ' + str(exc.return_code)}")


def _cmd() -> list[str]:
    return list(_DOCKER.client_config.docker_cmd)


def _run(args: Sequence[str], doing: str) -> str:
    try:
        return str(run([*_cmd(), *args]))
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, doing) from None


def _compose(project: str, files: Sequence[Path] = (), env_file: Path | None = None) -> Any:
    client = DockerClient(
        compose_files=list(files),
        compose_env_files=[env_file] if env_file else [],
        compose_project_name=project,
    )
    return client.compose


def require_compose() -> None:
    """Compose v2 (`docker compose`) must be there; v1 `docker-compose` cannot run sessions."""
    try:
        installed = _DOCKER.compose.is_installed()
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, "checking docker compose") from None
    if not installed:
        raise DockerUnavailable(
            "Docker Compose v2 (`docker compose`) is not installed",
            hint="install the docker-compose-plugin package, or run `make setup`",
        )


# ---------------------------------------------------------------- images


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels, or None when the image is not there."""
    try:
        return dict(_DOCKER.image.inspect(image).config.labels or {})
    except NoSuchImage:
        return None
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, f"inspecting image {image}") from None


def try_pull(image: str) -> bool:
    try:
        _DOCKER.image.pull(image, quiet=True)
    except DockerException:
        return False
    return True


def import_rootfs(tarball: Path, tag: str) -> None:
    try:
        _DOCKER.image.import_(tarball, tag=tag)
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, f"importing {tag}") from None


def build(context: Path, tag: str, labels: dict[str, str]) -> Iterator[str]:
    """`docker build` with the classic builder, yielding its output lines as they come.

    Buildx is optional on many engines (and absent here), so the plain builder is used.
    """
    # --force-rm: a failed step leaves no stopped container behind.
    args = [*_cmd(), "build", "--force-rm", "--tag", tag]
    for k, v in labels.items():
        args += ["--label", f"{k}={v}"]
    args.append(str(context))
    tail: list[str] = []
    try:
        for _, raw in stream_stdout_and_stderr(args, env={"DOCKER_BUILDKIT": "0"}):
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-19:], line]
            yield line
    except DockerException as exc:
        detail = next((ln for ln in reversed(tail) if ln.strip()), "")
        raise BuildFailed(
            f"building {tag} failed: {detail or 'docker build exited ' + str(exc.return_code)}",
            hint="run `vncsess build` to see the full output",
        ) from None
    except ClientNotFoundError as exc:
        raise _explain(exc, "docker build") from None


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
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, "docker compose up") from None


def compose_down(project: str) -> None:
    """Remove the project's containers, networks and volumes, found by project label
    (compose v2 needs no compose file for this, so it works after the data dir is gone)."""
    try:
        _compose(project).down(volumes=True, remove_orphans=True, timeout=5, quiet=True)
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, "docker compose down") from None
    # A volume still in use by a dying container can survive `down`; sweep by label.
    for kind in ("volume", "network"):
        names = project_resources(project)[kind + "s"]
        if names:
            with contextlib.suppress(VncsessError):
                _run([kind, "rm", *names], f"removing {kind}s")


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
    except (DockerException, ClientNotFoundError) as exc:
        raise _explain(exc, "docker compose logs") from None


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
        text = str(run([*_cmd(), "container", "inspect", *ids_list]))
    except DockerException:
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
    args = [*_cmd(), "exec", *(["-d"] if detach else []), container, *command]
    try:
        out, err = run(args, return_stderr=True)
        return 0, (out or "") + (err or "")
    except DockerException as exc:
        if exc.stderr and ("No such container" in exc.stderr or "is not running" in exc.stderr):
            raise NotFound(
                f"container {container} is not running", hint="see `vncsess ls`"
            ) from None
        return exc.return_code, (exc.stdout or "") + (exc.stderr or "")
    except ClientNotFoundError as exc:
        raise _explain(exc, "docker exec") from None


def signal(container: str, sig: str) -> None:
    _run(["kill", "--signal", sig, container], f"signalling {container}")


def run_oneoff(image: str, command: Sequence[str], mounts: dict[Path, str], user: str) -> str:
    """A throwaway container (`--rm`, no network) for file work when a session is gone."""
    args = ["run", "--rm", "--network", "none", "--user", user, "--entrypoint", command[0]]
    for host, inside in mounts.items():
        args += ["--volume", f"{host}:{inside}"]
    return _run([*args, image, *command[1:]], f"running {command[0]} in {image}")
