"""Which tenant a request is for (switchboard.routing), on the raw bytes of the request."""

from __future__ import annotations

import pytest

from contract.names import is_valid_name, is_valid_name_bytes
from switchboard.routing import (
    BadName,
    NotRouted,
    Route,
    is_health_check,
    route_host,
    route_path,
)


@pytest.mark.parametrize(
    ("target", "route"),
    [
        (b"/t/acme/", Route("acme", b"/", "/t/acme")),
        (b"/t/acme", Route("acme", b"/", "/t/acme")),
        (b"/t/acme?x=1", Route("acme", b"/?x=1", "/t/acme")),
        (b"/t/acme/api/tables?offset=2", Route("acme", b"/api/tables?offset=2", "/t/acme")),
        (b"/t/a/b/c", Route("a", b"/b/c", "/t/a")),
        (b"/t/0-9/x", Route("0-9", b"/x", "/t/0-9")),
        (b"/t/" + b"a" * 63 + b"/x", Route("a" * 63, b"/x", "/t/" + "a" * 63)),
        (b"/t/acme/%2e%2e/x", Route("acme", b"/%2e%2e/x", "/t/acme")),  # the app's business
    ],
)
def test_path_mode_routes_the_prefix_and_keeps_the_rest(target: bytes, route: Route) -> None:
    assert route_path(target) == route


@pytest.mark.parametrize(
    "name",
    [b"..", b".", b"%2e%2e", b"%2E%2E", b"", b"UPPER", b"Acme", b"a" * 64, b"a%00b", b"a\x00b",
     b"-lead", b"_x", b"a.b", b"a%2fb", b"%61cme", b"a b", "été".encode(), b"a\\b"],
)
def test_path_mode_refuses_bad_names_before_any_decoding(name: bytes) -> None:
    with pytest.raises(BadName) as refused:
        route_path(b"/t/" + name + b"/x")
    assert refused.value.raw == name


@pytest.mark.parametrize("target", [b"/", b"/t", b"/tx/acme", b"/healthz", b"*", b"/T/acme/",
                                    b"/_switchboard/health"])
def test_path_mode_leaves_other_urls_unrouted(target: bytes) -> None:
    with pytest.raises(NotRouted):
        route_path(target)


@pytest.mark.parametrize(
    ("host", "route"),
    [
        (b"acme.example.com", Route("acme", b"/x?y=1", "")),
        (b"acme.example.com:8000", Route("acme", b"/x?y=1", "")),
        (b"ACME.Example.COM", Route("acme", b"/x?y=1", "")),  # host names are case-insensitive
    ],
)
def test_host_mode_routes_by_subdomain(host: bytes, route: Route) -> None:
    assert route_host(host, b"/x?y=1", "example.com") == route


@pytest.mark.parametrize("host", [b"a_b.example.com", b"-x.example.com", b"a.b.example.com",
                                  b".example.com", b"%2e%2e.example.com"])
def test_host_mode_refuses_bad_names(host: bytes) -> None:
    with pytest.raises(BadName):
        route_host(host, b"/", "example.com")


@pytest.mark.parametrize("host", [b"example.com", b"acme.other.com", b"", b"acme.example.com.evil"])
def test_host_mode_leaves_other_hosts_unrouted(host: bytes) -> None:
    with pytest.raises(NotRouted):
        route_host(host, b"/", "example.com")


@pytest.mark.parametrize("host", [b"acme.example.com", b"example.com", b"", b"x"])
def test_host_mode_leaves_the_routers_own_paths_to_the_router(host: bytes) -> None:
    with pytest.raises(NotRouted):
        route_host(host, b"/_switchboard/health", "example.com")
    assert route_host(b"acme.example.com", b"/_switchboardx", "example.com").tenant == "acme"


@pytest.mark.parametrize(
    ("target", "health"),
    [(b"/_switchboard/health", True), (b"/_switchboard/health?x=1", True),
     (b"/_switchboard/health/", False), (b"/_switchboard/healthz", False),
     (b"/t/acme/_switchboard/health", False), (b"/healthz", False)],
)
def test_the_health_check_path(target: bytes, health: bool) -> None:
    assert is_health_check(target) is health


def test_host_mode_gives_an_empty_target_a_slash() -> None:
    assert route_host(b"acme.example.com", b"", "example.com").target == b"/"


@pytest.mark.parametrize(
    ("name", "valid"),
    [("acme", True), ("a", True), ("0", True), ("a-b-", True), ("a" * 63, True),
     ("a" * 64, False), ("", False), ("-a", False), ("A", False), ("a.b", False),
     ("a\n", False), ("é", False)],
)
def test_routing_uses_the_contracts_name_rule(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid
    raw = name.encode()
    assert is_valid_name_bytes(raw) is valid
    if valid:
        assert route_path(b"/t/" + raw + b"/x").tenant == name
        assert route_host(raw + b".example.com", b"/", "example.com").tenant == name
    else:
        with pytest.raises(BadName):
            route_path(b"/t/" + raw + b"/x")
