"""The reliability suite: fixtures that start the real services, and the table of measurements.

Every scenario records what it measured with the ``results`` fixture; the table is printed at the end
of the pytest session and written to ``artifacts/reliability.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pluggy
import pytest

from shared.redis_server import RedisServer, find_redis_server
from shared.store import Store
from tests.reliability.suite import ROOT, Suite

ARTIFACT = ROOT / "artifacts" / "reliability.json"
HERE = Path(__file__).resolve().parent


def redis_down_sec() -> float:
    """How long Redis stays stopped in the outage scenario (``RELIABILITY_REDIS_DOWN_SEC``, default 10)."""
    return float(os.environ.get("RELIABILITY_REDIS_DOWN_SEC", "10"))


@dataclass
class Row:
    scenario: str
    metric: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    ok: bool = True


ROWS: list[Row] = []


class Results:
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def record(self, metric: str, value: float | int | str, unit: str = "", target: str = "", ok: bool = True) -> None:
        if isinstance(value, float):
            value = round(value, 3)
        ROWS.append(Row(self.scenario, metric, value, unit, target, ok))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: fault-injection scenarios against the real services (tests/reliability)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.reliability)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def format_table(rows: list[Row]) -> str:
    header = ("scenario", "metric", "value", "target", "ok")
    body = [(r.scenario, r.metric, f"{r.value} {r.unit}".strip(), r.target, "yes" if r.ok else "NO") for r in rows]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[object]) -> str:
        return " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths), *(line(b) for b in body)])


def write_artifact(rows: list[Row]) -> None:
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(
        json.dumps(
            {
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "redis_down_sec": redis_down_sec(),
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
        + "\n"
    )


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not ROWS:
        return
    write_artifact(ROWS)
    terminalreporter.write_sep("=", "reliability measurements")
    terminalreporter.write_line(format_table(ROWS))
    terminalreporter.write_line(f"(written to {ARTIFACT.relative_to(ROOT)})")


@pytest.fixture
def results(request: pytest.FixtureRequest) -> Results:
    name = request.node.name.removeprefix("test_")
    return Results(name)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.fail("redis-server is not installed")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


SuiteFactory = Callable[..., Suite]


@pytest.fixture
def make_suite(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SuiteFactory]:
    """Build Suites on a test's own directory; every process they started is stopped afterwards.

    On failure the tail of every service log is printed (pytest shows it with the failure).
    """
    made: list[Suite] = []

    def factory(redis_url: str, **kwargs: Any) -> Suite:
        workdir = tmp_path / f"suite{len(made)}"
        workdir.mkdir()
        suite = Suite(workdir, redis_url, **kwargs)
        made.append(suite)
        return suite

    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for suite in made:
        if failed:
            print(suite.logs())
        suite.stop_all()


@pytest.fixture
async def suite_store(redis_server: RedisServer) -> AsyncIterator[Store]:
    """A Store on the default Suite namespace of the test's private Redis."""
    store = Store.from_url(redis_server.url, "reliability")
    try:
        yield store
    finally:
        await store.close()
