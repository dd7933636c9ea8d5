import pytest

from shared.addresses import normalize_address, parse_address


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("example.com:443", "example.com", 443),
        ("backend-1.svc.cluster.local:8080", "backend-1.svc.cluster.local", 8080),
        ("[::1]:9000", "::1", 9000),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535),
        ("web_1:1", "web_1", 1),
    ],
)
def test_valid(text: str, host: str, port: int) -> None:
    assert parse_address(text) == (host, port)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "host:port"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1:65536", "out of range"),
        ("127.0.0.1:http", "invalid port"),
        ("300.1.1.1:80", "invalid IPv4"),
        ("::1:80", "brackets"),
        ("[::zz]:80", "invalid IPv6"),
        ("-bad-.com:80", "invalid host"),
        (":80", "no host"),
        (" a:80", "whitespace"),
        ("", "non-empty"),
        ("a:-1", "invalid port"),
        ("a..:80", "invalid host"),
        ("a..b:80", "invalid host"),
    ],
)
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_address(text)


def test_listener_may_omit_host() -> None:
    assert parse_address(":8080", allow_empty_host=True) == ("", 8080)


def test_normalize() -> None:
    assert normalize_address("Example.COM:80") == "example.com:80"
    assert normalize_address("[0:0::1]:80") == "[::1]:80"
    assert normalize_address("A.Example.:80") == "a.example:80"
    assert normalize_address("[fe80::1%Eth0]:80") == "[fe80::1%Eth0]:80"


@pytest.mark.parametrize(
    "zone",
    ["<img src=x onerror=alert(1)>", "eth0\n", "a\nb", "\x1b[31mred", "eth 0", "", "a%b", "é", "x" * 65, "eth0\x00"],
)
def test_zone_ids_are_rfc6874_unreserved_only(zone: str) -> None:
    with pytest.raises(ValueError, match="zone id"):
        normalize_address(f"[fe80::1%{zone}]:80")


@pytest.mark.parametrize("zone", ["eth0", "Eth0.100", "wlp2s0", "3", "a-b_c~d"])
def test_zone_ids_interface_names_and_numbers_pass(zone: str) -> None:
    assert normalize_address(f"[FE80::1%{zone}]:80") == f"[fe80::1%{zone}]:80"
