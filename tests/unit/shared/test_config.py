from pathlib import Path

import pytest

from shared.cli import main as cli_main
from shared.config import ConfigError, effective_settings, env_settings, load_config

ORIGINAL = """
listen_address: ":8080"
algorithm: weighted
backends:
  - address: "127.0.0.1:9001"
    weight: 3
  - address: "10.0.0.2:80"
    weight: 1
health_check:
  interval_sec: 5
  timeout_sec: 2
  retries: 4
timeout:
  client_idle_sec: 30
  backend_idle_sec: 45
  connect_timeout: 3
discovery:
  type: kubernetes
  docker: {}
  kubernetes:
    namespace: shop
    service: web
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    text = str(info.value)
    assert "\n" not in text
    return text


def test_original_file_is_accepted_unchanged(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ORIGINAL), {})
    assert config.algorithm == "weighted"
    assert [(b.address, b.weight) for b in config.backends] == [("127.0.0.1:9001", 3), ("10.0.0.2:80", 1)]
    assert config.health_check.interval_sec == 5.0
    assert config.health_check.fall == 4  # retries maps to fall
    assert config.timeout.connect_timeout == 3.0
    assert config.discovery.kubernetes.service == "web"


def test_defaults() -> None:
    config = load_config(None, {})
    assert config.listen_address == ":8080"
    assert config.admin.listen_address == "127.0.0.1:8081"
    assert config.mode == "http"
    assert config.proxy.workers == 1
    assert config.health_check.rise == 2 and config.health_check.fall == 3
    assert config.redis.url == ""


def test_extensions_and_durations(tmp_path: Path) -> None:
    text = """
mode: tcp
redis: {url: "redis://user:pw@localhost:6380/1"}
admin: {listen_address: "0.0.0.0:9000", token: "t"}
proxy: {workers: 2}
health_check: {type: http, path: /healthz, expect_status: "200-299,418", rise: 1, fall: 2, interval_sec: 500ms}
"""
    config = load_config(write(tmp_path, text), {})
    assert config.mode == "tcp"
    assert config.proxy.workers == 2
    assert config.health_check.interval_sec == 0.5
    assert config.admin.listen_address == "0.0.0.0:9000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen_adress: ':80'\n", "config.yaml: listen_adress: unknown field (allowed: listen_address"),
        ("health_check: {intervall_sec: 1}\n", "health_check.intervall_sec: unknown field"),
        ("backends: [{address: '1.2.3.4:80', weight: 0}]\n", "backends[0].weight: expected `int` >= 1"),
        (
            "backends: [{address: '1.2.3.4:80', weight: 'x'}]\n",
            "backends[0].weight: expected `int`, got `str`",
        ),
        ("backends: [{address: '1.2.3.4'}]\n", "backends[0].address: address '1.2.3.4' must be host:port"),
        (
            "backends: [{address: 'h:70000'}]\n",
            "backends[0].address: address 'h:70000' has port 70000 out of range",
        ),
        ("health_check: {interval_sec: -1}\n", "health_check.interval_sec: a duration cannot be negative"),
        ("timeout: {connect_timeout: -2}\n", "timeout.connect_timeout: a duration cannot be negative"),
        (
            "algorithm: fastest\n",
            "algorithm: invalid value 'fastest' (expected one of: round_robin, weighted,",
        ),
        ("mode: udp\n", "mode: invalid value 'udp' (expected one of: http, tcp)"),
        ("listen_address: 'localhost'\n", "listen_address: address 'localhost' must be host:port"),
        ("redis: {url: 'http://x'}\n", "redis.url: must start with redis://"),
        ("redis: {counts_sync_sec: 0}\n", "redis.counts_sync_sec: must be > 0 and at most heartbeat_sec"),
        ("redis: {counts_sync_sec: 2s}\n", "redis.counts_sync_sec: must be > 0 and at most heartbeat_sec"),
        ("health_check: {expect_status: '2xx'}\n", "health_check.expect_status: must be like"),
        ("proxy: {workers: 0}\n", "proxy.workers: expected `int` >= 1"),
        ("backends: [{address: 'a:1'}, {address: 'a:1'}]\n", "backends[1]: duplicate address a:1"),
        ("health_check: {interval_sec: .nan}\n", "health_check.interval_sec: a duration must be a finite number"),
        ("timeout: {connect_timeout: .inf}\n", "timeout.connect_timeout: a duration must be a finite number"),
        ("timeout: {client_idle_sec: 0}\n", "timeout.client_idle_sec: must be > 0"),
        ("discovery: {lease_ttl_sec: 0}\n", "discovery.lease_ttl_sec: must be > 0"),
        ("discovery: {file_poll_sec: 0}\n", "discovery.file_poll_sec: must be > 0"),
        ("proxy: {max_header_bytes: 1}\n", "proxy.max_header_bytes: expected `int` >= 1024"),
        (
            "balancing: {outlier: {base_ejection_sec: 60, max_ejection_sec: 30}}\n",
            "balancing.outlier.max_ejection_sec: must be at least base_ejection_sec",
        ),
        (
            "discovery: {kubernetes: {services: [{service: web, pool: 'a b'}]}}\n",
            "discovery.kubernetes.services[0].pool: pool name 'a b' must be",
        ),
        (
            "discovery: {kubernetes: {services: [{service: Web_1}]}}\n",
            "discovery.kubernetes.services[0].service: 'Web_1' is not a Kubernetes Service name",
        ),
        (
            "discovery: {kubernetes: {services: [{service: web, namespace: 'x.y'}]}}\n",
            "discovery.kubernetes.services[0].namespace: 'x.y' is not a Kubernetes namespace name",
        ),
        (
            "discovery: {kubernetes: {service: web, services: [{service: web, pool: web}]}}\n",
            "discovery.kubernetes.services[0].service: default/web is also discovery.kubernetes.service",
        ),
        (
            "discovery: {kubernetes: {services: [{pool: web}]}}\n",
            "discovery.kubernetes.services[0]: Object missing required field `service`",
        ),
        ("a: 1\na: 2\n", "invalid YAML: line 2, column 1: duplicate key 'a'"),
        ("backends: [\n", "invalid YAML"),
        ("- just a list\n", "the top level must be a mapping"),
    ],
)
def test_errors_name_file_path_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(write(tmp_path, text))
    assert message.startswith(str(tmp_path / "config.yaml") + ": ")
    assert expected.replace("config.yaml: ", "") in message


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file"):
        load_config("/nonexistent/nope.yaml", {})


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "GOBALANCER_REDIS_URL": "redis://r:6379/0",
        "GOBALANCER_ADMIN_TOKEN": "0123",
        "GOBALANCER_PROXY_WORKERS": "4",
        "GOBALANCER_HEALTH_CHECK_INTERVAL_SEC": "250ms",
        "GOBALANCER_BACKENDS": '[{"address": "127.0.0.1:9", "weight": 2}]',
        "GOBALANCER_CONFIG": "ignored",
    }
    config = load_config(write(tmp_path, ORIGINAL), env)
    assert config.redis.url == "redis://r:6379/0"
    assert config.admin.token == "0123"  # stays a string
    assert config.proxy.workers == 4
    assert config.health_check.interval_sec == 0.25
    assert [b.address for b in config.backends] == ["127.0.0.1:9"]


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^GOBALANCER_PROXY_WORKERS \(environment\): proxy.workers: expected"):
        load_config(None, {"GOBALANCER_PROXY_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"^environment: GOBALANCER_PROXY_WORKRS: unknown setting"):
        load_config(None, {"GOBALANCER_PROXY_WORKRS": "2"})


def test_every_setting_has_an_environment_variable() -> None:
    names = env_settings()
    assert names["GOBALANCER_REDIS_URL"] == ("redis", "url")
    assert names["GOBALANCER_TIMEOUT_CONNECT_TIMEOUT"] == ("timeout", "connect_timeout")
    assert names["GOBALANCER_DISCOVERY_KUBERNETES_NAMESPACE"] == ("discovery", "kubernetes", "namespace")


def test_secrets_are_redacted() -> None:
    config = load_config(
        None, {"GOBALANCER_ADMIN_TOKEN": "tok-SECRET", "GOBALANCER_REDIS_URL": "redis://u:pw-SECRET@h:1"}
    )
    text = repr(effective_settings(config))
    assert "SECRET" not in text
    assert "redis://u:***@h:1" in text


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOBALANCER_ADMIN_TOKEN", "hunter2-SECRET")
    good = write(tmp_path, ORIGINAL)
    assert cli_main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "algorithm: weighted" in out and "SECRET" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [{address: 'x:1', weight: -3}]\n")
    assert cli_main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"config error: {bad}: backends[0].weight: expected `int` >= 1"


def test_bundled_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[3] / "config" / "config.yaml", {})
    assert config.demo is True
    assert len(config.backends) == 2


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:p@ss@w@h:1/0", "redis://u:***@h:1/0"),  # redis-py splits userinfo at the last '@'
        ("redis://h:1/0?password=x&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis+sentinel://h:1,h:2/m?sentinel_password=s", "redis+sentinel://h:1,h:2/m?sentinel_password=***"),
        ("redis://user@h:1", "redis://user@h:1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from shared.config import redact_url

    assert redact_url(url) == shown


def test_errors_stay_on_one_line_whatever_the_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, '"a\\nFAKE: injected": 1\n'))
    assert "a\\nFAKE: injected" in message


def test_proxy_protocol_is_refused_with_tls_on_the_same_listener(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "proxy:\n  proxy_protocol_from: ['10.0.0.0/8']\n  tls:\n    cert_file: c.pem\n    key_file: k.pem\n"
    )
    with pytest.raises(ConfigError, match="proxy_protocol_from"):
        load_config(path, environ={})
