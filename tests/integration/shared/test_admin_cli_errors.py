"""Every error of `gobalancer backends|algorithm` is one line on stderr, never a traceback (issue 17.5)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from shared.cli import main
from shared.models import Backend
from shared.redis_server import free_port
from shared.store import Store
from tests.helpers import service_env
from tests.integration.admin.server import ServedAdmin, admin_config

# The in-process server logs with structlog (stdout by default): kept out of the CLI's stdout.
pytestmark = pytest.mark.usefixtures("server_logs_to_stderr")


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command in a child process: what a user sees on stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *argv], capture_output=True, text=True, timeout=30, env=service_env()
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("gobalancer: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not-a-url", "invalid admin URL 'not-a-url': expected http://HOST:PORT"),
        ("ftp://127.0.0.1:8081", "invalid admin URL 'ftp://127.0.0.1:8081': expected http://HOST:PORT"),
        ("http://[::1", "invalid admin URL 'http://[::1': "),
        ("http://127.0.0.1:99999", "invalid admin URL 'http://127.0.0.1:99999': Port out of range"),
        ("http://", "invalid admin URL 'http://': expected http://HOST:PORT"),
    ],
)
def test_a_malformed_url(url: str, expected: str) -> None:
    assert expected in one_line_error(cli("backends", "list", "--url", url))


def test_a_refused_connection() -> None:
    line = one_line_error(cli("backends", "list", "--url", f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach the admin API at http://127.0.0.1:" in line and "Connection refused" in line


def test_a_token_no_header_can_carry_is_refused_without_echoing_it() -> None:
    line = one_line_error(cli("backends", "list", "--token", "s3cret\nX-Injected: 1"))
    assert "the token holds" in line and "s3cret" not in line


def test_a_usage_error_is_one_line() -> None:
    result = cli("backends", "weight", "10.0.0.1:80", "heavy")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "weight must be an integer 1-10000, got 'heavy'" in result.stderr


async def test_problems_from_the_api(
    redis_url: str, namespace: str, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    async def run(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and len(captured.err.splitlines()) == (code != 0)
        return code, captured.err.strip()

    await store.create_backend(Backend(address="10.0.0.7:80", origin="static"))
    with ServedAdmin(admin_config(redis_url, namespace, token="right-token")) as admin:
        url = ("--url", admin.url)
        # a 4xx problem: its detail, and the status
        code, err = await run("backends", "weight", "10.0.0.99:80", "2", *url, "--token", "right-token")
        assert (code, err) == (1, "gobalancer: error: backend 10.0.0.99:80 not found (HTTP 404)")
        # a wrong token
        code, err = await run("backends", "add", "10.0.0.1:80", *url, "--token", "wrong-token")
        assert code == 1 and err.endswith("(HTTP 401)") and "wrong-token" not in err
        # a discovery-owned backend: the CLI's flag, not the API's query parameter
        code, err = await run("backends", "remove", "10.0.0.7:80", *url, "--token", "right-token")
        assert code == 1 and "add --force to remove it anyway (HTTP 409)" in err and "?force" not in err
        assert await run("backends", "remove", "10.0.0.7:80", "--force", *url, "--token", "right-token") == (0, "")
