"""The Kubernetes source driven by the real ``kubernetes`` client against an EndpointSlice API server.

Stale cases covered: an endpoint that turns unready (or terminating) in a MODIFIED event, a slice
deleted, a watch that closes (restarted from the last resourceVersion, bookmarks included), an
ERROR 410 (relist), a resourceVersion compacted away while reconnecting (410, relist), and the
API server going away and coming back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from services.discovery.sources.kubernetes import KubernetesSource
from shared.config import KubernetesDiscoveryConfig, Seconds
from tests.fakes.k8s_api import FakeKubernetesAPI, endpoint
from tests.helpers import eventually
from tests.integration.discovery.helpers import addresses, running, states


@pytest.fixture
def api() -> Iterator[FakeKubernetesAPI]:
    server = FakeKubernetesAPI().start()
    try:
        yield server
    finally:
        server.stop()


def source(api: FakeKubernetesAPI, timeout: float = 30.0, port_name: str = "") -> KubernetesSource:
    config = KubernetesDiscoveryConfig(
        service="web", api_url=api.url, watch_timeout_sec=Seconds(timeout), port_name=port_name
    )
    return KubernetesSource(config, backoff_cap=0.3)


async def test_added_modified_deleted_across_slices(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1"), endpoint("10.0.0.2")])
    api.apply("other-x", [endpoint("10.9.9.9")], service="other")  # another service: never seen
    src = source(api)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080", "10.0.0.2:8080"}, message="listed")
        await eventually(lambda: api.open_watches == 1, message="watching")
        query = api.watches[0]
        assert query["labelSelector"] == "kubernetes.io/service-name=web"
        assert query["allowWatchBookmarks"] == "true" and query["timeoutSeconds"] == "30"

        api.apply("web-b", [endpoint("10.0.1.1")])  # ADDED: slices are merged
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.1.1:8080"})
        # MODIFIED: 10.0.0.2 turns unready -> removed; the original kept routing to it.
        api.apply("web-a", [endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False)])
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080", "10.0.1.1:8080"}, message="unready removed")
        # MODIFIED: 10.0.0.1 terminating but still serving -> draining.
        api.apply("web-a", [endpoint("10.0.0.1", ready=False, serving=True, terminating=True)])
        await eventually(
            lambda: states(desired) == {"10.0.0.1:8080": "draining", "10.0.1.1:8080": "enabled"}, message="draining"
        )
        api.delete("web-b")  # DELETED
        await eventually(lambda: states(desired) == {"10.0.0.1:8080": "draining"}, message="slice deleted")
    assert len(api.lists) == 1  # the watch did all of it


async def test_named_port(api: FakeKubernetesAPI) -> None:
    ports = [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]
    api.apply("web-a", [endpoint("10.0.0.1")], ports=ports)
    async with running(source(api, port_name="http")) as desired:
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080"})


async def test_closed_watch_restarts_from_last_resource_version_and_bookmarks(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080"} and api.open_watches == 1)
        last_rv = api.apply("web-a", [endpoint("10.0.0.1"), endpoint("10.0.0.2")])
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080", "10.0.0.2:8080"})
        api.close_watches()
        await eventually(lambda: len(api.watches) == 2 and api.open_watches == 1, message="re-watched")
        assert api.watches[1]["resourceVersion"] == str(last_rv)

        # Changes to other services move the resourceVersion without events; a bookmark carries it.
        api.apply("other-x", [endpoint("10.9.9.9")], service="other")
        bookmark_rv = api.bookmark()
        # A change made while no watch is open is replayed from the resourceVersion on re-watch.
        api.hold_watches()
        api.close_watches()
        api.apply("web-a", [endpoint("10.0.0.2")])
        api.release_watches()
        await eventually(lambda: addresses(desired) == {"10.0.0.2:8080"}, message="change while closed")
        await eventually(lambda: len(api.watches) == 3)
        assert api.watches[2]["resourceVersion"] == str(bookmark_rv)
    assert len(api.lists) == 1  # closes never cost a relist


async def test_server_side_timeout_ends_the_watch_and_it_restarts(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api, timeout=1)
    async with running(src) as desired:
        await eventually(lambda: len(api.watches) >= 3, timeout=6, message="watch restarted after timeouts")
        api.apply("web-a", [endpoint("10.0.0.3")])
        await eventually(lambda: addresses(desired) == {"10.0.0.3:8080"})
    assert len(api.lists) == 1


async def test_error_410_relists(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080"} and api.open_watches == 1)
        api.compact()
        api.expire_watches()  # ERROR 410 on the open watch
        await eventually(lambda: len(api.lists) == 2 and src.gone == 1, message="relisted after 410")
        await eventually(lambda: api.open_watches == 1)
        api.apply("web-a", [endpoint("10.0.0.4")])
        await eventually(lambda: addresses(desired) == {"10.0.0.4:8080"}, message="watching after relist")


async def test_compacted_resource_version_on_rewatch_relists(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api)
    async with running(src) as desired:
        await eventually(lambda: addresses(desired) == {"10.0.0.1:8080"} and api.open_watches == 1)
        # While the watch is closed, a change happens and history is compacted past our resourceVersion.
        api.hold_watches()
        api.close_watches()
        api.apply("web-a", [endpoint("10.0.0.5")])
        api.compact()
        api.release_watches()
        await eventually(lambda: addresses(desired) == {"10.0.0.5:8080"}, message="caught up by relist")
        assert src.gone == 1 and len(api.lists) == 2


async def test_api_server_away_keeps_the_last_set_then_recovers(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api)
    with capture_logs() as logs:
        async with running(src) as desired:
            await eventually(lambda: addresses(desired) == {"10.0.0.1:8080"} and api.open_watches == 1)
            api.stop()
            await eventually(
                lambda: any(e["event"].startswith("kubernetes API error") for e in logs), message="noticed"
            )
            assert addresses(desired) == {"10.0.0.1:8080"}  # kept while the API is away
            api.apply("web-a", [endpoint("10.0.0.6")])
            api.start(port=api.port)
            await eventually(lambda: addresses(desired) == {"10.0.0.6:8080"}, message="recovered")


async def test_stops_promptly_while_watching(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1")])
    src = source(api, timeout=300)
    desired_seen = asyncio.Event()
    task = asyncio.create_task(src.run(lambda d, settings=None: desired_seen.set()))
    await asyncio.wait_for(desired_seen.wait(), 5)
    await eventually(lambda: api.open_watches == 1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1.0


def weights(desired: object) -> dict[str, int] | None:
    value = getattr(desired, "value", None)
    return None if value is None else {a: b.weight for a, b in value.items()}


async def test_weight_from_the_pod_annotation_else_the_service_annotation(api: FakeKubernetesAPI) -> None:
    """What the real client requests for them: the Service, its pods by its selector, a new pod by name."""
    api.set_service("web", annotations={"gobalancer.io/weight": "3"}, selector={"app": "web"})
    api.set_pod("web-1", labels={"app": "web"}, annotations={"gobalancer.io/weight": "9"})
    api.set_pod("web-2", labels={"app": "web"})
    api.set_pod("web-3", labels={"app": "web"}, annotations={"gobalancer.io/weight": "heavy"})
    api.set_pod("other", labels={"app": "other"}, annotations={"gobalancer.io/weight": "5"})
    api.apply(
        "web-a",
        [endpoint("10.0.0.1", pod="web-1"), endpoint("10.0.0.2", pod="web-2"), endpoint("10.0.0.3", pod="web-3")],
    )
    with capture_logs() as logs:
        async with running(source(api)) as desired:
            want = {"10.0.0.1:8080": 9, "10.0.0.2:8080": 3, "10.0.0.3:8080": 3}
            await eventually(lambda: weights(desired) == want, message="weights from the annotations")
            assert api.core_requests[:2] == ["services/web", "pods?app=web"]  # one list of the pods
            # A new pod in a watch event is read once, by name.
            await eventually(lambda: api.open_watches == 1, message="watching")
            api.set_pod("web-4", labels={"app": "web"}, annotations={"gobalancer.io/weight": "6"})
            api.apply("web-b", [endpoint("10.0.1.4", pod="web-4")])
            await eventually(lambda: weights(desired) == {**want, "10.0.1.4:8080": 6}, message="the new pod's weight")
            api.apply("web-b", [endpoint("10.0.1.4", pod="web-4"), endpoint("10.0.1.5")])
            await eventually(lambda: weights(desired) == {**want, "10.0.1.4:8080": 6, "10.0.1.5:8080": 3})
            assert api.core_requests.count("pods/web-4") == 1
            # The Service's annotation changed: seen when the watch restarts.
            api.set_service("web", annotations={"gobalancer.io/weight": "2"}, selector={"app": "web"})
            api.close_watches()
            await eventually(
                lambda: weights(desired) == {"10.0.0.1:8080": 9, "10.0.0.2:8080": 2, "10.0.0.3:8080": 2,
                                             "10.0.1.4:8080": 6, "10.0.1.5:8080": 2},
                message="the Service's new weight",
            )  # fmt: skip
    ignored = [e for e in logs if e["event"] == "weight annotation ignored"]
    assert len(ignored) == 1 and "web-3" in ignored[0]["problem"], ignored


async def test_no_service_means_weight_one(api: FakeKubernetesAPI) -> None:
    api.apply("web-a", [endpoint("10.0.0.1", pod="gone")])  # neither the Service nor the pod exist (404)
    async with running(source(api)) as desired:
        await eventually(lambda: weights(desired) == {"10.0.0.1:8080": 1}, message="weight 1")
