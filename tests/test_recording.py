"""Recordings and screenshots on the real Docker engine: record start/stop, `up --record`,
`stop` during a recording, a recorder or a whole vnc container killed outright, the errors,
and screenshots. Every file is checked with ffprobe and a full decode, run in a throwaway
container of the vnc image (the host needs no ffmpeg)."""

from __future__ import annotations

import json
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import VNC_IMAGE, Cli, project_leftovers

pytestmark = pytest.mark.docker

# Frames are compared as 160x90 grey images: mean absolute difference per pixel (0-255).
SMALL_W, SMALL_H = 160, 90
CHANGED = 1.5  # a window jumping to another place gives 20-35; a still screen stays < 0.2


# ------------------------------------------------------------------ ffmpeg in a container


def _tool(
    tool: str, file: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run ffprobe/ffmpeg (or bash) on FILE in a throwaway container of the vnc image: no
    network, the file's folder mounted read-only, as the file's owner; `{F}` in ARGS is
    the file's path inside."""
    st = file.stat()
    return subprocess.run(
        [
            "docker", "run", "--rm", "--network", "none", "--user", f"{st.st_uid}:{st.st_gid}",
            "--volume", f"{file.parent}:/r:ro", "--entrypoint", tool, VNC_IMAGE,
            *(a.replace("{F}", f"/r/{file.name}") for a in args),
        ],
        capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip


_PROBE = "stream=codec_name,pix_fmt,width,height:format=duration,format_name"


def probe_and_decode(file: Path) -> tuple[dict[str, Any], str]:
    """ffprobe's view of FILE, and everything a full decode (`ffmpeg -v error -i FILE -f null
    -`) complains about: '' for a clean file. One container for both."""
    r = _tool(
        "bash", file, "-c",
        f'ffprobe -v error -of json -show_entries {_PROBE} "$0" || exit 10; '
        'ffmpeg -nostdin -v error -i "$0" -f null - || echo "decode failed: $?" >&2',
        "{F}",
    )  # fmt: skip
    assert r.returncode == 0, f"ffprobe failed: {r.stderr.decode()}"
    data: dict[str, Any] = json.loads(r.stdout)
    return data, r.stderr.decode(errors="replace").strip()


def small_frames(file: Path, fps: int = 2) -> list[bytes]:
    """The video sampled at FPS frames a second, each a 160x90 grey image."""
    r = _tool(
        "ffmpeg", file, "-nostdin", "-v", "error", "-i", "{F}",
        "-vf", f"fps={fps},scale={SMALL_W}:{SMALL_H},format=gray", "-f", "rawvideo", "-",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    n = SMALL_W * SMALL_H
    return [r.stdout[i : i + n] for i in range(0, len(r.stdout) - n + 1, n)]


def difference(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def top_level_boxes(file: Path) -> list[str]:
    """The MP4's top-level boxes in file order (ftyp, moov, mdat, ... or moof for fragments)."""
    boxes, pos, size_left = [], 0, file.stat().st_size
    with open(file, "rb") as fh:
        while pos + 8 <= size_left:
            fh.seek(pos)
            size, kind = struct.unpack(">I4s", fh.read(8))
            if size == 1:
                (size,) = struct.unpack(">Q", fh.read(8))
            elif size == 0:
                size = size_left - pos
            assert size >= 8, f"broken box at {pos} in {file}"
            boxes.append(kind.decode("latin-1"))
            pos += size
    return boxes


def check_complete(file: Path, size: tuple[int, int] = (1280, 720)) -> float:
    """A finished recording: H.264 yuv420p MP4 of SIZE, moov before mdat (seekable without
    reading the whole file), decodes without a single error. Returns its duration in s."""
    assert file.is_file(), file
    assert not file.name.endswith(".partial.mp4")
    assert not file.with_name(file.name.replace(".mp4", ".partial.mp4")).exists()
    boxes = top_level_boxes(file)
    assert "moov" in boxes and "mdat" in boxes, boxes
    assert boxes.index("moov") < boxes.index("mdat"), f"not faststart: {boxes}"
    assert "moof" not in boxes, f"still fragmented: {boxes}"
    info, errors = probe_and_decode(file)
    (video,) = info["streams"]
    assert video["codec_name"] == "h264"
    assert video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == size
    assert "mp4" in info["format"]["format_name"]
    assert errors == "", errors
    return float(info["format"]["duration"])


# ------------------------------------------------------------------ driving a session


class Timed(NamedTuple):
    proc: subprocess.CompletedProcess[str]
    started: float  # monotonic, when the command was run
    ended: float  # and when it returned


def timed(cli: Cli, *args: str) -> Timed:
    t0 = time.monotonic()
    proc = cli.run(*args)
    return Timed(proc, t0, time.monotonic())


def ok(t: Timed) -> Timed:
    assert t.proc.returncode == 0, f"exit {t.proc.returncode}: {t.proc.stderr}"
    return t


def vnc(sid: str) -> str:
    return f"vncsess-{sid}-vnc-1"


# Prints, per process name, "NAME UPTIME STARTTIME CLK_TCK"; with KILL=1 it then SIGKILLs
# the oldest ffmpeg (what `pkill -KILL ffmpeg` does, but knowing how long it had run).
_AGES = (
    'read -r up _ </proc/uptime; tck=$(getconf CLK_TCK); for n in "$@"; do '
    'p=$(pgrep -o -x "$n") && echo "$n $up $(cut -d" " -f22 /proc/$p/stat) $tck"; done; '
    '[[ ${KILL:-} != 1 ]] || kill -KILL "$(pgrep -o -x ffmpeg)"'
)


def ages(sid: str, *names: str, kill: bool = False) -> dict[str, float]:
    """How long (s) the named processes of the session's vnc container have been running,
    from the kernel's own clock; with KILL, ffmpeg is SIGKILLed right after the reading."""
    r = subprocess.run(
        ["docker", "exec", "-e", f"KILL={int(kill)}", vnc(sid), "bash", "-c", _AGES, "-", *names],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    out = {}
    for line in r.stdout.splitlines():
        name, up, start, tck = line.split()
        out[name] = float(up) - int(start) / int(tck)
    assert set(out) == set(names), (r.stdout, r.stderr)
    return out


def kill_recorder(sid: str) -> float:
    """SIGKILL the session's ffmpeg; returns how long it had been recording."""
    return ages(sid, "ffmpeg", kill=True)["ffmpeg"]


def recordings_dir(s: dict[str, Any]) -> Path:
    return Path(s["data_dir"]) / "recordings"


def listed(cli: Cli, sid: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = cli.json("recordings", sid)
    return data


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint:"), lines  # one line, and a hint


@pytest.fixture
def moving_window() -> Iterator[Any]:
    """Keeps the screen changing: an xmessage window that jumps to a new place every half
    second, on the session's own display (run inside its vnc container). Ends on its own
    after 30 s, and is stopped when the test ends."""
    started: list[str] = []

    def start(sid: str) -> None:
        script = (
            "for i in $(seq 1 60); do "
            "xmessage -geometry 420x160+$((20 + i % 9 * 90))+$((20 + i % 5 * 100)) "
            '"vncsess recording test, frame $i" & p=$!; sleep 0.5; kill $p; done'
        )
        subprocess.run(
            ["docker", "exec", "-d", vnc(sid), "bash", "-c", script], check=True, timeout=30
        )
        started.append(sid)

    yield start
    for sid in started:  # the session may already be gone: that ends it too
        subprocess.run(
            ["docker", "exec", vnc(sid), "pkill", "-f", "vncsess recording test"],
            capture_output=True, check=False, timeout=30,
        )  # fmt: skip


# ------------------------------------------------------------------ tests


def test_record_start_stop_gives_a_complete_seekable_h264_of_the_changing_screen(
    cli: Cli, moving_window: Any
) -> None:
    s = cli.up()
    sid = s["session_id"]
    moving_window(sid)
    start = ok(timed(cli, "record", "start", sid, "--json"))
    announced = Path(json.loads(start.proc.stdout)["file"])
    partial = announced.with_name(announced.name.replace(".mp4", ".partial.mp4"))
    assert partial.exists(), "ffmpeg writes the fragmented partial while it records"
    assert [r["state"] for r in listed(cli, sid)] == ["recording"]
    time.sleep(6 - (time.monotonic() - start.ended))
    stop = ok(timed(cli, "record", "stop", sid))

    file = Path(stop.proc.stdout.strip())
    assert file == announced
    assert file.parent == recordings_dir(s)
    assert file.name.startswith(f"{sid}-") and file.suffix == ".mp4"
    stamp = datetime.strptime(file.name[len(sid) + 1 :][:15], "%Y%m%d-%H%M%S")
    assert abs(stamp.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=2)

    duration = check_complete(file)
    # ffmpeg starts inside `record start` and stops inside `record stop`: the recording lies
    # within [start.started, stop.ended] and covers [start.ended, stop.started].
    outer, inner = stop.ended - start.started, stop.started - start.ended
    middle = (stop.started + stop.ended) / 2 - (start.started + start.ended) / 2
    assert inner - 0.2 <= duration <= outer + 0.2, (inner, duration, outer)
    assert abs(duration - middle) <= 0.1 * middle, (duration, middle)

    # The video follows the screen: frames one second apart differ (the window moved), all
    # through the recording. A frozen or black recording fails this. One still second is
    # let pass: on a loaded machine the xmessage that draws the window can be late for one
    # jump (seen once, under other engineers' builds).
    frames = small_frames(file)
    assert len(frames) >= 2 * int(duration) - 1
    changes = [difference(frames[i], frames[i + 2]) for i in range(0, len(frames) - 2, 2)]
    assert len(changes) >= 4 and sorted(changes)[1] > CHANGED, changes

    (entry,) = listed(cli, sid)
    assert entry["state"] == "complete" and entry["file"] == str(file)
    assert entry["size_bytes"] == file.stat().st_size > 0
    assert entry["duration_s"] == pytest.approx(duration, abs=0.1)
    table = cli.run("recordings", sid)
    assert file.name in table.stdout and "complete" in table.stdout


def test_stop_during_a_recording_finalises_it(cli: Cli) -> None:
    s = cli.up()
    sid = s["session_id"]
    start = ok(timed(cli, "record", "start", sid))
    time.sleep(3)
    stop = ok(timed(cli, "stop", sid))
    cli.started.discard(sid)
    assert project_leftovers(sid) == []
    (file,) = recordings_dir(s).iterdir()
    duration = check_complete(file)
    # Recorded until `stop` ended it: nothing cut short, nothing lost.
    assert stop.started - start.ended - 0.2 <= duration <= stop.ended - start.started + 0.2
    (entry,) = listed(cli, sid)  # listed after the session is gone, from the data dir
    assert entry["state"] == "complete" and entry["duration_s"] == pytest.approx(duration, 0.01)


def test_killed_recorder_is_repaired_by_the_next_listing(cli: Cli) -> None:
    s = cli.up()
    sid = s["session_id"]
    ok(timed(cli, "record", "start", sid))
    time.sleep(5)
    recorded = kill_recorder(sid)  # how long ffmpeg had been running when it was killed
    assert recorded >= 5

    (partial,) = recordings_dir(s).iterdir()
    assert partial.name.endswith(".partial.mp4")
    (entry,) = listed(cli, sid)
    assert entry["state"] == "complete", entry
    file = Path(entry["file"])
    assert file == partial.with_name(partial.name.replace(".partial.mp4", ".mp4"))
    duration = check_complete(file)
    assert entry["duration_s"] == pytest.approx(duration, abs=0.1)
    # What was recorded up to ~1 s before the kill survives (fragments of one second). The
    # frames' times come from the capture, so on a loaded machine the length can pass
    # ffmpeg's own age by a frame or two (5.6 s for 5.46 s was seen).
    assert recorded - 1.5 <= duration <= recorded + 0.5, (duration, recorded)

    # The session records on as before.
    ok(timed(cli, "record", "start", sid))
    ok(timed(cli, "record", "stop", sid))
    assert [r["state"] for r in listed(cli, sid)] == ["complete", "complete"]


def test_every_command_touching_the_session_repairs_a_killed_recording(cli: Cli) -> None:
    """inspect, record start, record stop and stop each make a killed recording seekable
    (one session, one killed recording per command)."""
    s = cli.up()
    sid = s["session_id"]
    rec = recordings_dir(s)

    def record_and_kill() -> Path:
        time.sleep(2)
        (partial,) = rec.glob("*.partial.mp4")
        subprocess.run(["docker", "exec", vnc(sid), "pkill", "-KILL", "ffmpeg"], check=True)
        return partial.with_name(partial.name.replace(".partial.mp4", ".mp4"))

    for command in ("inspect", "record start", "record stop", "stop"):
        if command != "record stop":  # `record start` left one running
            ok(timed(cli, "record", "start", sid))
        repaired = record_and_kill()
        proc = cli.run(*command.split(), sid)
        if command == "record stop":  # nothing runs any more: a conflict, but it repairs first
            one_line_error(proc, 7, "no recording is running")
        else:
            assert proc.returncode == 0, (command, proc.stderr)
        assert repaired.exists(), f"`vncsess {command}` did not repair {repaired.name}"
        assert check_complete(repaired) >= 0.9, command
    cli.started.discard(sid)
    assert len(list(rec.glob("*.mp4"))) == 4
    assert [r["state"] for r in listed(cli, sid)] == ["complete"] * 4


@pytest.mark.parametrize("then", ["recordings", "stop"])
def test_killed_vnc_container_recording_is_finalised_in_a_throwaway_container(
    cli: Cli, then: str
) -> None:
    s = cli.up()
    sid = s["session_id"]
    ok(timed(cli, "record", "start", sid))
    time.sleep(4)
    recorded = ages(sid, "ffmpeg")["ffmpeg"]  # at least this much, when the container dies
    subprocess.run(["docker", "kill", vnc(sid)], check=True, capture_output=True)
    (partial,) = recordings_dir(s).iterdir()
    assert partial.name.endswith(".partial.mp4")

    if then == "recordings":
        (entry,) = listed(cli, sid)
        assert entry["state"] == "complete", entry
        one_line_error(cli.run("record", "start", sid), 7, "is not running")
        ok(timed(cli, "inspect", sid))
    ok(timed(cli, "stop", sid))
    cli.started.discard(sid)
    assert project_leftovers(sid) == []

    (file,) = recordings_dir(s).iterdir()
    assert file == partial.with_name(partial.name.replace(".partial.mp4", ".mp4"))
    duration = check_complete(file)
    assert duration >= recorded - 1.5, (duration, recorded)
    assert [r["state"] for r in listed(cli, sid)] == ["complete"]


def test_up_record_records_from_the_start_until_stop(cli: Cli) -> None:
    t0 = time.monotonic()
    s = cli.up("--record")
    up_done = time.monotonic()
    sid = s["session_id"]
    # The recorder started with the display: within a second or two of Xvfb, before `up`
    # returned.
    age = ages(sid, "Xvfb", "ffmpeg")
    assert age["ffmpeg"] >= time.monotonic() - up_done
    assert age["Xvfb"] - age["ffmpeg"] < 2.5, age
    (entry,) = listed(cli, sid)
    assert entry["state"] == "recording" and entry["name"].endswith(".partial.mp4")
    assert entry["name"].startswith(f"{sid}-")
    time.sleep(2)
    stop = ok(timed(cli, "stop", sid))
    cli.started.discard(sid)
    (file,) = recordings_dir(s).iterdir()
    duration = check_complete(file)
    # It recorded until `stop` came.
    assert stop.started - up_done <= duration <= stop.ended - t0, duration
    (entry,) = listed(cli, sid)
    assert entry["state"] == "complete" and entry["name"] == file.name


def test_several_recordings_per_session_and_conflicts(cli: Cli) -> None:
    s = cli.up()
    sid = s["session_id"]
    rec = recordings_dir(s)

    one_line_error(cli.run("record", "stop", sid), 7, "no recording is running")
    ok(timed(cli, "record", "start", sid, "--fps", "5"))
    one_line_error(cli.run("record", "start", sid), 7, "already running")
    time.sleep(1.5)
    first = Path(ok(timed(cli, "record", "stop", sid)).proc.stdout.strip())
    one_line_error(cli.run("record", "stop", sid), 7, "no recording is running")

    # A second recording in the same second as another one gets a name of its own. (Names
    # for the next seconds are taken by placeholders, so "the same second" is certain.)
    now = datetime.now(UTC)
    stamps = [(now + timedelta(seconds=i)).strftime("%Y%m%d-%H%M%S") for i in range(-1, 8)]
    placeholders = [
        rec / f"{sid}-{st}.mp4" for st in stamps if not (rec / f"{sid}-{st}.mp4").exists()
    ]
    for p in placeholders:
        p.touch()
    try:
        ok(timed(cli, "record", "start", sid))
    finally:
        for p in placeholders:
            p.unlink()
    time.sleep(1.5)
    second = Path(ok(timed(cli, "record", "stop", sid)).proc.stdout.strip())
    taken = {p.name for p in placeholders}
    assert second.name.endswith("-2.mp4"), second
    assert second.name.removesuffix("-2.mp4") + ".mp4" in taken, (second, taken)

    assert first != second
    assert sorted(p.name for p in rec.iterdir()) == sorted([first.name, second.name])
    for f in (first, second):
        assert check_complete(f) >= 1.0
    entries = listed(cli, sid)
    assert [e["name"] for e in entries] == [first.name, second.name]
    assert all(e["state"] == "complete" and e["size_bytes"] > 0 for e in entries)

    # --fps: 5 frames a second for the first recording, the default 15 for the second.
    rates = []
    for f in (first, second):
        r = _tool(
            "ffprobe", f, "-v", "error", "-select_streams", "v", "-count_frames", "-of", "json",
            "-show_entries", "stream=nb_read_frames:format=duration", "{F}",
        )  # fmt: skip
        d = json.loads(r.stdout)
        rates.append(int(d["streams"][0]["nb_read_frames"]) / float(d["format"]["duration"]))
    assert rates[0] == pytest.approx(5, rel=0.25) and rates[1] == pytest.approx(15, rel=0.25), rates


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "start", "nosuchid"], "no session 'nosuchid'"),
        (["record", "stop", "nosuchid"], "no session 'nosuchid'"),
        (["screenshot", "nosuchid"], "no session 'nosuchid'"),
        (["recordings", "nosuchid"], "no session or data dir 'nosuchid'"),
    ],
)
def test_unknown_session(cli: Cli, args: list[str], message: str) -> None:
    one_line_error(cli.run(*args), 4, message)


def test_full_disk_refuses_to_start_a_recording(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (typer's CliRunner) so that shutil.disk_usage can report a full disk; the
    session itself is real."""
    import shutil

    from typer.testing import CliRunner

    from vncsess.cli import app

    s = cli.up()
    sid = s["session_id"]
    real = shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        u = real(path)
        return type(u)(u.total, u.total - 10 * 1024 * 1024, 10 * 1024 * 1024)

    monkeypatch.setattr("vncsess.recordings.shutil.disk_usage", nearly_full)
    result = CliRunner().invoke(app, ["record", "start", sid], env=cli.env())
    assert result.exit_code == 7, (result.exit_code, result.stderr, result.exception)
    assert "not enough free disk space" in result.stderr
    assert "hint: free some space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2
    assert listed(cli, sid) == []  # nothing started
    one_line_error(cli.run("record", "stop", sid), 7, "no recording is running")


def _png_size(file: Path) -> tuple[int, int]:
    head = file.read_bytes()[:33]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _colours(png: Path) -> int:
    """How many distinct colours the decoded PNG has (decoded by ffmpeg, to raw RGB)."""
    w, h = _png_size(png)
    r = _tool("ffmpeg", png, "-nostdin", "-v", "error", "-i", "{F}",
              "-f", "rawvideo", "-pix_fmt", "rgb24", "-")  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout) == w * h * 3
    return len({r.stdout[i : i + 3] for i in range(0, len(r.stdout), 3)})


def test_screenshot_is_a_png_of_the_display(cli: Cli, tmp_path: Path) -> None:
    s = cli.up("--resolution", "1024x600")
    sid = s["session_id"]
    out = tmp_path / "shot.png"
    # Right after `up` the browser may not have painted yet (a black desktop and the mouse
    # pointer: 2 colours); within a few seconds the display shows the idle Chromium window,
    # and so must the screenshot.
    deadline = time.monotonic() + 30
    while True:
        proc = cli.run("screenshot", sid, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        assert Path(proc.stdout.strip()) == out
        assert _png_size(out) == (1024, 600)
        colours = _colours(out)
        if colours > 16 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert colours > 16, f"the screenshot stays blank: {colours} colours"

    # Without -o it goes to the session's screenshots/ folder, a new file each time (also
    # within one second).
    kept = [Path(ok(timed(cli, "screenshot", sid)).proc.stdout.strip()) for _ in range(2)]
    assert kept[0] != kept[1]
    for f in kept:
        assert f.parent == Path(s["data_dir"]) / "screenshots"
        assert f.name.startswith(f"{sid}-") and f.suffix == ".png"
        assert _png_size(f) == (1024, 600)
    assert _colours(kept[1]) > 16
