"""The Docker engine, and the one door to Docker: no other module runs a docker command.

A session is a compose project `vncsess-<id>` rendered from compose/session.yml into the
session's data dir (so plain `docker compose` works from there too). Every docker and
compose call on the hot paths (up, ls, stop, wait) is one subprocess, through `_run`:
python-on-whales, which drove compose once, costs 0.2-0.3 s of import, more than all of
`ls`'s docker calls together. It stays where start-up does not count and its typed reading
of Docker's answers helps: what `doctor` reads of the engine.
Sessions are removed in batches with plain docker calls, not one `compose down` each (see
remove_projects). Every failure leaves here as a VncsessError with a hint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vncsess import commands
from vncsess.engines.base import META_KEYS, Happening, Observed, SessionSpec
from vncsess.errors import BuildFailed, Conflict, DockerUnavailable, NotFound, VncsessError
from vncsess.models import project_name

if TYPE_CHECKING:
    from vncsess.config import Settings

SESSION_LABEL = "vncsess.session"
PROJECT_LABEL = "com.docker.compose.project"
LABEL_PREFIX = "vncsess."
# Every session's containers join shared bridges with inter-container traffic off (see
# ensure_network): the vnc containers publish their ports from the display network, the
# agents reach the internet from theirs, or nothing beyond this machine from the offline
# one (`--no-internet`, an internal network). Name -> internal.
DISPLAY_NETWORK = "vncsess-display"
AGENT_NETWORK = "vncsess-agents"
OFFLINE_NETWORK = "vncsess-agents-offline"
SHARED_NETWORKS = {DISPLAY_NETWORK: False, AGENT_NETWORK: False, OFFLINE_NETWORK: True}
NETWORK_TRIES = 4  # compose ups that met a shared network missing or doubled (DockerEngine.start)


def _not_installed() -> DockerUnavailable:
    return DockerUnavailable(
        "Docker is not installed (no `docker` command on PATH)",
        hint="install Docker Engine: https://docs.docker.com/engine/install/",
    )


def _docker() -> str:
    return commands.which("docker", _not_installed)


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
    if "No such container" in output or "is not running" in output:
        return NotFound(f"{doing} failed: the container is not running", hint="see `vncsess ls`")
    return commands.plain_explain(output, returncode, doing)


def _run(args: Sequence[str], doing: str, input: bytes | None = None) -> str:
    return commands.run([_docker(), *args], doing, explain=_explain, input=input)


# Where the docker CLI looks for its plugins (besides $DOCKER_CONFIG/cli-plugins).
_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def _compose_key() -> str:
    """What `docker compose version` depends on: the docker binary and every compose plugin
    it could pick, each by path, size and mtime. An upgrade or a new plugin changes it."""
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    parts = []
    for path in [Path(_docker()), *(Path(d) / "docker-compose" for d in
                                      (config / "cli-plugins", *_PLUGIN_DIRS))]:  # fmt: skip
        try:
            st = path.stat()
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def require_compose(cache: Path | None = None) -> None:
    """Compose v2 (`docker compose`) must be there; v1 `docker-compose` cannot run sessions.

    With a cache dir, a version seen before with the same docker binary and plugins is
    taken from there: asking costs 0.07-0.3 s, on every `up`."""
    if cache is None:
        compose_version()
        return
    key, memo = _compose_key(), cache / "compose-version.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(memo.read_text()).get("key") == key:
            return
    version = compose_version()
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "version": version}))
        tmp.replace(memo)


def compose_version() -> str:
    """Compose v2's version (`2.40.3`), or a DockerUnavailable that says how to get it.

    Asked with `docker compose version`, not python-on-whales's is_installed(), which looks
    for the word "compose" in `docker compose --help`: without the plugin that prints
    docker's own help, which names the config directory, and a path such as
    /home/compose-user/.docker passed the check."""
    proc = commands.result([_docker(), "compose", "version", "--short"])
    version = proc.stdout.decode(errors="replace").strip().removeprefix("v")
    if proc.returncode == 0 and version[:1].isdigit() and int(version.split(".")[0]) >= 2:
        return version
    err = proc.stderr.decode(errors="replace")
    if "Cannot connect to the Docker daemon" in err or "permission denied" in err:
        raise _explain(err, proc.returncode, "docker compose version")
    raise DockerUnavailable(
        "Docker Compose v2 (`docker compose`) is not installed",
        hint="install the docker-compose-plugin package, or run `make setup`",
    )


# ---------------------------------------------------------------- images


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels, or None when the image is not there."""
    proc = commands.result(
        [_docker(), "image", "inspect", "--format", "{{json .Config.Labels}}", image]
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if "No such image" in err:
            return None
        raise _explain(err, proc.returncode, f"inspecting image {image}")
    return dict(json.loads(proc.stdout) or {})


def image_id(image: str) -> str:
    """The image's id, or "" when it is not there."""
    proc = commands.result([_docker(), "image", "inspect", "--format", "{{.Id}}", image])
    return proc.stdout.decode().strip() if proc.returncode == 0 else ""


def tag(image: str, tag: str) -> None:
    _run(["tag", image, tag], f"tagging {tag}")


def try_pull(image: str) -> bool:
    return commands.result([_docker(), "pull", "--quiet", image]).returncode == 0


def import_rootfs(tarball: Path, tag: str) -> None:
    _run(["image", "import", str(tarball), tag], f"importing {tag}")


def build(context: Path, tag: str, labels: dict[str, str], no_cache: bool = False) -> Iterator[str]:
    """`docker build` with the classic builder, yielding its output lines as they come.

    Buildx is optional on many engines (and absent here), so the plain builder is used.
    """
    # --force-rm: a failed step leaves no stopped container behind.
    args = [_docker(), "build", "--force-rm", "--tag", tag]
    if no_cache:
        args.append("--no-cache")  # fresh packages, and a build that shows its progress
    for k, v in labels.items():
        args += ["--label", f"{k}={v}"]
    args.append(str(context))
    failed = commands.explained(BuildFailed, "run `vncsess build` to see the full output")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    yield from commands.stream(args, f"building {tag}", explain=failed, env=env)


def remove_untagged(image_ids: Sequence[str]) -> None:
    """Remove images a build left untagged (its earlier stages), with their untagged
    parents that nothing else builds on. Never with --force: an image that is tagged,
    has children or is used by a container stays, and so does anything on failure."""
    for image in image_ids:
        proc = commands.result(
            [_docker(), "image", "inspect", "--format", "{{len .RepoTags}}", image]
        )
        if proc.returncode == 0 and proc.stdout.strip() == b"0":
            commands.result([_docker(), "image", "rm", image])


# ---------------------------------------------------------------- compose projects


def ensure_network(name: str, internal: bool = False) -> None:
    """Make the shared bridge NAME (internal: routed nowhere beyond this machine) with
    inter-container traffic off, unless it is there. Sessions share these few networks
    instead of one each: Docker's default address pools hold only 31 networks, dockerd
    creates and removes networks one at a time (0.2 s each, most of what `stop` of 16
    sessions cost), and sessions on them still cannot reach each other (ICC disabled); only
    the host reaches their containers, and the display's port mapping.

    Docker does not refuse a second network of the same name when two creates race (two
    first `up`s at once: seen with ten), and compose then refuses every session ("multiple
    networks with name"). So whoever created one keeps the oldest of that name and removes
    the others: every racer picks the same one, and an up that found it already made
    (the oldest, then) is never left without it."""
    ids = _network_ids(name)
    if len(ids) == 1:
        return
    if not ids:
        try:
            _run(
                ["network", "create", "--driver", "bridge", "--label", "vncsess.shared=1",
                 *(["--internal"] if internal else []),
                 "--opt", "com.docker.network.bridge.enable_icc=false", name],
                f"creating the network {name}",
            )  # fmt: skip
        except VncsessError as exc:
            if "already exists" not in exc.message:  # another `up` made it at the same moment
                raise
        ids = _network_ids(name)
        if len(ids) < 2:
            return
    # Two of that name (racers' creates, seen by compose as "multiple networks" before the
    # creators tidied up): whoever meets them keeps the oldest, as the creators do.
    # Another racer may remove one between the listing and this: inspect what is left.
    proc = commands.result([_docker(), "network", "inspect", *ids])
    try:
        found: list[dict[str, Any]] = json.loads(proc.stdout or b"[]")
    except ValueError:
        return
    for network in sorted(found, key=_age)[1:]:
        commands.result([_docker(), "network", "rm", network["Id"]])


def _network_ids(name: str) -> list[str]:
    return _run(["network", "ls", "-q", "--filter", f"name=^{name}$"], "docker network ls").split()


def _age(network: dict[str, Any]) -> tuple[str, str, str]:
    """Oldest first, in the same order for every caller: `Created` (RFC 3339, whose
    nanoseconds Go prints without trailing zeros, so they are padded back), then the id."""
    created = str(network.get("Created", ""))
    match = re.match(r"([\d-]+T[\d:]+)(?:\.(\d+))?", created)
    base, fraction = (match.group(1), match.group(2) or "") if match else (created, "")
    return base, fraction.ljust(9, "0"), str(network.get("Id", ""))


def network_trouble(message: str) -> list[str]:
    """The shared networks compose refused an `up` for: never made, removed since, or met
    twice by that name. Compose words it differently across versions: "network X declared
    as external, but could not be found" (v2.x here), "network X not found", "multiple
    networks with name X"."""
    if not re.search(r"could not be found|not found|multiple networks", message):
        return []
    return [n for n in SHARED_NETWORKS if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", message)]


def shared_networks_missing() -> list[str]:
    """The shared networks not made yet on this engine (one listing)."""
    text = _run(["network", "ls", "--format", "{{.Name}}"], "docker network ls")
    return [n for n in SHARED_NETWORKS if n not in text.split()]


def compose_up(project: str, files: Sequence[Path], env_file: Path) -> None:
    args = ["compose", "--project-name", project, "--env-file", str(env_file)]
    for f in files:
        args += ["--file", str(f)]
    _run([*args, "up", "--detach", "--no-build", "--quiet-pull"], "docker compose up")


def _project_objects(kind: str, projects: set[str]) -> list[tuple[str, str, str]]:
    """(id or name, project, compose service) of every KIND (container, network, volume)
    of the projects: one listing, whatever their number (docker ANDs label filters, so
    several projects are listed by the label's key and picked out here)."""
    flt = f"{PROJECT_LABEL}={next(iter(projects))}" if len(projects) == 1 else PROJECT_LABEL
    name = "{{.ID}}" if kind == "container" else "{{.Name}}"
    fmt = name + '\t{{.Label "' + PROJECT_LABEL + '"}}\t{{.Label "com.docker.compose.service"}}'
    extra = ["-a"] if kind == "container" else []
    text = _run(
        [kind, "ls", *extra, "--filter", f"label={flt}", "--format", fmt], f"docker {kind} ls"
    )
    rows = [[*ln.split("\t"), "", ""][:3] for ln in text.splitlines() if ln.strip()]
    return [(r[0], r[1], r[2]) for r in rows if r[1] in projects]


def remove_projects(projects: Sequence[str], timeout: int = 5) -> None:
    """What `docker compose down --volumes` does, for many projects at once: containers
    stopped, then removed with their anonymous volumes, then the projects' networks and
    volumes.

    A handful of docker calls however many sessions, where a `compose down` each cost a
    compose process and a sequential stop per session: 16 sessions took 23 s. The docker CLI
    stops and removes the containers it is given side by side, agents and displays at once:
    compose stops an agent before its display, but an agent writes its result as soon as
    it gets SIGTERM, and waiting for all agents before any display doubled the wait (16
    sessions at load 50: 4.1 s, then 4.3 s). Sessions join shared networks, which stay;
    a network of a project's own is from a session made before they were shared."""
    wanted = set(projects)
    if not wanted:
        return
    containers = _project_objects("container", wanted)
    if containers:  # what fails to stop (gone already, ...) is forced out by the rm below
        commands.result([_docker(), "stop", "--time", str(timeout), *[c for c, _, _ in containers]])
    if containers:
        proc = commands.result(
            [_docker(), "rm", "--force", "--volumes", *[c for c, _, _ in containers]]
        )
        err = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        gone = all("No such container" in ln or "already in progress" in ln for ln in err)
        if proc.returncode != 0 and not gone:  # another `stop` removing them too is no error
            raise _explain("\n".join(err), proc.returncode, "removing containers")
    networks = [name for name, _, _ in _project_objects("network", wanted)]
    if networks and commands.result([_docker(), "network", "rm", *networks]).returncode != 0:
        # What is still there: a network that a container from outside the project was
        # attached to (a model server a user joined to an older session's network). Detach
        # the strangers, then remove it.
        for network in [n for n, _, _ in _project_objects("network", wanted)]:
            _detach_all(network)
            with contextlib.suppress(VncsessError):
                _run(["network", "rm", network], "removing a session network")
    volumes = [name for name, _, _ in _project_objects("volume", wanted)]
    if volumes:
        with contextlib.suppress(VncsessError):  # one still held by a dying container
            _run(["volume", "rm", "--force", *volumes], "removing volumes")


def _detach_all(network: str) -> None:
    with contextlib.suppress(VncsessError):
        attached = _run(
            ["network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}", network],
            "inspecting a session network",
        ).split()
        for container in attached:
            with contextlib.suppress(VncsessError):
                _run(["network", "disconnect", "--force", network, container], "disconnecting")


def compose_logs(
    project: str, services: Sequence[str], follow: bool, tail: int | None
) -> commands.Lines:
    """`docker compose logs` of a project, each line prefixed with its container's name;
    closeable, so a follower can be dropped."""
    args = [_docker(), "compose", "-p", project, "logs", "--no-color"]
    args += ["--follow"] if follow else []
    args += ["--tail", str(tail)] if tail is not None else []
    return commands.Lines([*args, *services], "docker compose logs", explain=_explain)


class DockerWatch:
    """Docker's own event stream for vncsess containers, as Happenings. Docker says
    `kill` (with the signal) when asked to stop a container, `die` when it ended, and
    `destroy` when it is gone; `create` when it is made."""

    _STOP_SIGNALS = frozenset({"15", "9", "SIGTERM", "SIGKILL", "TERM", "KILL"})

    def __init__(self, since: float, until: float | None) -> None:
        args = [_docker(), "events", "--format", "{{json .}}", "--filter", "type=container"]
        args += ["--filter", f"label={SESSION_LABEL}", "--since", f"{since:.6f}"]
        args += ["--until", f"{until:.6f}"] if until is not None else []
        self._lines = commands.Lines(args, "docker events", explain=_explain)

    def __iter__(self) -> Iterator[Happening]:
        for line in self._lines:
            happening = self.parse(line)
            if happening is not None:
                yield happening

    def close(self) -> None:
        self._lines.close()

    @classmethod
    def parse(cls, line: str) -> Happening | None:
        try:
            raw = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("Type", "container") != "container":
            return None
        attrs: dict[str, str] = (raw.get("Actor") or {}).get("Attributes") or {}
        action = str(raw.get("Action") or raw.get("status") or "")
        kind = {"create": "created", "die": "exited", "destroy": "removed"}.get(action)
        if action == "kill" and attrs.get("signal", "") in cls._STOP_SIGNALS:
            kind = "stopping"  # not SIGUSR1/2: those are `control` and `resume`
        sid = attrs.get(SESSION_LABEL, "")
        if kind is None or not sid:
            return None
        return Happening(
            session_id=sid,
            service=attrs.get("vncsess.service", ""),
            kind=kind,
            at=int(raw.get("timeNano") or 0) / 1e9 or float(raw.get("time") or 0),
            meta={k: attrs.get(LABEL_PREFIX + k, "") for k in META_KEYS},
            exit_code=int(attrs["exitCode"]) if kind == "exited" and "exitCode" in attrs else None,
        )


# ---------------------------------------------------------------- containers


def session_containers(session_id: str | None = None) -> list[dict[str, Any]]:
    """`docker inspect` JSON of every vncsess container (or one session's): two docker
    calls however many sessions there are (list ids, then inspect them all at once)."""
    label = f"{SESSION_LABEL}={session_id}" if session_id else SESSION_LABEL
    ls = ["container", "ls", "-aq", "--no-trunc", "--filter", f"label={label}"]
    ids = _run(ls, "docker ps").split()
    if not ids:
        return []
    # A container may vanish between the two calls (a `stop` in another shell or thread
    # removes it): docker inspect then still prints every one it found, and exits 1 with
    # "No such object" for the rest. Those are simply gone, not a failure.
    proc = commands.result([_docker(), "container", "inspect", *ids])
    err = proc.stderr.decode(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    vanished = bool(lines) and all("No such" in ln for ln in lines)
    if proc.returncode != 0 and not (vanished and proc.stdout.strip()):
        if vanished:
            return []
        raise _explain(err, proc.returncode, "docker inspect")
    data: list[dict[str, Any]] = json.loads(proc.stdout)
    return data


def exec_in(container: str, command: Sequence[str]) -> tuple[int, str]:
    """Run a command in a running container: (exit code, stdout+stderr)."""
    proc = commands.result([_docker(), "exec", container, *command])
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    if proc.returncode != 0 and ("No such container" in err or "is not running" in err):
        raise NotFound(f"container {container} is not running", hint="see `vncsess ls`")
    if proc.returncode != 0 and "Cannot connect to the Docker daemon" in err:
        raise _explain(err, proc.returncode, "docker exec")
    return proc.returncode, out + err


def kill(container: str, sig: str) -> None:
    _run(["kill", "--signal", sig, container], f"signalling {container}")


def run_oneoff(image: str, command: Sequence[str], mounts: dict[Path, str], user: str) -> str:
    """A throwaway container (`--rm`, no network) for file work when a session is gone."""
    args = ["run", "--rm", "--network", "none", "--user", user, "--entrypoint", command[0]]
    for host, inside in mounts.items():
        args += ["--volume", f"{host}:{inside}"]
    return _run([*args, image, *command[1:]], f"running {command[0]} in {image}")


# ---------------------------------------------------------------- the engine


def container_name(session_id: str, service: str) -> str:
    """The one place a session's container is named (compose's `<project>-<service>-1`)."""
    return f"{project_name(session_id)}-{service}-1"


def _labels(container: dict[str, Any]) -> dict[str, str]:
    return dict(container.get("Config", {}).get("Labels") or {})


def _observed(session_id: str, containers: list[dict[str, Any]], bind: str) -> Observed:
    labels = _labels(containers[0])
    meta = {k: labels.get(LABEL_PREFIX + k, "") for k in META_KEYS}
    services: dict[str, str] = {}
    health = reason = ""
    port: int | None = None
    for c in containers:
        svc = _labels(c).get("vncsess.service", "?")
        state = c.get("State", {})
        services[svc] = state.get("Status", "unknown")
        if state.get("OOMKilled"):
            reason = f"{svc} ran out of memory"
        if svc == "vnc":
            health = (state.get("Health") or {}).get("Status", "")
            bindings = (c.get("NetworkSettings", {}).get("Ports") or {}).get("6080/tcp") or []
            if bindings and state.get("Status") == "running":
                port = int(bindings[0]["HostPort"])
    host = "127.0.0.1" if bind in ("0.0.0.0", "", "::") else bind
    return Observed(
        session_id=session_id,
        meta=meta,
        services=services,
        health=health,
        endpoint=(host, port) if port is not None else None,
        novnc_port=port,
        reason=reason,
    )


def session_networks(spec: SessionSpec) -> tuple[str, str]:
    """The shared networks a session joins: its display's, and its agent's."""
    return DISPLAY_NETWORK, OFFLINE_NETWORK if spec.no_internet else AGENT_NETWORK


def compose_env(spec: SessionSpec) -> dict[str, str]:
    """The values compose interpolates into session.yml (written as session.env)."""
    display_network, agent_network = session_networks(spec)
    return {
        "SESSION_ID": spec.session_id,
        "SESSION_NAME": spec.name,
        "CREATED_AT": spec.created_at,
        "TTL": str(spec.ttl_s) if spec.ttl_s else "",
        "EXPIRES_AT": spec.expires_at,
        "IDLE_TIMEOUT": str(spec.idle_timeout_s) if spec.idle_timeout_s else "",
        "RESOLUTION": spec.resolution,
        "DATA_DIR": str(spec.data_dir),
        "PUBLIC_HOST": spec.public_host,
        "BIND": spec.bind,
        "NOVNC_PORT": str(spec.port) if spec.port else "",
        "DISPLAY_NETWORK": display_network,
        "AGENT_NETWORK": agent_network,
        "VNC_IMAGE": spec.vnc_image,
        "AGENT_IMAGE": spec.agent_image,
        "VNCSESS_UID": str(spec.uid),
        "VNCSESS_GID": str(spec.gid),
        "PIDS_LIMIT": str(spec.pids_limit),
        "VNC_CPUS": spec.vnc_cpus,
        "VNC_MEMORY": spec.vnc_memory,
        "AGENT_CPUS": spec.agent_cpus,
        "AGENT_MEMORY": spec.agent_memory,
        "LLM": spec.llm,
        "LLM_BASE_URL": spec.llm_base_url,
        "MAX_STEPS": str(spec.max_steps),
        "DEMO_STEP_DELAY": f"{spec.demo_step_delay:g}",
        "NO_INTERNET": "1" if spec.no_internet else "",
        "RECORD": "1" if spec.record else "",
        "RECORD_FPS": str(spec.record_fps),
        "OWNER": spec.owner,
        "POOL": "1" if spec.pool else "",
    }


class DockerEngine:
    """Sessions as compose projects on one Docker engine."""

    name = "docker"
    builds_images = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self) -> None:
        require_compose(self.settings.cache)

    def render(self, spec: SessionSpec, into: Path | None = None) -> tuple[list[Path], Path]:
        """Copy the compose template into the data dir (or INTO) and write session.env
        beside it: the session is then reproducible with plain `docker compose` from
        there."""
        from vncsess.datadir import DataDir, env_text
        from vncsess.images import asset_dir

        data = DataDir(into or spec.data_dir)
        shutil.copyfile(asset_dir("compose") / "session.yml", data.compose_file)
        data.env_file.write_text(env_text(compose_env(spec)))
        return [data.compose_file], data.env_file

    def plan(self, spec: SessionSpec) -> str:
        """The compose project as `docker compose config` resolves it (secrets are files
        named there, never their contents)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vncsess-plan-") as tmp:
            files, env_file = self.render(spec, Path(tmp))
            args = ["compose", "--project-name", project_name(spec.session_id)]
            args += ["--env-file", str(env_file)]
            for f in files:
                args += ["--file", str(f)]
            return _run([*args, "config"], "docker compose config")

    def start(self, spec: SessionSpec) -> None:
        files, env_file = self.render(spec)
        project = project_name(spec.session_id)
        for attempt in range(NETWORK_TRIES):
            try:
                compose_up(project, files, env_file)
                return
            except VncsessError as exc:
                # The shared networks are made by the first `up` that misses one, not looked
                # for on every `up` (a docker call each). First `up`s racing may also meet
                # two of a name for a moment: ensure_network keeps one. One retry was not
                # enough: five starts at once on an engine without the display network (a
                # `pool fill 5`) had one `up` meet another racer's second network right
                # after its own retry, in 3 runs of 6.
                # Compose names one missing network at a time: make both of the session's.
                if attempt + 1 == NETWORK_TRIES or not network_trouble(exc.message):
                    raise
                for name in session_networks(spec):
                    ensure_network(name, SHARED_NETWORKS[name])
                time.sleep(0.1 * attempt)

    def observe(self, session_id: str | None = None) -> list[Observed]:
        by_id: dict[str, list[dict[str, Any]]] = {}
        for c in session_containers(session_id):
            sid = _labels(c).get(SESSION_LABEL)
            if sid:
                by_id.setdefault(sid, []).append(c)
        return [_observed(sid, cs, self.settings.bind) for sid, cs in by_id.items()]

    def remove(self, session_ids: Sequence[str]) -> None:
        remove_projects([project_name(sid) for sid in session_ids])

    def logs(
        self, session_id: str, services: Sequence[str], follow: bool, tail: int | None
    ) -> Iterator[str]:
        return compose_logs(project_name(session_id), services, follow, tail)

    def watch(self, since: float, until: float | None = None) -> DockerWatch:
        return DockerWatch(since, until)

    def exec(self, session_id: str, service: str, argv: Sequence[str]) -> tuple[int, str]:
        return exec_in(container_name(session_id, service), argv)

    def signal(self, session_id: str, service: str, sig: str) -> None:
        kill(container_name(session_id, service), sig)

    def push_vnc_passwd(self, session_id: str, data_dir: Path, passwdfile: bytes) -> None:
        """Nothing to push: the passwdfile is bind-mounted from the data dir, where the core
        rewrote it in place (datadir.py)."""

    def run_job(self, image: str, argv: Sequence[str], mounts: dict[Path, str]) -> str:
        from vncsess.datadir import container_ids

        uid, gid = container_ids()
        return run_oneoff(image, argv, mounts, f"{uid}:{gid}")


# ---------------------------------------------------------------- what `doctor` reads


def _whales(doing: str, call: Callable[[Any], Any]) -> Any:
    """One python-on-whales call, its failures mapped as every docker failure is."""
    from python_on_whales import DockerClient
    from python_on_whales.client_config import ClientNotFoundError
    from python_on_whales.exceptions import DockerException

    try:
        return call(DockerClient(client_call=[_docker()]))
    except DockerException as exc:
        raise _explain((exc.stderr or "") + (exc.stdout or ""), exc.return_code, doing) from None
    except ClientNotFoundError:
        raise _not_installed() from None


def engine_info() -> dict[str, Any]:
    """What `docker info` says of the engine: server version, system, data root, driver."""
    info = _whales("docker info", lambda d: d.system.info())
    return {
        "ServerVersion": info.server_version or "",
        "OperatingSystem": info.operating_system or "",
        "DockerRootDir": str(info.docker_root_dir or ""),
        "Driver": info.driver or "",
    }


def network_subnets() -> list[str]:
    """The subnets of every network on the engine (to count the address pools left)."""
    networks = _whales("docker network ls", lambda d: d.network.list())
    return [str(c["Subnet"]) for n in networks for c in n.ipam.config or [] if c.get("Subnet")]


def probe_published_port(image: str, bind: str, connect: str, timeout: float = 15.0) -> str:
    """Publish a port the way a session does (on `bind`, a port Docker picks), and reach it
    from here at `connect`. Returns "" when a listener in the container answered, else what
    went wrong. The throwaway container is removed whatever happens."""
    name = f"vncsess-doctor-{os.getpid()}"
    listener = (
        "import socket;s=socket.socket();s.bind(('0.0.0.0',6080));s.listen(1);"
        "c,_=s.accept();c.sendall(b'vncsess-doctor');c.close()"
    )
    try:
        _run(
            ["run", "-d", "--rm", "--name", name, "--label", "vncsess.doctor=1",
             "--publish", f"{bind}::6080", "--entrypoint", "python3", image, "-c", listener],
            "starting a port probe",
        )  # fmt: skip
        mapped = _run(["port", name, "6080/tcp"], "docker port").split()
        if not mapped:
            return "Docker published no port"
        port = int(mapped[0].rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((connect, port), timeout=2) as s:
                    if s.recv(64) == b"vncsess-doctor":
                        return ""
                    last = f"{connect}:{port} answered, but not with the probe's reply"
            except OSError as exc:
                last = f"{connect}:{port}: {exc.strerror or exc}"
            time.sleep(0.2)
        return last or "no answer"
    except VncsessError as exc:
        return exc.message
    finally:
        commands.result([_docker(), "rm", "-f", name])
