"""The Docker source driven by the real ``docker`` SDK against a Docker Engine API test server.

Every way a Docker-fed backend list goes stale is here: a stopped/paused/unhealthy container, a
bad label, a container on two networks, the event stream dropping (with events lost meanwhile),
an engine restart, and an event that never arrives (caught by the periodic re-list).
"""

from __future__ import annotations

from structlog.testing import capture_logs

from services.discovery.sources.docker import DockerSource
from shared.config import DockerDiscoveryConfig, Seconds
from tests.fakes.docker_api import FakeDockerEngine
from tests.helpers import eventually
from tests.integration.discovery.helpers import addresses, running

LB = {"lb.enable": "true"}


def source(engine: FakeDockerEngine, resync: float = 60.0, network: str = "") -> DockerSource:
    return DockerSource(DockerDiscoveryConfig(url=engine.url, network=network, resync_sec=Seconds(resync)))


async def test_list_then_events_start_stop_pause_health(engine: FakeDockerEngine) -> None:
    c1 = engine.add_container(
        "web1", labels={**LB, "lb.port": "8080", "lb.weight": "3"}, networks={"bridge": "172.17.0.2"}
    )
    engine.add_container("plain", networks={"bridge": "172.17.0.9"})  # not labelled: ignored
    engine.add_container("bad", labels={**LB, "lb.weight": "heavy"}, networks={"bridge": "172.17.0.3"})
    engine.add_container("twonets", labels=LB, networks={"zeta": "10.9.0.4", "alpha": "10.8.0.4"}, exposed=["9000"])
    src = source(engine)
    with capture_logs() as logs:
        async with running(src) as desired:
            await eventually(lambda: addresses(desired) == {"172.17.0.2:8080", "10.8.0.4:9000"}, message="listed")
            assert desired.value is not None and desired.value["172.17.0.2:8080"].weight == 3
            assert all(b.origin == "docker" for b in desired.value.values())
            skipped = [e for e in logs if e["event"] == "container skipped"]
            assert skipped and "lb.weight" in skipped[0]["reason"] and skipped[0]["container"] == "bad"

            c4 = engine.add_container("web4", labels=LB, networks={"bridge": "172.17.0.4"})
            await eventually(lambda: "172.17.0.4:80" in (addresses(desired) or ()), message="started container added")
            engine.stop_container(c1)
            await eventually(lambda: "172.17.0.2:8080" not in (addresses(desired) or ()), message="stopped removed")
            engine.pause(c4)
            await eventually(lambda: "172.17.0.4:80" not in (addresses(desired) or ()), message="paused removed")
            engine.unpause(c4)
            await eventually(lambda: "172.17.0.4:80" in (addresses(desired) or ()), message="unpaused back")
            c5 = engine.add_container("web5", labels=LB, networks={"bridge": "172.17.0.5"}, health="starting")
            await eventually(lambda: "172.17.0.5:80" in (addresses(desired) or ()), message="starting added")
            engine.set_health(c5, "unhealthy")
            await eventually(lambda: "172.17.0.5:80" not in (addresses(desired) or ()), message="unhealthy removed")
            engine.set_health(c5, "healthy")
            await eventually(lambda: "172.17.0.5:80" in (addresses(desired) or ()), message="healthy added")
            engine.set_health(c5, "unhealthy")
            await eventually(lambda: "172.17.0.5:80" not in (addresses(desired) or ()), message="unhealthy removed")
            engine.start_container(c1)
            await eventually(lambda: "172.17.0.2:8080" in (addresses(desired) or ()), message="restarted back")
    # Events did all that: one listing, one stream.
    assert engine.requests["/containers/json"] == 1
    assert src.connects == 1
    # The bad container is logged once, not at every look.
    assert len([e for e in logs if e["event"] == "container skipped"]) == 1


async def test_preferred_network_from_config(engine: FakeDockerEngine) -> None:
    engine.add_container("twonets", labels=LB, networks={"zeta": "10.9.0.4", "alpha": "10.8.0.4"})
    engine.add_container(
        "chosen", labels={**LB, "lb.network": "alpha"}, networks={"zeta": "10.9.0.5", "alpha": "10.8.0.5"}
    )
    async with running(source(engine, network="zeta")) as desired:
        await eventually(lambda: addresses(desired) == {"10.9.0.4:80", "10.8.0.5:80"}, message="network choice")


async def test_duplicate_events_are_dropped(engine: FakeDockerEngine) -> None:
    c1 = engine.add_container("web1", labels=LB, networks={"bridge": "172.17.0.2"})
    src = source(engine)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"172.17.0.2:80"} and engine.streams == 1)
        # The listing inspected web1 once; its `start` (just before the listing) is replayed: inspected again.
        await eventually(lambda: src.events == 1 and engine.requests["/containers/{id}/json"] == 2, message="replay")
        event = engine.emit(c1, "unpause")
        await eventually(lambda: engine.requests["/containers/{id}/json"] == 3, message="event handled")
        inspects = engine.requests["/containers/{id}/json"]
        engine.send(dict(event))  # the very same event again (as after a replay)
        await eventually(lambda: src.duplicates == 1, message="duplicate dropped")
        assert engine.requests["/containers/{id}/json"] == inspects


async def test_stream_drop_with_lost_events_is_caught_by_the_relist(engine: FakeDockerEngine) -> None:
    c1 = engine.add_container("web1", labels=LB, networks={"bridge": "172.17.0.2"})
    engine.add_container("web2", labels=LB, networks={"bridge": "172.17.0.3"})
    src = source(engine)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"172.17.0.2:80", "172.17.0.3:80"} and engine.streams == 1)
        engine.record_events = False  # these changes will never be announced
        engine.stop_container(c1)
        engine.add_container("web3", labels=LB, networks={"bridge": "172.17.0.4"})
        engine.drop_streams()
        await eventually(lambda: addresses(desired) == {"172.17.0.3:80", "172.17.0.4:80"}, message="caught up")
        await eventually(lambda: src.connects == 2 and engine.streams == 1, message="following events again")
        assert src.relists == 2
        engine.record_events = True
        engine.add_container("web5", labels=LB, networks={"bridge": "172.17.0.5"})
        await eventually(lambda: "172.17.0.5:80" in (addresses(desired) or ()), message="events after reconnect")


async def test_missed_event_without_a_drop_is_caught_by_resync(engine: FakeDockerEngine) -> None:
    c1 = engine.add_container("web1", labels=LB, networks={"bridge": "172.17.0.2"})
    src = source(engine, resync=0.3)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"172.17.0.2:80"})
        engine.record_events = False
        engine.stop_container(c1)
        await eventually(lambda: addresses(desired) == set(), message="resync removed it")
        assert src.connects == 1


async def test_engine_restart_keeps_the_last_set_then_catches_up(engine: FakeDockerEngine) -> None:
    c1 = engine.add_container("web1", labels=LB, networks={"bridge": "172.17.0.2"})
    src = DockerSource(DockerDiscoveryConfig(url=engine.url, resync_sec=Seconds(60)), backoff_cap=0.3)
    with capture_logs() as logs:
        async with running(src) as desired:
            await eventually(lambda: addresses(desired) == {"172.17.0.2:80"} and engine.streams == 1)
            engine.stop()
            await eventually(
                lambda: any(e["event"].startswith("docker engine unreachable") for e in logs), message="noticed"
            )
            assert addresses(desired) == {"172.17.0.2:80"}  # kept while the engine is away
            engine.stop_container(c1)
            engine.add_container("web2", labels=LB, networks={"bridge": "172.17.0.3"})
            engine.start()
            await eventually(
                lambda: addresses(desired) == {"172.17.0.3:80"} and src.connects == 2, message="caught up after restart"
            )


async def test_the_projects_own_image_without_lb_port_is_found_on_80(engine: FakeDockerEngine) -> None:
    engine.add_container(
        "demo", labels=LB, networks={"bridge": "172.17.0.7"}, exposed=["8080", "8081"], image="gobalancer:local"
    )
    async with running(source(engine)) as desired:
        await eventually(lambda: addresses(desired) == {"172.17.0.7:80"}, message="found on the default port")
