"""Discovery sources: each turns one kind of truth into desired sets of backends.

A source is small and knows nothing of Redis or leases: ``run(publish)`` calls ``publish`` with the
*whole* desired set (address -> Backend of the source's origin, each naming its pool) whenever it may
have changed (a source with pools or routes of its own, Docker, passes them as ``settings``), and
runs until cancelled. It publishes nothing until it has listed its truth once, and nothing while
that truth is unreachable (the last set stays). ``fields`` names the fields the source manages on a
backend that already exists; the reconciler (``services.discovery.reconcile``) does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from services.discovery.seeding import DesiredSettings
from shared.config import Config
from shared.models import Backend, Origin


class Publish(Protocol):
    def __call__(self, backends: Mapping[str, Backend], settings: DesiredSettings | None = None) -> object: ...


class Source(Protocol):
    origin: Origin
    fields: tuple[str, ...]

    async def run(self, publish: Publish) -> None: ...


def make_source(config: Config, config_path: str | None) -> Source:
    """The source the config asks for (imports the heavy client libraries only when used)."""
    kind = config.discovery.type
    if kind == "docker":
        from services.discovery.sources.docker import DockerSource

        return DockerSource(config.discovery.docker)
    if kind == "kubernetes":
        from services.discovery.sources.kubernetes import KubernetesServicesSource, KubernetesSource

        if not config.discovery.kubernetes.services:
            return KubernetesSource(config.discovery.kubernetes)
        return KubernetesServicesSource(config.discovery.kubernetes)
    from services.discovery.sources.static import StaticSource

    return StaticSource(config, config_path)
