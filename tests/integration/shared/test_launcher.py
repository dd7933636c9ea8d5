"""`gobalancer up` starts the suite and stops all of it, leaving no process behind."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.redis_server import free_port
from tests.helpers import service_env


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc/*/stat parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _start(tmp_path: Path, *extra: str, parent: bool = False) -> tuple[subprocess.Popen[str], Path]:
    """The launcher (``parent``: a process that started it and waits for it, like make)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f'listen_address: "127.0.0.1:{free_port()}"\n'
        f'admin: {{listen_address: "127.0.0.1:{free_port()}"}}\n'
        "health_check: {interval_sec: 0.2}\n"
    )
    env = service_env()
    command = [sys.executable, "-m", "shared.cli", "up", "--config", str(config), "--proxies", "2", *extra]
    if parent:
        command = [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", *command]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return process, config
    process.kill()
    pytest.fail(f"gobalancer up did not start: {''.join(lines)}")


def _survivors(pids: set[int], timeout: float) -> set[int]:
    """Those of ``pids`` still alive once all are gone or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(pids)


def _run_up(*args: str) -> subprocess.CompletedProcess[str]:
    """``gobalancer up ARGS`` run to its end (for the cases where it stops by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "up", *args], capture_output=True, text=True, timeout=30, env=service_env()
    )


def _wait_for_children(pid: int, minimum: int) -> set[int]:
    deadline = time.monotonic() + 10
    while True:
        children = _descendants(pid)
        if len(children) >= minimum or time.monotonic() > deadline:
            return children
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_then_signal_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    process, _ = _start(tmp_path)
    # redis + 2 demo backends + admin + discovery + health + 2 proxies
    children = _wait_for_children(process.pid, 8)
    assert len(children) >= 8, children
    process.send_signal(sig)
    assert process.wait(30) == 0
    assert not _survivors(children, 10), "processes left behind"


def test_a_killed_launcher_takes_its_children_along(tmp_path: Path) -> None:
    process, _ = _start(tmp_path)
    children = _wait_for_children(process.pid, 8)
    process.kill()
    process.wait(10)
    assert not _survivors(children, 15), "children outlived a SIGKILLed launcher"


def test_with_exit_with_parent_the_suite_stops_when_its_parent_dies(tmp_path: Path) -> None:
    """`make run` execs the launcher with --exit-with-parent: a signal to make alone (timeout, a
    process supervisor) must not leave the suite running, orphaned."""
    parent, _ = _start(tmp_path, "--exit-with-parent", parent=True)
    processes = _wait_for_children(parent.pid, 9)  # the launcher and its 8
    assert len(processes) >= 9, processes
    parent.kill()  # (SIGKILL: the parent cannot pass anything on)
    parent.wait(10)
    assert not _survivors(processes, 20), "the suite outlived the process that started it"


def test_exit_with_parent_given_a_parent_that_is_gone_starts_nothing(tmp_path: Path) -> None:
    """The parent died while the launcher was starting (its PID, passed by make, no longer matches)."""
    config = tmp_path / "config.yaml"
    config.write_text(f'listen_address: "127.0.0.1:{free_port()}"\n')
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has exited: the launcher's parent is this test, not it
    result = _run_up("--config", str(config), f"--exit-with-parent={gone.pid}")
    assert result.returncode == 0
    assert f"the process that started it ({gone.pid}) has exited; not starting" in result.stderr
    assert "Ctrl-C stops everything" not in result.stdout


def test_up_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [{address: 'nohost', weight: 1}]\n")
    result = _run_up("--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"config error: {bad}: backends[0].address: address 'nohost' must be host:port")


def test_bundled_config_serves_the_demo_alternating_backends(tmp_path: Path) -> None:
    """The quick start: `gobalancer up` with config/config.yaml; requests alternate between A and B."""
    import json
    import urllib.request

    bundled = (Path(__file__).parents[3] / "config" / "config.yaml").read_text()
    proxy, admin, a, b, api, tcp = (free_port() for _ in range(6))
    text = (
        bundled.replace('":8080"', f'"127.0.0.1:{proxy}"')
        .replace("127.0.0.1:8081", f"127.0.0.1:{admin}")
        .replace("127.0.0.1:9001", f"127.0.0.1:{a}")
        .replace("127.0.0.1:9002", f"127.0.0.1:{b}")
        .replace("127.0.0.1:9003", f"127.0.0.1:{api}")
        .replace("127.0.0.1:9443", f"127.0.0.1:{tcp}")
    )
    config = tmp_path / "config.yaml"
    config.write_text(text)
    env = service_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:

        def get(path: str = "/", port: int = proxy) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return str(json.loads(response.read())["backend"])

        # Ready once the three demo backends have passed their first health probe (C, the api pool's, is
        # probed with that pool's check: it may come a little after A and B).
        deadline = time.monotonic() + 30
        answered: set[str] = set()
        while answered != {"A", "B", "C"} and time.monotonic() < deadline:
            try:
                answered.add(get("/api/x" if "C" not in answered and len(answered) == 2 else "/"))
            except OSError:  # (a 503 is an HTTPError, an OSError: not up yet)
                time.sleep(0.1)
        assert answered == {"A", "B", "C"}, "the three demo backends answered"
        seen = [get() for _ in range(6)]
        assert all(x != y for x, y in itertools.pairwise(seen)), f"alternates: {seen}"
        assert set(seen) == {"A", "B"}
        # The example's route and TCP listener: /api goes to the pool api (its demo backend C), as does
        # every connection to the TCP listener.
        assert get("/api/x") == "C" and get("/", tcp) == "C"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
