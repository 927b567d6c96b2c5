"""File transfer (files.py): uploads into a session, its browser's downloads out.

Unit tests (no Docker) for the names, links, devices, limits and the scan hook; then
real-engine tests: the demo agent fills a real `<input type=file>` with an upload and
downloads a receipt that `cp` fetches after `stop`; the EICAR upload is refused and leaves
nothing; the API with and without its token; a session with file transfer off.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RUN_OWNER, Cli
from tests.test_dashboard import Dash, dash, server  # noqa: F401 (fixtures used by name)
from vncsess import files
from vncsess.config import Settings, parse_size
from vncsess.datadir import DataDir, new_secrets
from vncsess.errors import BadInput, Conflict, ExitCode, NotFound, VncsessError

SCANNER = f"{sys.executable} {ROOT / 'tests' / 'fixtures' / 'scan_eicar.py'}"
# The EICAR test string (anti-virus test file), in two halves so this file is not one.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path / "home", cache=tmp_path / "cache", **kw)  # type: ignore[arg-type]


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "home" / "sessions" / "abcd1234")
    d.create(new_secrets("", ""))
    return d


def _staging_left(settings: Settings) -> list[Path]:
    root = settings.home / "staging"
    return list(root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------ names and places


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../x", "a/b", ".hidden", "-rf", "bell\x07", "esc\x1b[31m", " x", "x ",
     "\x85next", "n" * 201],
)  # fmt: skip
def test_odd_names_are_refused(name: str) -> None:
    with pytest.raises(BadInput) as caught:
        files.check_name(name)
    assert caught.value.hint and caught.value.exit_code == ExitCode.BAD_INPUT
    assert "\x1b" not in caught.value.message and "\x07" not in caught.value.message


@pytest.mark.parametrize("name", ["report.pdf", "notes 2.txt", "résumé.docx", "a-b_c.tar.gz"])
def test_plain_names_pass(name: str) -> None:
    assert files.check_name(name) == name


def test_remote_places_parse() -> None:
    assert files.parse_remote("./a:b") is None
    assert files.parse_remote("/tmp/x") is None
    assert files.parse_remote("file.txt") is None
    assert files.parse_remote("abc:") == files.Remote("abc", "uploads", "")
    assert files.parse_remote("abc:uploads/") == files.Remote("abc", "uploads", "")
    assert files.parse_remote("abc:downloads/r.txt") == files.Remote("abc", "downloads", "r.txt")
    for bad in ("abc:../../etc/passwd", "abc:downloads/../secrets/xauth", "abc:secrets/xauth",
                "abc:downloads/.x", "abc:uploads/a/b"):  # fmt: skip
        with pytest.raises(BadInput):
            files.parse_remote(bad)


def test_sizes_parse() -> None:
    assert parse_size("X", "100m") == 100 * 1024**2
    assert parse_size("X", "2g") == 2 * 1024**3
    assert parse_size("X", "4096") == 4096
    for bad in ("", "0", "-1", "ten", "1t"):
        with pytest.raises(BadInput):
            parse_size("X", bad)


# ------------------------------------------------------------------ sending


def test_links_folders_and_devices_are_not_sent(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, words in ((link, "symbolic link"), (tmp_path, "folder"), (fifo, "not a regular"),
                        (Path("/dev/null"), "not a regular")):  # fmt: skip
        with pytest.raises(BadInput, match=words):
            files.open_local(path)
    with pytest.raises(NotFound):
        files.open_local(tmp_path / "missing.txt")


def test_a_clean_file_is_placed_whole_and_readable(tmp_path: Path, data: DataDir) -> None:
    settings = _settings(tmp_path, scan_command=SCANNER)
    with files.prepare(settings, [("notes.txt", io.BytesIO(b"hello\n"))]) as prepared:
        placed = prepared.place(data)
    assert [(e.area, e.name, e.size_bytes) for e in placed] == [("uploads", "notes.txt", 6)]
    assert (data.uploads / "notes.txt").read_bytes() == b"hello\n"
    assert (data.uploads / "notes.txt").stat().st_mode & 0o777 == 0o444
    assert _staging_left(settings) == []


def test_the_scan_refuses_eicar_and_nothing_of_it_is_kept(tmp_path: Path, data: DataDir) -> None:
    settings = _settings(tmp_path, scan_command=SCANNER)
    clean = ("clean.txt", io.BytesIO(b"fine"))
    with pytest.raises(files.Refused, match=r"the scan refused eicar\.com .*Eicar-Test-Signature"):
        files.prepare(settings, [clean, ("eicar.com", io.BytesIO(EICAR))])
    # All or nothing: the clean one of the batch is not kept either, nor any staged copy.
    assert _staging_left(settings) == []
    assert list(data.uploads.iterdir()) == []


def test_a_scanner_that_cannot_run_refuses(tmp_path: Path) -> None:
    settings = _settings(tmp_path, scan_command="/nonexistent/scanner --flag")
    with pytest.raises(files.Refused, match="was not scanned"):
        files.prepare(settings, [("a.txt", io.BytesIO(b"x"))])
    with pytest.raises(BadInput, match="malformed scan command"):
        files.prepare(_settings(tmp_path, scan_command="scan 'open"), [("a", io.BytesIO(b""))])
    assert _staging_left(settings) == []


def test_limits_on_size_and_count(tmp_path: Path) -> None:
    settings = _settings(tmp_path, upload_max_bytes=10, upload_max_files=2)
    with pytest.raises(files.TooLarge, match="larger than the upload limit"):
        files.prepare(settings, [("big.bin", io.BytesIO(b"x" * 11))])
    with pytest.raises(Conflict, match="at most 2 uploads"):
        files.prepare(settings, [("c.txt", io.BytesIO(b"x"))], existing=["a.txt", "b.txt"])
    # Replacing a file of the same name does not count twice.
    files.prepare(settings, [("a.txt", io.BytesIO(b"x"))], existing=["a.txt", "b.txt"]).discard()
    with pytest.raises(BadInput, match="same name"):
        files.prepare(settings, [("a", io.BytesIO(b"")), ("a", io.BytesIO(b""))])
    assert _staging_left(settings) == []


# ------------------------------------------------------------------ what the agent wrote


def test_links_the_agent_planted_are_neither_listed_nor_followed(data: DataDir) -> None:
    secret = data.path / "secrets" / "xauth"
    (data.downloads / "evil").symlink_to(secret)
    (data.downloads / "report.txt").write_text("ok")
    (data.downloads / "half.pdf.crdownload").write_text("...")
    (data.downloads / "sub").mkdir()
    assert [e.name for e in files.entries(data)] == ["report.txt"]
    with pytest.raises(BadInput, match="is a link"):
        files.open_in(data, "downloads", "evil")
    entry, fh = files.open_in(data, "downloads", "report.txt")
    with fh:
        assert fh.read() == b"ok" and entry.size_bytes == 2
    # The whole folder swapped for a link to somewhere else: refused, not followed.
    (data.downloads / "report.txt").unlink()
    (data.downloads / "evil").unlink()
    (data.downloads / "half.pdf.crdownload").unlink()
    (data.downloads / "sub").rmdir()
    data.downloads.rmdir()
    data.downloads.symlink_to(data.path / "secrets")
    with pytest.raises(VncsessError, match="not a plain folder"):
        files.open_in(data, "downloads", "xauth")
    with pytest.raises(VncsessError, match="not a plain folder"):
        files.entries(data)


def test_transfer_off_is_remembered(data: DataDir) -> None:
    assert files.enabled(data)  # a session from before file transfer
    files.set_enabled(data, False)
    with pytest.raises(files.TransferOff):
        files.require_enabled(data)


# ------------------------------------------------------------------ the real engine

UPLOAD_TASK = "Open http://127.0.0.1:8765/upload.html and upload the file you were given."


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.mark.docker
def test_the_agent_uploads_a_file_and_its_download_comes_back_after_stop(
    cli: Cli, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("Quarterly numbers: 42 apples\nsecond line\n")
    proc = cli.run(
        "up", "--llm", "demo", "--task", UPLOAD_TASK, "--upload", str(notes), "--wait", "--json",
        "--timeout", "240", VNCSESS_DEMO_STEP_DELAY="0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = json.loads(proc.stdout)
    sid, result = out["session_id"], out["result"]
    # The page read the file it was given: its name, size and first line, from the browser.
    size = notes.stat().st_size
    said = f'The page received notes.txt ({size} bytes) beginning "Quarterly numbers: 42 apples".'
    assert said in result["final_text"], result
    assert "receipt.txt" in result["final_text"]

    agent = f"vncsess-{sid}-agent-1"
    # Where a person in control finds the uploads in Chromium's file dialog; read-only there.
    assert _docker("exec", agent, "cat", "/tmp/home/Uploads/notes.txt").stdout.startswith("Quart")
    bookmarks = _docker("exec", agent, "cat", "/tmp/home/.config/gtk-3.0/bookmarks").stdout
    assert "file:///data/uploads Uploads" in bookmarks
    touched = _docker("exec", agent, "touch", "/data/uploads/new")
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr
    assert _docker("exec", agent, "id", "-u").stdout.strip() != "0"

    listed = cli.json("files", sid)
    assert {(f["area"], f["name"]) for f in listed} == {
        ("uploads", "notes.txt"),
        ("downloads", "receipt.txt"),
    }
    assert cli.run("stop", sid).returncode == 0
    got = tmp_path / "got"
    got.mkdir()
    fetched = cli.run("cp", f"{sid}:downloads/receipt.txt", str(got))
    assert fetched.returncode == 0, fetched.stderr
    receipt = (got / "receipt.txt").read_text()
    assert receipt.startswith("vncsess receipt\n") and said in receipt
    assert cli.json("files", sid)  # the listing too, after stop


@pytest.mark.docker
def test_eicar_is_refused_and_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    eicar = tmp_path / "eicar.com"
    eicar.write_bytes(EICAR)
    clean = tmp_path / "clean.txt"
    clean.write_text("nothing to see")
    env = {"VNCSESS_SCAN_COMMAND": SCANNER}

    # At start: nothing starts, no data dir is made.
    refused = cli.run_with(["up", "--json", "--upload", str(clean), "--upload", str(eicar)], env)
    assert refused.returncode == ExitCode.BAD_INPUT, refused.stderr
    assert "the scan refused eicar.com" in refused.stderr
    assert [s for s in cli.json("ls") if s["owner"] == RUN_OWNER] == []
    assert not (cli.home / "sessions").exists() or not any((cli.home / "sessions").iterdir())

    sid = cli.up(**env)["session_id"]
    data = cli.home / "sessions" / sid / "agent" / "uploads"
    agent = f"vncsess-{sid}-agent-1"
    refused = cli.run_with(["cp", str(eicar), f"{sid}:"], env)
    assert refused.returncode == ExitCode.BAD_INPUT
    assert "Eicar-Test-Signature FOUND" in refused.stderr and "Traceback" not in refused.stderr
    assert list(data.iterdir()) == []
    assert _docker("exec", agent, "ls", "-A", "/data/uploads").stdout == ""
    assert not list((cli.home / "staging").rglob("*"))

    # A clean file goes in while the session runs, and the agent's container sees it.
    sent = cli.run_with(["cp", "--json", str(clean), f"{sid}:"], env)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)[0]["path"] == "uploads/clean.txt"
    assert _docker("exec", agent, "cat", "/data/uploads/clean.txt").stdout == "nothing to see"

    # Traversal, links and devices: one line, a hint, exit 2, nothing written.
    link = tmp_path / "link.txt"
    link.symlink_to(clean)
    for args in (
        [str(clean), f"{sid}:uploads/../x"],
        [str(clean), f"{sid}:uploads/.bashrc"],
        [str(link), f"{sid}:"],
        ["/dev/zero", f"{sid}:"],
        [f"{sid}:downloads/../../secrets/xauth", str(tmp_path)],
    ):
        bad = cli.run("cp", *args)
        assert bad.returncode == ExitCode.BAD_INPUT, (args, bad.stderr)
        assert bad.stderr.count("\n") == 2 and "hint:" in bad.stderr, bad.stderr
    # A link the agent planted in its downloads is not followed out of the data dir.
    planted = _docker("exec", agent, "ln", "-s", "/etc/passwd", "/data/downloads/passwd")
    assert planted.returncode == 0, planted.stderr
    bad = cli.run("cp", f"{sid}:downloads/passwd", str(tmp_path))
    assert bad.returncode == ExitCode.BAD_INPUT and "is a link" in bad.stderr
    assert not (tmp_path / "passwd").exists()
    assert [f["name"] for f in cli.json("files", sid)] == ["clean.txt"]


# ------------------------------------------------------------------ the API


@pytest.fixture
def api(cli: Cli) -> Iterator[tuple[str, dict[str, str]]]:
    from tests.test_api import AUTH, start_server

    srv = start_server(cli, VNCSESS_SCAN_COMMAND=SCANNER)
    try:
        yield srv.base, AUTH
    finally:
        srv.stop()


@pytest.mark.docker
def test_api_upload_list_download_behind_the_token(
    cli: Cli, api: tuple[str, dict[str, str]]
) -> None:
    base, auth = api
    with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
        r = c.post("/v1/sessions", json={"name": "files-api"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        cli.started.add(sid)
        body = {"file": ("hello world.txt", b"hi there\n", "text/plain")}
        r = c.post(f"/v1/sessions/{sid}/files", files=body)
        assert r.status_code == 201, r.text
        (up,) = r.json()
        assert up["path"] == "uploads/hello world.txt" and up["size_bytes"] == 9
        r = c.post(f"/v1/sessions/{sid}/files", files={"file": ("e.com", EICAR)})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert "Eicar" in r.json()["detail"]
        r = c.post(f"/v1/sessions/{sid}/files", files={"file": ("../x", b"x")})
        assert r.status_code == 400 and "leads out" in r.json()["detail"]
        listed = c.get(f"/v1/sessions/{sid}/files").json()
        assert [f["name"] for f in listed] == ["hello world.txt"]
        r = c.get(listed[0]["download_url"])
        assert r.status_code == 200 and r.content == b"hi there\n"
        assert r.headers["content-disposition"] == (
            "attachment; filename=\"hello world.txt\"; filename*=UTF-8''hello%20world.txt"
        )
        assert c.get(f"/v1/sessions/{sid}/files/downloads/nope.txt").status_code == 404
    # Without the token: nothing listed, sent or fetched.
    with httpx.Client(base_url=base, timeout=30) as anon:
        assert anon.get(f"/v1/sessions/{sid}/files").status_code == 401
        assert anon.post(f"/v1/sessions/{sid}/files", files=body).status_code == 401
        assert anon.get(listed[0]["download_url"]).status_code == 401
    assert [f["name"] for f in cli.json("files", sid)] == ["hello world.txt"]


@pytest.mark.docker
def test_enable_file_transfer_false_refuses_with_403(
    cli: Cli, api: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    base, auth = api
    with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
        r = c.post("/api/visual-sessions", json={"enable_file_transfer": False})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        cli.started.add(sid)
        assert r.json()["enable_file_transfer"] is False and r.json()["warnings"] == []
        (cli.home / "sessions" / sid / "agent" / "downloads" / "page.txt").write_text("x")
        for r in (
            c.get(f"/v1/sessions/{sid}/files"),
            c.post(f"/v1/sessions/{sid}/files", files={"file": ("a.txt", b"x")}),
            c.get(f"/v1/sessions/{sid}/files/downloads/page.txt"),
        ):
            assert r.status_code == 403, r.text
            assert r.json()["type"] == "urn:vncsess:problem:file-transfer-off"
        assert not any((cli.home / "sessions" / sid / "agent" / "uploads").iterdir())
        on = c.post("/api/visual-sessions", json={"enable_file_transfer": True}).json()
        cli.started.add(on["session_id"])
        assert on["enable_file_transfer"] is True
        r = c.post(f"/v1/sessions/{on['session_id']}/files", files={"file": ("a.txt", b"x")})
        assert r.status_code == 201, r.text
    # The CLI says the same, with its own exit code.
    src = tmp_path / "a.txt"
    src.write_text("x")
    refused = cli.run("cp", str(src), f"{sid}:")
    assert refused.returncode == ExitCode.CONFLICT and "file transfer is off" in refused.stderr


# ------------------------------------------------------------------ the dashboard


@pytest.mark.docker
def test_the_dashboard_files_panel_uploads_lists_and_downloads(
    dash: Dash,  # noqa: F811 (the fixture imported above)
    cli: Cli,
    tmp_path: Path,
) -> None:
    sid = dash.session(name="files-panel")["session_id"]
    # What Chromium would save there (the agent test proves a real download lands there).
    (cli.home / "sessions" / sid / "agent" / "downloads" / "report.csv").write_text("a,b\n1,2\n")
    dash.sign_in()
    dash.goto(f"/s/{sid}")
    page = dash.page
    panel = page.locator("section.files")
    panel.get_by_text("downloads/report.csv").wait_for()
    notes = tmp_path / "meeting notes.txt"
    notes.write_text("agenda: files\n")
    page.set_input_files("#f-upload", str(notes))
    panel.get_by_role("button", name="Upload").click()
    panel.get_by_text("uploads/meeting notes.txt").wait_for()
    inside = _docker("exec", f"vncsess-{sid}-agent-1", "cat", "/data/uploads/meeting notes.txt")
    assert inside.stdout == "agenda: files\n"
    with page.expect_download() as caught:
        panel.get_by_role("row", name="downloads/report.csv").get_by_role("link").click()
    got = tmp_path / "got.csv"
    caught.value.save_as(got)
    assert got.read_text() == "a,b\n1,2\n" and caught.value.suggested_filename == "report.csv"
    if os.environ.get("VNCSESS_SCREENSHOTS"):  # docs/dashboard-files.png
        page.wait_for_timeout(4500)  # the toast gone
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=os.environ["VNCSESS_SCREENSHOTS"])
