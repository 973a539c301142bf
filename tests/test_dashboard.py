"""The operator dashboard (switchboard/dashboard/) on a real router, in a real headless Chromium.

The operator runs `switchboard dashboard`, opens the one-time URL it prints, sees the tenants,
clicks "checkpoint" and watches the snapshot age change as the page polls. Around that: the
URL works once, a POST without the page's CSRF token is refused, nothing of the dashboard is
reachable without the session cookie, and a page of a 10,000-tenant host renders quickly.
"""

from __future__ import annotations

import contextlib
import html
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard.dashboard import Sessions
from switchboard.dashboard.sessions import LOGIN_TOKEN_TTL_S, MAX_PENDING_TOKENS
from tests.cdp import Chromium, DevTools, Page
from tests.conftest import Router

LOAD_TIMEOUT_S = 60  # two cores shared with other test runs: a cold renderer can be slow


@pytest.fixture
def hosted(make_router: Callable[..., Router]) -> Router:
    """A router with three tenants; acme is running and has a change not yet snapshotted."""
    router = make_router().start()
    router.create("acme", "globex", "initech")
    with router.client() as http:
        http.post("/t/acme/api/tables/people/records",
                  json={"name": "Ada"}).raise_for_status()
    return router


def login_url(router: Router) -> str:
    url = router.cli("dashboard").stdout.strip()
    assert url.startswith(f"{router.admin}/dashboard/login?token="), url
    return url


@contextlib.contextmanager
def signed_in(router: Router) -> Iterator[httpx.Client]:
    """An httpx client holding a dashboard session, as a browser would after the login URL."""
    with httpx.Client(base_url=router.admin, timeout=60, trust_env=False) as client:
        response = client.get(login_url(router))
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/"
        yield client


def csrf_of(page_html: str) -> str:
    marker = '<meta name="csrf-token" content="'
    start = page_html.index(marker) + len(marker)
    return page_html[start:page_html.index('"', start)]


# --- in the browser ----------------------------------------------------------------------------


def element(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})"


def listed(page: Page) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = page.evaluate(
        """Object.fromEntries([...document.querySelectorAll("#rows tr[data-name]")].map((tr) =>
               [tr.dataset.name, {state: tr.querySelector(".state").textContent,
                                  snapshot: tr.querySelector(".snapshot").textContent}]))""")
    return rows


def assert_no_page_errors(page: Page) -> None:
    exceptions = page.events("Runtime.exceptionThrown")
    assert exceptions == [], json.dumps(exceptions, indent=1)[:3000]
    # The one failed load expected is the forged POST's 403.
    logged = page.events("Log.entryAdded", lambda e: e["entry"]["level"] == "error"
                         and "status of 403" not in e["entry"]["text"])
    logged += page.events("Runtime.consoleAPICalled", lambda e: e["type"] in ("error", "assert"))
    assert logged == [], json.dumps(logged, indent=1)[:3000]


def test_an_operator_signs_in_and_checkpoints_a_tenant_in_chromium(
        hosted: Router, devtools: DevTools, tmp_path: Path) -> None:
    url = login_url(hosted)
    page = Page.open(devtools)
    page.navigate(url)
    page.wait_for(f'location.pathname === "/dashboard/" && document.readyState === "complete"'
                  f' && !!{element("#rows tr[data-name]")}',
                  LOAD_TIMEOUT_S, "the tenant list after the login URL")
    assert page.evaluate("document.title") == "Switchboard · tenants"
    rows = listed(page)
    assert list(rows) == ["acme", "globex", "initech"]
    assert rows["acme"] == {"state": "running", "snapshot": "never"}
    assert rows["globex"]["state"] == "stopped"

    cookies: list[dict[str, Any]] = page.send("Network.getCookies")["cookies"]
    [cookie] = [c for c in cookies if c["name"] == "sb_dashboard"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict",
                                                                         "/dashboard")
    assert page.evaluate("document.cookie") == ""
    # Same host, other port: the router's tenants never get it (cookies ignore ports).
    def cookies_for(url: str) -> list[str]:
        return [c["name"] for c in page.send("Network.getCookies", {"urls": [url]})["cookies"]]

    assert cookies_for(f"{hosted.admin}/dashboard/t/acme") == ["sb_dashboard"]
    assert cookies_for(f"{hosted.url}/t/acme/") == []
    assert cookies_for(f"{hosted.url}/dashboard/") == ["sb_dashboard"]
    with hosted.client() as router_port:  # ...which answers there itself, never a tenant
        assert router_port.get("/dashboard/").status_code == 404

    # The page's script posts the action with its token and redraws the row.
    page.evaluate("window.__sbSame = true")
    page.evaluate(f'{element("tr[data-name=acme] button.checkpoint")}.click()')
    age = page.wait_for(
        """(() => { const cell = document.querySelector("tr[data-name=acme] .snapshot");
                    return cell && cell.textContent !== "never" && cell.textContent; })()""",
        LOAD_TIMEOUT_S, "acme's snapshot age after checkpoint")
    assert age.endswith(" s ago"), age
    assert page.evaluate("window.__sbSame") is True  # updated in place, not reloaded
    said = page.wait_for(f'!{element("#message")}.hidden && {element("#message")}.textContent',
                         LOAD_TIMEOUT_S, "the checkpoint's message")
    assert said.startswith("acme: snapshot generation ")
    assert hosted.info("acme")["last_checkpoint_at"] is not None
    screenshot = page.screenshot(tmp_path / "dashboard-tenants.png")
    print(f"dashboard screenshot: {screenshot}")
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # A script of the page that forgets the token is refused like a cross-site form.
    forged = page.evaluate(
        'fetch("/dashboard/t/globex/start", {method: "POST"}).then((r) => r.status)')
    assert forged == 403
    assert hosted.info("globex")["state"] == "stopped"

    # The tenant page shows every field, live.
    page.evaluate(f'{element("tr[data-name=acme] .name a")}.click()')
    page.wait_for(f'location.pathname === "/dashboard/t/acme" && !!{element("dl.fields")}'
                  ' && document.readyState === "complete"',
                  LOAD_TIMEOUT_S, "acme's page")
    shown = page.evaluate("""Object.fromEntries([...document.querySelectorAll("dd")].map(
                              (dd) => [dd.dataset.field, dd.textContent]))""")
    info = hosted.info("acme")
    assert set(shown) == set(info)
    assert shown["pid"] == str(info["pid"]) and shown["generation"] == str(info["generation"])
    page.evaluate(f'{element(".actions button.stop")}.click()')
    page.wait_for(f'{element("h1 .badge")}.textContent === "stopped"', LOAD_TIMEOUT_S,
                  "acme stopped on its page")
    assert hosted.state("acme") == "stopped"
    page.wait_for(f'{element(".actions button.start")}.disabled === false', LOAD_TIMEOUT_S,
                  "the start button enabled once acme stopped")
    assert page.evaluate(f'{element(".actions button.stop")}.disabled') is True
    print(f"tenant page screenshot: {page.screenshot(tmp_path / 'dashboard-acme.png')}")

    assert_no_page_errors(page)

    # The login URL was spent by the browser.
    with httpx.Client(trust_env=False, timeout=30) as other:
        assert other.get(url).status_code == 403


# --- over HTTP ---------------------------------------------------------------------------------


def test_a_login_url_works_once(router: Router) -> None:
    url = login_url(router)
    with httpx.Client(trust_env=False, timeout=30) as first:
        response = first.get(url)
        assert response.status_code == 303
        set_cookie = response.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert first.get(f"{router.admin}/dashboard/").status_code == 200
    with httpx.Client(trust_env=False, timeout=30) as second:
        again = second.get(url)
        assert again.status_code == 403 and "already used" in again.text
        assert second.get(f"{router.admin}/dashboard/login?token=guess").status_code == 403


def test_a_login_token_expires_and_sessions_are_separate() -> None:
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    late = sessions.issue_login_token()
    now[0] += LOGIN_TOKEN_TTL_S
    assert sessions.redeem(late) is None  # expired
    fresh = sessions.issue_login_token()
    cookie = sessions.redeem(fresh)
    assert cookie is not None and sessions.redeem(fresh) is None  # spent
    other = sessions.redeem(sessions.issue_login_token())
    first, second = sessions.get(cookie), sessions.get(other)
    assert first is not None and second is not None and first.csrf != second.csrf
    sessions.end(cookie)
    assert sessions.get(cookie) is None and sessions.get(other) is not None
    # A flood of unused tokens pushes out the oldest; it never grows without bound.
    tokens = [sessions.issue_login_token() for _ in range(MAX_PENDING_TOKENS + 1)]
    assert sessions.redeem(tokens[0]) is None and sessions.redeem(tokens[-1]) is not None


def test_an_action_without_the_csrf_token_is_403(hosted: Router) -> None:
    with signed_in(hosted) as browser:
        token = csrf_of(browser.get("/dashboard/").text)
        assert browser.post("/dashboard/t/globex/start").status_code == 403
        assert browser.post("/dashboard/t/globex/start",
                            data={"csrf": "x" * len(token)}).status_code == 403
        assert browser.post("/dashboard/t/globex/start",
                            headers={"X-CSRF-Token": "nope"}).status_code == 403
        assert hosted.state("globex") == "stopped"
        # A token of another session does not do either.
        with signed_in(hosted) as other:
            assert other.post("/dashboard/t/globex/start",
                              data={"csrf": token}).status_code == 403
        # The page's own token does; without a script the form redirects back.
        done = browser.post("/dashboard/t/globex/start", data={"csrf": token})
        assert done.status_code == 303
        assert hosted.state("globex") == "running"
        # Signing out is an action too.
        assert browser.post("/dashboard/logout").status_code == 403
        assert browser.get("/dashboard/").status_code == 200
        assert browser.post("/dashboard/logout", data={"csrf": token}).status_code == 303
        assert browser.get("/dashboard/").headers["location"] == "/dashboard/signin"


def test_without_a_session_nothing_of_the_dashboard_is_served(hosted: Router) -> None:
    with httpx.Client(base_url=hosted.admin, trust_env=False, timeout=30) as anonymous:
        assert anonymous.get("/").headers["location"] == "/dashboard/"
        for path in ("/dashboard/", "/dashboard/t/acme", "/dashboard/?page=2"):
            response = anonymous.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == "/dashboard/signin"
        signin = anonymous.get("/dashboard/signin")
        assert signin.status_code == 200 and "switchboard dashboard" in signin.text
        assert anonymous.get("/dashboard/rows").status_code == 403
        assert anonymous.post("/dashboard/t/acme/stop", data={"csrf": "x"}).status_code == 403
        assert anonymous.get("/v1/tenants").status_code == 401  # the API stays signed
        assert anonymous.post("/v1/dashboard/login-url").status_code == 401
    assert hosted.state("acme") == "running"


def test_a_tenant_page_shows_its_log_tail(make_router: Callable[..., Router]) -> None:
    router = make_router(app="tests.apps.chatty:app").start()
    router.create("talker")
    with router.client() as http:
        for text in ("hello-dashboard", "<b>not bold</b>"):
            http.get("/t/talker/say", params={"text": text}).raise_for_status()
    with signed_in(router) as browser:
        deadline = time.monotonic() + 30
        last_line = "raw &lt;b&gt;not bold&lt;/b&gt;"  # a worker's fd 2, escaped
        while last_line not in (page := browser.get("/dashboard/t/talker").text):
            assert time.monotonic() < deadline, page[-2000:]
            time.sleep(0.05)
        log = page[page.index('<pre class="log">'):]
        assert "hello-dashboard" in log and "<b>" not in log  # escaped, not markup
        assert router.cli("logs", "talker").stdout.splitlines()[-1] in html.unescape(log)
        assert "raw hello-dashboard" in browser.get("/dashboard/t/talker/fields").json()["html"]


def test_the_list_sorts_and_pages(make_router: Callable[..., Router]) -> None:
    router = make_router().start()
    names = [f"t{i:03d}" for i in range(150)]
    router.create(*names)
    with signed_in(router) as browser:
        first = browser.get("/dashboard/").text
        assert first.count("<tr data-name=") == 100 and "page 1 of 2 · 150 tenants" in first
        second = browser.get("/dashboard/?page=2").text
        assert second.count("<tr data-name=") == 50 and 't149"' in second
        backwards = browser.get("/dashboard/rows?sort=name&order=desc").json()
        assert backwards["html"].index('data-name="t149"') < backwards["html"].index(
            'data-name="t148"')
        assert (backwards["total"], backwards["pages"]) == (150, 2)


@pytest.mark.slow
def test_a_page_of_ten_thousand_tenants_renders_quickly(
        make_router: Callable[..., Router], tmp_path: Path) -> None:
    router = make_router().start()
    names = [f"tenant-{i:05d}" for i in range(10_000)]
    for start in range(0, len(names), 2_000):
        router.cli("create", *names[start:start + 2_000], timeout=600)
    with signed_in(router) as browser:
        for path in ("/dashboard/", "/dashboard/?sort=snapshot&order=desc&page=57",
                     "/dashboard/rows?page=100"):
            started = time.monotonic()
            response = browser.get(path)
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert response.text.count("<tr data-name=") == 100, path
            print(f"{path}: {len(response.content)} bytes in {elapsed * 1000:.0f} ms")
            assert elapsed < 1.0, f"{path} took {elapsed:.2f}s"
        assert "page 1 of 100 · 10000 tenants" in browser.get("/dashboard/").text
    chromium = Chromium(tmp_path / "chromium")
    try:
        with DevTools.connect(chromium.start()) as devtools:
            page = Page.open(devtools)
            started = time.monotonic()
            page.navigate(login_url(router))
            page.wait_for('location.pathname === "/dashboard/"'
                          ' && document.readyState === "complete"'
                          ' && document.querySelectorAll("#rows tr[data-name]").length === 100',
                          LOAD_TIMEOUT_S, "the first page of 10,000 tenants")
            print(f"first page in Chromium after {time.monotonic() - started:.2f}s")
            page.evaluate(f'{element("a[rel=next]")}.click()')
            page.wait_for(f'location.search.includes("page=2") && {element("#rows tr")}'
                          '?.dataset.name === "tenant-00100"', LOAD_TIMEOUT_S, "page 2")
            print(f"screenshot: {page.screenshot(tmp_path / 'dashboard-10000.png')}")
            assert_no_page_errors(page)
    finally:
        chromium.stop()
