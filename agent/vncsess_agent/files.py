"""The session's files, seen from inside: /data/uploads (what vncsess put in, read-only here)
and /data/downloads (where Chromium saves).

The agent gets each upload as one of browser-use's `available_file_paths` (the only paths
its upload action accepts), also those sent while it runs. A person in control finds both
folders in Chromium's file dialog: as ~/Uploads and ~/Downloads (links in HOME, which the
dialog opens on) and as bookmarks in its side bar.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

LOG = logging.getLogger("vncsess")


def uploads(folder: Path) -> list[str]:
    """The files in the uploads folder, as absolute paths (hidden names are half-copied)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [
        str(folder / e.name)
        for e in entries
        if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
    ]


def refresh(agent: Any, folder: Path) -> None:
    """Add uploads sent since the agent started to its available_file_paths (browser-use
    reads the list afresh every step, and adds downloads to it itself)."""
    known = list(agent.available_file_paths or [])
    new = [p for p in uploads(folder) if p not in known]
    if new:
        agent.available_file_paths = [*known, *new]
        LOG.info("new upload(s) for the agent: %s", ", ".join(Path(p).name for p in new))


def show_in_file_dialog(home: Path, folders: dict[str, Path]) -> None:
    """~/NAME links to each folder, and GTK bookmarks, so Chromium's file dialog (GTK's)
    shows them. Best effort: a failure only costs a person some clicks."""
    lines = []
    for name, target in folders.items():
        link = home / name
        try:
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
        except OSError as exc:
            LOG.warning("cannot link %s to %s: %s", link, target, exc.strerror or exc)
        lines.append(f"file://{target} {name}\n")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "gtk-3.0"
    try:
        config.mkdir(parents=True, exist_ok=True)
        (config / "bookmarks").write_text("".join(lines))
    except OSError as exc:
        LOG.warning("cannot write the file dialog's bookmarks: %s", exc.strerror or exc)
