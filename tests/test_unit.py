"""Everything that needs no Docker: parsing, models, the data dir, the CLI's input checks."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vncsess import config, images, recordings, sessions
from vncsess.cli import app
from vncsess.datadir import DataDir, xauthority
from vncsess.errors import BadInput, ExitCode
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
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("never", 0)],
)
def test_parse_duration(value: str, seconds: int) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "h", "1d", "-5", "30 m", "m30"])
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
    d.create("task ü 'x'", "OPENAI_API_KEY='k'\n", view_secret="v" * 8, control_secret="c" * 8)
    assert oct(d.path.stat().st_mode & 0o777) == "0o700"
    assert oct(d.secrets.stat().st_mode & 0o777) == "0o700"
    for f in d.secrets.iterdir():
        assert f.stat().st_mode & 0o077 == 0, f
    assert d.vnc_secrets() == ("v" * 8, "c" * 8)
    assert (d.path / "task.txt").read_text(encoding="utf-8") == "task ü 'x'"
    inode = (d.secrets / "vnc_passwd").stat().st_ino
    new = d.rotate_control_secret()
    assert d.vnc_secrets() == ("v" * 8, new) and new != "c" * 8
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
    from python_on_whales.exceptions import DockerException

    from vncsess import docker

    err = docker._explain(stderr, 1, "doing x")
    assert type(err).__name__ == kind
    # The same through python-on-whales, which compose commands go through.
    err = docker._whales_error(DockerException(["docker", "x"], 1, b"", stderr.encode()), "x")
    assert type(err).__name__ == kind
    assert words in err.message
    assert "\n" not in err.message
