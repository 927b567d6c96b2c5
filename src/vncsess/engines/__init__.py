"""Engines: what runs a session's containers (see base.py for the seam they share)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vncsess.engines.base import Engine

if TYPE_CHECKING:
    from vncsess.config import Settings

__all__ = ["Engine", "load"]


def load(settings: Settings) -> Engine:
    """The engine the settings ask for (VNCSESS_ENGINE)."""
    from vncsess.errors import BadInput

    if settings.engine == "docker":
        from vncsess.engines.docker import DockerEngine

        return DockerEngine(settings)
    if settings.engine == "kubernetes":
        from vncsess.engines.kubernetes import KubernetesEngine

        return KubernetesEngine(settings)
    raise BadInput(
        f"unknown engine {settings.engine!r}", hint="set VNCSESS_ENGINE to docker or kubernetes"
    )
