"""The nginx and Apache sites `switchboard deploy-config` prints, loaded into the real servers
(Debian's nginx and apache2, one of each per session) in front of a real router, in path
mode and in host mode: the server's own config test accepts them, and the demo app, a 50 MB
upload, a WebSocket echo and a cold start all work through them; with the router down the
visitor gets the site's plain 503 page."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Router
from tests.frontends import (
    BASE_DOMAIN,
    demo_requests,
    front_client,
    install,
    router_env,
    upload_50mb,
    websocket_echo,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["nginx", "apache"])
@pytest.mark.parametrize("mode", ["path", "host"])
def test_generated_site_serves_the_demo_app(
        kind: str, mode: str, make_router: Any, nginx_server: Any,
        apache_server: Any) -> None:
    server = nginx_server if kind == "nginx" else apache_server
    host_mode = mode == "host"
    env = router_env(**({"SWITCHBOARD_ROUTING": "host", "SWITCHBOARD_BASE_DOMAIN": BASE_DOMAIN}
                        if host_mode else {}))
    router: Router = make_router(env=env).start()
    router.admin_call("POST", "/v1/tenants", {"name": "acme"})
    router.admin_call("POST", "/v1/tenants", {"name": "cold"})
    site = f"{kind}-{mode}"
    args = ["--host-mode", BASE_DOMAIN] if host_mode else []
    base_url = install(server, router, kind, site, *args)
    try:
        server.check()  # `nginx -t` / `apachectl -t` on the whole configuration with it
        # A cold start through the front server: the tenant was never started.
        assert router.state("cold") == "stopped"
        with front_client(base_url, "cold", host_mode=host_mode) as http:
            worker = http.get("/api/worker")
            assert worker.status_code == 200, worker.text
            assert worker.json()["tenant"] == "cold"
        assert router.state("cold") == "running"
        with front_client(base_url, "acme", host_mode=host_mode) as http:
            demo_requests(http)
            upload_50mb(http)
            # The router saw the client's address through the server's forwarded headers.
            assert http.get("/api/worker").status_code == 200
        websocket_echo(base_url, "acme", host_mode=host_mode)
        assert router.info("acme")["requests"] >= 6  # all of it went through the router

        # The router is down: the site's own page, with Retry-After, not a bare 502.
        router.kill_group()
        with front_client(base_url, "acme", host_mode=host_mode) as http:
            down = http.get("/api/worker")
        assert down.status_code == 503
        assert "Temporarily unavailable" in down.text
        assert down.headers["retry-after"] == "5"
    finally:
        server.remove_site(site)


def test_a_tenant_that_cannot_start_keeps_the_routers_503(
        make_router: Any, nginx_server: Any) -> None:
    """The router's own 503 (Retry-After from its start-time estimate) passes through
    nginx unchanged: the site's error page is only for a router that does not answer."""
    router: Router = make_router(app="tests.apps.broken:app", env=router_env()).start()
    router.admin_call("POST", "/v1/tenants", {"name": "acme"})
    base_url = install(nginx_server, router, "nginx", "nginx-broken")
    try:
        answer = httpx.get(f"{base_url}/t/acme/", timeout=60)
        assert answer.status_code == 503
        assert "Temporarily unavailable" not in answer.text
    finally:
        nginx_server.remove_site("nginx-broken")
