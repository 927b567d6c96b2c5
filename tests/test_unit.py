"""Everything that needs no Docker: parsing, models, the data dir, the CLI's input checks."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vncsess import config, images, recordings, sessions
from vncsess.cli import app
from vncsess.datadir import DataDir, new_secrets, xauthority
from vncsess.errors import BadInput, ExitCode, NotFound, VncsessError
from vncsess.models import Session, novnc_url, redact_url

runner = CliRunner()


@pytest.mark.parametrize(
    ("value", "expected"), [("1280x720", (1280, 720)), (" 1920X1080 ", (1920, 1080))]
)
def test_parse_resolution_accepts(value: str, expected: tuple[int, int]) -> None:
    assert config.parse_resolution(value) == expected


@pytest.mark.parametrize("value", ["1280", "1280x", "x720", "12x12", "99999x720", "1280*720"])
def test_parse_resolution_rejects_with_hint(value: str) -> None:
    with pytest.raises(BadInput) as exc:
        config.parse_resolution(value)
    assert exc.value.hint
    assert exc.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("never", 0),
     ("7d", 604800), ("1d12h", 129600)],
)  # fmt: skip
def test_parse_duration(value: str, seconds: int) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "h", "d", "1w", "-5", "30 m", "m30", "1h2d"])
def test_parse_duration_rejects(value: str) -> None:
    with pytest.raises(BadInput):
        config.parse_duration(value)


def test_settings_layering(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PUBLIC_HOST=from-dotenv\nVNCSESS_BIND=0.0.0.0\n")
    monkeypatch.delenv("PUBLIC_HOST", raising=False)
    monkeypatch.delenv("VNCSESS_PUBLIC_HOST", raising=False)
    monkeypatch.delenv("VNCSESS_BIND", raising=False)
    assert config.load().public_host == "from-dotenv"
    assert config.load().bind == "0.0.0.0"
    monkeypatch.setenv("PUBLIC_HOST", "from-env")
    assert config.load().public_host == "from-env"
    assert config.load(public_host="from-flag").public_host == "from-flag"


def test_url_host_defaults_to_bind_address(tmp_path: Path) -> None:
    s = config.Settings(home=tmp_path, cache=tmp_path)
    assert s.url_host() == "127.0.0.1"
    assert config.Settings(home=tmp_path, cache=tmp_path, bind="0.0.0.0").url_host() == "localhost"
    assert config.Settings(home=tmp_path, cache=tmp_path, public_host="h.io").url_host() == "h.io"


def test_agent_env_file_in_cwd_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VNCSESS_ENV_FILE", raising=False)
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / ".env").write_text("OPENAI_API_KEY=sk-x\n")
    assert config.load().env_file == tmp_path / "agent" / ".env"


def test_novnc_url_is_iframe_ready_and_redactable() -> None:
    url = novnc_url("h", 6081, "s3cr3t!!")
    assert url.startswith("http://h:6081/vnc.html?autoconnect=true&resize=scale")
    assert "view_only=true" in url and "password=s3cr3t!!" in url
    assert "s3cr3t" not in redact_url(url)
    assert "view_only" not in novnc_url("h", 1, "p", view_only=False)


def test_session_hides_secrets_unless_asked(tmp_path: Path) -> None:
    s = Session(
        id="abcd1234", name="", status="running", created_at=datetime.now(UTC),
        resolution="800x600", novnc_port=6081, url_host="127.0.0.1", data_dir=tmp_path,
        llm="demo", view_secret="VIEWpass", control_secret="CTRLpass",
    )  # fmt: skip
    public = str(s.to_dict())
    assert "VIEWpass" not in public and "CTRLpass" not in public
    assert "VIEWpass" in s.to_dict(show_secrets=True)["novnc_url"]
    assert "CTRLpass" in s.control_url


def test_xauthority_file_format() -> None:
    cookie = bytes(range(16))
    data = xauthority(cookie)
    family, alen = struct.unpack(">HH", data[:4])
    assert family == 0xFFFF and alen == 0
    assert data.endswith(struct.pack(">H", 16) + cookie)
    assert b"MIT-MAGIC-COOKIE-1" in data and b"\x00\x0299" in data


def test_data_dir_secrets_are_private(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "s1")
    d.create(new_secrets("task ü 'x'", "OPENAI_API_KEY='k'\n"))
    assert oct(d.path.stat().st_mode & 0o777) == "0o700"
    assert oct(d.secrets.stat().st_mode & 0o777) == "0o700"
    for f in d.secrets.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f
    view, control = d.vnc_secrets()
    assert len(view) == len(control) == 8 and view != control
    assert (d.path / "task.txt").read_text(encoding="utf-8") == "task ü 'x'"
    inode = (d.secrets / "vnc_passwd").stat().st_ino
    pushed = d.rotate_control_secret()
    new = d.vnc_secrets()[1]
    assert d.vnc_secrets() == (view, new) and new != control
    assert pushed == (d.secrets / "vnc_passwd").read_bytes()
    assert (d.secrets / "vnc_passwd").stat().st_ino == inode, "rewritten in place"
    assert (d.secrets / "vnc_passwd").stat().st_mode & 0o777 == 0o400
    d.forget_secrets()
    assert not d.secrets.exists() and d.vnc_secrets() == ("", "")


def test_resolve_llm() -> None:
    opts = sessions.UpOptions()
    assert sessions.resolve_llm(opts, {}) == "demo"
    assert sessions.resolve_llm(opts, {"OPENAI_API_KEY": "k"}).startswith("openai:")
    assert sessions.resolve_llm(sessions.UpOptions(llm="ollama:qwen"), {}) == "ollama:qwen"
    for bad in ("gpt-4", "foo:bar", "openai:"):
        with pytest.raises(BadInput):
            sessions.resolve_llm(sessions.UpOptions(llm=bad), {})


@pytest.mark.parametrize(
    "opts",
    [
        sessions.UpOptions(port=70000),
        sessions.UpOptions(name="bad name!"),
        sessions.UpOptions(memory="lots"),
        sessions.UpOptions(cpus="-1"),
        sessions.UpOptions(task="x" * (300 * 1024)),
        sessions.UpOptions(max_steps=0),
    ],
)
def test_validate_rejects(opts: sessions.UpOptions) -> None:
    with pytest.raises(BadInput):
        sessions.validate(opts)


def test_env_file_values_are_quoted_for_compose(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("OPENAI_API_KEY=sk-'quote\nEMPTY=\n")
    text, values = sessions.read_env_file(env, explicit=True)
    assert values == {"OPENAI_API_KEY": "sk-'quote"}
    assert text == "OPENAI_API_KEY='sk-\\'quote'\n"
    with pytest.raises(BadInput):
        sessions.read_env_file(tmp_path / "missing", explicit=True)
    assert sessions.read_env_file(tmp_path / "missing", explicit=False) == ("", {})


def test_context_hash_ignores_keys_and_wheels(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    before = images.context_hash(tmp_path)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=k\n")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "a.whl").write_text("w")
    assert images.context_hash(tmp_path) == before
    (tmp_path / "Dockerfile").write_text("FROM y\n")
    assert images.context_hash(tmp_path) != before


def test_assets_are_found() -> None:
    assert (images.asset_dir("compose") / "session.yml").is_file()
    assert (images.asset_dir("compose") / "vnc" / "Dockerfile").is_file()
    assert (images.asset_dir("agent") / "Dockerfile").is_file()


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def test_mp4_duration_reads_mvhd(tmp_path: Path) -> None:
    mvhd = _box(b"mvhd", b"\0" * 4 + struct.pack(">IIII", 0, 0, 1000, 12_500) + b"\0" * 80)
    f = tmp_path / "a.mp4"
    f.write_bytes(_box(b"ftyp", b"isom") + _box(b"moov", mvhd) + _box(b"mdat", b"x"))
    assert recordings.mp4_duration(f) == 12.5
    f.write_bytes(_box(b"ftyp", b"isom"))
    assert recordings.mp4_duration(f) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--resolution", "big"], "malformed resolution"),
        (["up", "--llm", "nope"], "unknown model"),
        (["up", "--port", "0"], "out of range"),
        (["up", "--task", "a", "--task-file", "f"], "not both"),
        (["up", "--timeout", "3"], "--timeout needs --wait"),
        (["up", "--env-file", "/does/not/exist"], "env file not found"),
        (["logs", "x", "--service", "db"], "unknown service"),
        (["record", "start", "x", "--fps", "0"], "--fps"),
        (["wait", "x", "--timeout", "-1"], "--timeout must be positive"),
        (["stop", "a", "--all"], "not both"),
    ],
)
def test_cli_bad_input_is_one_line_with_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VNCSESS_HOME", str(tmp_path))
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, lines  # the error, a hint
    assert len(lines) == 1 or lines[1].startswith("hint: "), lines


def test_cli_version_and_help() -> None:
    assert runner.invoke(app, ["--version"]).output.startswith("vncsess ")
    out = runner.invoke(app, ["up", "--help"]).output
    for flag in ("--task", "--llm", "--port", "--resolution", "--bind", "--record", "--json"):
        assert flag in out


def test_task_file_must_be_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNCSESS_HOME", str(tmp_path))
    bad = tmp_path / "task.bin"
    bad.write_bytes(b"\xff\xfe\x00")
    result = runner.invoke(app, ["up", "--task-file", str(bad)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not UTF-8" in result.output


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        (
            "Cannot connect to the Docker daemon at unix:///x.sock.",
            "DockerUnavailable",
            "not running",
        ),
        (
            "permission denied while trying to connect to docker.sock",
            "DockerUnavailable",
            "permission",
        ),
        ("Bind for 127.0.0.1:6080 failed: port is already allocated", "Conflict", "in use"),
        ("Error: something odd\n", "VncsessError", "something odd"),
    ],
)
def test_docker_failures_become_one_line_errors(stderr: str, kind: str, words: str) -> None:
    from vncsess.engines import docker

    err = docker._explain(stderr, 1, "doing x")
    assert type(err).__name__ == kind
    assert words in err.message
    assert "\n" not in err.message


def _session(sid: str, name: str = "", status: str = "running") -> Session:
    return Session(
        id=sid, name=name, status=status, created_at=datetime.now(UTC), resolution="800x600",
        novnc_port=None, url_host="127.0.0.1", data_dir=Path("/nonexistent"), llm="demo",
    )  # fmt: skip


def test_a_reference_names_one_session_or_is_refused() -> None:
    every = [
        _session("ab12cd34", "job"),
        _session("ab99ee00", "job", status="exited"),  # an ended one gave the name up
        _session("ff001122", "other", status="expired"),
    ]
    assert sessions._match("job", every).id == "ab12cd34", "the live session owns the name"
    assert sessions._match("ff", every).id == "ff001122"
    assert sessions._match("other", every).id == "ff001122"
    with pytest.raises(BadInput) as exc:
        sessions._match("ab", every)
    assert "ab12cd34" in exc.value.message and "ab99ee00" in exc.value.message
    with pytest.raises(BadInput):  # two ended sessions of the same name
        sessions._match("job", [_session("11111111", "job", "exited"), every[1]])
    with pytest.raises(NotFound):
        sessions._match("zz", every)


def test_room_is_checked_by_many_creates_at_once(tmp_path: Path) -> None:
    """`serve` runs many `up`s in one process: each check writes a probe of its own (one
    probe name per process made one thread's unlink break another's check)."""
    from concurrent.futures import ThreadPoolExecutor

    from vncsess.datadir import check_room

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: check_room(tmp_path / "sessions"), range(400)))
    assert list((tmp_path / "sessions").iterdir()) == []


def test_a_container_removed_while_listing_is_gone_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ls` (or a stop's lookup) while another stop removes containers: docker inspect
    prints those it found and exits 1 for the vanished one; that is no failure."""
    import subprocess

    from vncsess import commands
    from vncsess.engines import docker

    def fake(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        if argv[1:3] == ["container", "ls"]:
            return subprocess.CompletedProcess(argv, 0, b"aaa\nbbb\n", b"")
        found = b'[{"Id": "aaa", "Config": {"Labels": {"vncsess.session": "s1"}}}]'
        return subprocess.CompletedProcess(argv, 1, found, b"Error: No such object: bbb\n")

    monkeypatch.setattr(commands, "result", fake)
    assert [c["Id"] for c in docker.session_containers()] == ["aaa"]

    def broken(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        if argv[1:3] == ["container", "ls"]:
            return subprocess.CompletedProcess(argv, 0, b"aaa\n", b"")
        return subprocess.CompletedProcess(argv, 1, b"", b"Cannot connect to the Docker daemon")

    monkeypatch.setattr(commands, "result", broken)
    with pytest.raises(VncsessError, match="Docker is not running"):
        docker.session_containers()


def _fake_docker(bin_dir: Path, version: str = "2.40.3") -> Path:
    """A `docker` on PATH that answers `compose version --short` and counts its calls."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\necho x >> "{bin_dir}/calls"\necho {version}\n')
    docker.chmod(0o755)
    return docker


def _calls(bin_dir: Path) -> int:
    calls = bin_dir / "calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_compose_version_is_asked_once_until_docker_or_its_plugin_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from vncsess.engines import docker

    bin_dir, cache, config_dir = tmp_path / "bin", tmp_path / "cache", tmp_path / "dockercfg"
    fake = _fake_docker(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))

    docker.require_compose(cache)
    docker.require_compose(cache)
    assert _calls(bin_dir) == 1, "the second `up` takes the version from the cache"

    # An upgraded docker binary: asked again.
    st = fake.stat()
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    docker.require_compose(cache)
    assert _calls(bin_dir) == 2
    docker.require_compose(cache)
    assert _calls(bin_dir) == 2

    # A compose plugin installed (or replaced) for this user: asked again.
    (config_dir / "cli-plugins").mkdir(parents=True)
    (config_dir / "cli-plugins" / "docker-compose").write_text("new")
    docker.require_compose(cache)
    assert _calls(bin_dir) == 3

    # Without a cache (doctor), always asked.
    docker.require_compose()
    assert _calls(bin_dir) == 4


def test_a_compose_that_went_missing_is_not_hidden_by_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from vncsess.engines import docker
    from vncsess.errors import DockerUnavailable

    bin_dir, cache = tmp_path / "bin", tmp_path / "cache"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    fake = _fake_docker(bin_dir, version="1.29.2")  # compose v1 only: refused, not cached
    with pytest.raises(DockerUnavailable):
        docker.require_compose(cache)
    assert not (cache / "compose-version.json").exists()
    fake.unlink()
    _fake_docker(bin_dir)  # a new binary: a new key
    docker.require_compose(cache)
    assert (cache / "compose-version.json").exists()


def test_many_sessions_are_removed_with_one_call_per_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`stop` of N sessions: one stop of every container, one rm, one network rm, one
    volume rm; not a `compose down` per session (16 sessions took 23 s that way)."""
    import subprocess

    from vncsess import commands
    from vncsess.engines import docker

    projects = [f"vncsess-s{i}" for i in range(5)]
    listing = {
        "container": "".join(
            f"c{i}{svc}\tvncsess-s{i}\t{svc}\n" for i in range(5) for svc in ("vnc", "agent")
        )
        + "other\tsomeone-else\tweb\n",
        "network": "".join(f"vncsess-s{i}_agent\tvncsess-s{i}\t\n" for i in range(5)),
        "volume": "".join(f"vncsess-s{i}_x11\tvncsess-s{i}\t\n" for i in range(5)),
    }
    seen: list[list[str]] = []

    def result(argv: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        args = list(argv[1:])
        seen.append(args)
        out = listing[args[0]] if args[1:2] == ["ls"] else ""
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")

    monkeypatch.setattr(commands, "result", result)
    monkeypatch.setattr(docker, "_docker", lambda: "docker")
    engine = docker.DockerEngine(config.load())
    engine.remove([p.removeprefix("vncsess-") for p in projects])

    acts = [a for a in seen if a[1:2] != ["ls"]]
    ours = sorted(f"c{i}{svc}" for i in range(5) for svc in ("vnc", "agent"))
    assert acts[0][:3] == ["stop", "--time", "5"] and sorted(acts[0][3:]) == ours
    assert acts[1][:3] == ["rm", "--force", "--volumes"] and sorted(acts[1][3:]) == ours
    assert acts[2] == ["network", "rm", *(f"vncsess-s{i}_agent" for i in range(5))]
    assert acts[3] == ["volume", "rm", "--force", *(f"vncsess-s{i}_x11" for i in range(5))]
    assert len(acts) == 4, "never another project's container, and nothing per session"


def test_the_waiting_page_stands_still() -> None:
    """An idle session shows this page for as long as it lives: anything that moves on it
    is repainted by Chromium in software and shipped by x11vnc to every viewer, forever
    (it was 8 % of a core per idle session). Nothing on it may animate or tick."""
    import re

    page = (images.asset_dir("agent") / "www" / "waiting.html").read_text()
    page = re.sub(r"/\*.*?\*/|<!--.*?-->", "", page, flags=re.DOTALL)  # what comments say
    moving = re.findall(
        r"animation|@keyframes|transition|setInterval|setTimeout|requestAnimationFrame"
        r"|<marquee|<video|\.gif\b|<canvas",
        page,
        re.IGNORECASE,
    )
    assert moving == []


DISPLAY = "vncsess-display"


@pytest.mark.parametrize(
    ("message", "trouble"),
    [
        ("network vncsess-display declared as external, but could not be found", [DISPLAY]),
        ("network vncsess-agents not found", ["vncsess-agents"]),
        ("network vncsess-agents-offline not found", ["vncsess-agents-offline"]),
        ("multiple networks with name vncsess-display", [DISPLAY]),
        ("network vncsess-other declared as external, but could not be found", []),
        ("vncsess-display: port is already allocated", []),
    ],
)
def test_the_network_retry_knows_compose_s_words(message: str, trouble: list[str]) -> None:
    from vncsess.engines.docker import network_trouble

    assert network_trouble(message) == trouble
