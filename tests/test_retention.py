"""Retention on the real Docker engine: `du` shows what sessions keep, `rm` and `prune
--older-than` delete only what they should (never a running session's data, never a recent
one), and the API's routes for both."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Cli, project_leftovers
from vncsess import api, config

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
TOKEN = "retention-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _age(data_dir: Path, days: int) -> None:
    """Make a stopped session look stopped DAYS ago, as `stop` recorded it."""
    stopped = data_dir / "stopped.json"
    record = json.loads(stopped.read_text())
    record["at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    stopped.write_text(json.dumps(record))


def _legacy(source: Path, name: str, days: int) -> Path:
    """A data dir from before vncsess recorded stop times: only its mtime tells its age."""
    copy = source.parent / name
    shutil.copytree(source, copy)
    (copy / "stopped.json").unlink()
    old = time.time() - days * 86400
    os.utime(copy, (old, old))
    return copy


def test_du_rm_and_prune_older_than_remove_only_what_they_should(cli: Cli) -> None:
    running = cli.up()
    old, recent = cli.up(), cli.up()
    assert cli.run("stop", old["session_id"], recent["session_id"]).returncode == 0
    cli.started -= {old["session_id"], recent["session_id"]}
    old_dir, recent_dir = Path(old["data_dir"]), Path(recent["data_dir"])
    run_dir = Path(running["data_dir"])
    assert (recent_dir / "stopped.json").is_file(), "stop records when it stopped"
    (old_dir / "recordings" / "old.mp4").write_bytes(b"\0" * 3 * MiB)
    (recent_dir / "screenshots" / "now.png").write_bytes(b"\0" * MiB)
    _age(old_dir, days=8)
    legacy = _legacy(recent_dir, "0ld1e9ac", days=9)

    # du: every data dir with its parts, the running one by its engine status.
    usage = cli.json("du")
    by_id = {u["session_id"]: u for u in usage["sessions"]}
    assert set(by_id) == {running["session_id"], old["session_id"], recent["session_id"],
                          legacy.name}  # fmt: skip
    assert by_id[running["session_id"]]["status"] == "running"
    assert by_id[old["session_id"]]["status"] == "stopped"
    assert by_id[old["session_id"]]["recordings_bytes"] >= 3 * MiB
    assert by_id[recent["session_id"]]["files_bytes"] >= MiB
    assert usage["total"]["total_bytes"] == sum(u["total_bytes"] for u in usage["sessions"])
    assert usage["sessions"][0]["session_id"] == old["session_id"], "largest first"
    table = cli.run("du")
    assert table.returncode == 0 and "TOTAL" in table.stdout and "3.0 MiB" in table.stdout

    # A too-short --older-than is refused before anything happens.
    short = cli.run("prune", "--older-than", "30s")
    assert short.returncode == 2 and "too short" in short.stderr
    bad = cli.run("prune", "--older-than", "soon")
    assert bad.returncode == 2 and "malformed duration" in bad.stderr

    # prune --older-than 7d: the 8- and 9-day-old data dirs go; the recent and the running
    # one stay, and the running session keeps running.
    pruned = cli.json("prune", "--older-than", "7d")
    print(f"\nprune --older-than 7d: removed {pruned['removed']}, freed {pruned['freed_bytes']} B")
    assert sorted(pruned["removed"]) == sorted([old["session_id"], legacy.name])
    assert pruned["freed_bytes"] >= 3 * MiB
    assert not old_dir.exists() and not legacy.exists()
    assert recent_dir.is_dir() and run_dir.is_dir()
    assert cli.json("inspect", running["session_id"])["status"] == "running"

    # rm refuses a running session, and leaves it whole.
    refused = cli.run("rm", running["session_id"])
    assert refused.returncode == 7 and "--force" in refused.stderr
    assert run_dir.is_dir() and cli.json("inspect", running["session_id"])["status"] == "running"

    # rm of a stopped one and a missing one: like `docker rm`, the one found goes, the other
    # is reported, and the exit code says something was missing.
    both = cli.run("rm", recent["session_id"], "nosuch00")
    assert both.returncode == 4, both.stderr
    assert both.stdout.split() == [recent["session_id"]]
    assert "no session or data dir 'nosuch00'" in both.stderr
    assert not recent_dir.exists()

    # rm --force stops the running one first, then deletes its data: nothing is left.
    forced = cli.run("rm", "--force", "--json", running["session_id"])
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["removed"] == [running["session_id"]]
    cli.started.discard(running["session_id"])
    assert not run_dir.exists() and project_leftovers(running["session_id"]) == []
    assert cli.json("du")["sessions"] == []


@pytest.fixture
def client(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("VNCSESS_HOME", str(cli.home))
    app = api.create_app(config.load(), TOKEN, watch=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_api_shows_disk_use_and_deletes_a_stopped_sessions_data(
    cli: Cli, client: TestClient
) -> None:
    s = cli.up()
    sid, data = s["session_id"], Path(s["data_dir"])
    # A running session: listed with its engine status; its data is refused without force.
    disk = client.get("/v1/disk", headers=AUTH).json()
    assert [u["session_id"] for u in disk["sessions"]] == [sid]
    assert disk["sessions"][0]["status"] == "running"
    r = client.delete(f"/v1/sessions/{sid}/data", headers=AUTH)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert "--force" in r.json()["hint"] and data.is_dir()
    assert client.delete("/v1/sessions/nosuch00/data", headers=AUTH).status_code == 404
    assert client.post("/v1/prune?older_than=1s", headers=AUTH).status_code == 400

    assert client.delete(f"/v1/sessions/{sid}", headers=AUTH).status_code == 200  # stop
    cli.started.discard(sid)
    disk = client.get("/v1/disk", headers=AUTH).json()
    assert disk["sessions"][0]["status"] == "stopped" and disk["sessions"][0]["ended_at"]
    r = client.delete(f"/v1/sessions/{sid}/data", headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == [sid], r.text
    assert not data.exists()
    assert client.get("/v1/disk", headers=AUTH).json()["sessions"] == []
