import io
import json
import logging

from shared.logs import configure_logging, get_logger


def test_json_lines_with_service_field_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("health", "info", "auto", stream=stream)
    get_logger("probe").info("backend down", backend="a:1")
    get_logger("probe").debug("hidden at info level")
    logging.getLogger("some.library").warning("from the stdlib")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "backend down"
    assert lines[0]["service"] == "health" and lines[0]["component"] == "probe" and lines[0]["backend"] == "a:1"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert len(lines) == 2
    assert lines[1]["event"] == "from the stdlib" and lines[1]["service"] == "health"


def test_console_format_is_not_json() -> None:
    stream = io.StringIO()
    configure_logging("admin", "debug", "console", stream=stream)
    get_logger("x").debug("hello", n=1)
    text = stream.getvalue()
    assert "hello" in text and not text.lstrip().startswith("{")
