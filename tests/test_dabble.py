"""The demo tenant app over HTTP, in-process: records API, bad input, sessions, the HTML page."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgpack
import pytest

from tenant import TenantContext
from tests.conftest import dabble_asgi


@pytest.fixture
def dabble_clock() -> Callable[[], float]:
    """One second later on every reading: timestamps are distinct and predictable."""
    ticks = itertools.count(1000)
    return lambda: float(next(ticks))


@pytest.fixture
async def mounted(dabble_context: TenantContext) -> AsyncIterator[httpx.AsyncClient]:
    """The app as the router serves it: under /t/acme, with root_path set."""
    transport = httpx.ASGITransport(app=dabble_asgi(), root_path="/t/acme")
    async with httpx.AsyncClient(transport=transport, base_url="http://test/t/acme") as c:
        yield c


async def add(client: httpx.AsyncClient, table: str, fields: Any) -> dict[str, Any]:
    response = await client.post(f"/api/tables/{table}/records", json=fields)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def packed(state: Any) -> bytes:
    data: bytes = msgpack.packb(state, use_bin_type=True)
    return data


# --- records -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_records_are_created_listed_and_counted(dabble_client: httpx.AsyncClient) -> None:
    assert (await dabble_client.get("/api/tables")).json() == {"tables": []}

    first = await add(dabble_client, "people",
                      {"name": "Ann", "age": 41, "tags": ["a", {"b": None}]})
    second = await add(dabble_client, "people", {"name": "Bob"})
    await add(dabble_client, "cities", {})

    assert first["id"] == 1 and second["id"] == 2
    assert first["fields"] == {"name": "Ann", "age": 41, "tags": ["a", {"b": None}]}
    assert (await dabble_client.get("/api/tables")).json() == {
        "tables": [{"name": "cities", "count": 1}, {"name": "people", "count": 2}]
    }
    got = (await dabble_client.get("/api/tables/people/records/2")).json()
    assert got["id"] == 2 and got["fields"] == {"name": "Bob"}

    listing = (await dabble_client.get("/api/tables/people/records")).json()
    assert listing["total"] == 2
    assert [(r["id"], r["fields"]["name"]) for r in listing["records"]] == [(1, "Ann"), (2, "Bob")]


@pytest.mark.anyio
async def test_listing_pages_with_offset_and_limit(dabble_client: httpx.AsyncClient) -> None:
    for n in range(150):
        await add(dabble_client, "t", {"n": n})

    default = (await dabble_client.get("/api/tables/t/records")).json()
    assert default["total"] == 150 and len(default["records"]) == 100
    page = (await dabble_client.get("/api/tables/t/records",
                                    params={"offset": 10, "limit": 3})).json()
    assert [r["fields"]["n"] for r in page["records"]] == [10, 11, 12]
    assert page["total"] == 150
    tail = (await dabble_client.get("/api/tables/t/records?offset=149&limit=1000")).json()
    assert [r["id"] for r in tail["records"]] == [150]
    past = (await dabble_client.get("/api/tables/t/records?offset=500")).json()
    assert past == {"records": [], "total": 150}
    assert (await dabble_client.get("/api/tables/t/records?limit=0")).json()["records"] == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    ["limit=1001", "limit=-1", "offset=-1", "limit=abc", "offset=1.5", "limit=", "offset=+1"],
)
async def test_bad_paging_is_a_400(dabble_client: httpx.AsyncClient, query: str) -> None:
    response = await dabble_client.get(f"/api/tables/t/records?{query}")
    assert response.status_code == 400
    assert "must be an integer" in response.json()["error"]


@pytest.mark.anyio
async def test_an_unknown_table_lists_empty(dabble_client: httpx.AsyncClient) -> None:
    response = await dabble_client.get("/api/tables/nothing/records")
    assert response.status_code == 200
    assert response.json() == {"records": [], "total": 0}
    assert (await dabble_client.get("/api/tables")).json() == {"tables": []}


@pytest.mark.anyio
async def test_patch_merges_and_null_removes_a_field(dabble_client: httpx.AsyncClient) -> None:
    created = await add(dabble_client, "t", {"a": 1, "b": 2, "c": 3})
    response = await dabble_client.patch("/api/tables/t/records/1",
                                         json={"b": "two", "c": None, "d": 4})
    assert response.status_code == 200
    updated = response.json()
    assert updated["id"] == 1
    assert updated["fields"] == {"a": 1, "b": "two", "d": 4}
    assert updated["created_at"] == created["created_at"]
    assert updated["updated_at"] > created["updated_at"]
    fetched = (await dabble_client.get("/api/tables/t/records/1")).json()
    assert fetched["fields"] == updated["fields"]


@pytest.mark.anyio
async def test_delete_then_the_record_is_gone(dabble_client: httpx.AsyncClient) -> None:
    await add(dabble_client, "t", {"a": 1})
    await add(dabble_client, "t", {"a": 2})
    response = await dabble_client.delete("/api/tables/t/records/1")
    assert response.status_code == 204 and response.content == b""
    for method in ("GET", "DELETE", "PATCH"):
        missing = await dabble_client.request(method, "/api/tables/t/records/1", json={"a": 3})
        assert missing.status_code == 404
        assert missing.json() == {"error": "no record 1 in table 't'"}
    tables = (await dabble_client.get("/api/tables")).json()
    assert tables == {"tables": [{"name": "t", "count": 1}]}
    # ids are never reused
    assert (await add(dabble_client, "t", {}))["id"] == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path",
    ["/api/tables/t/records/99", "/api/tables/nope/records/1", "/api/tables/t/records/abc"],
)
async def test_a_missing_record_is_a_404(dabble_client: httpx.AsyncClient, path: str) -> None:
    await add(dabble_client, "t", {})
    response = await dabble_client.get(path)
    assert response.status_code == 404
    assert "no record" in response.json()["error"]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "expected a JSON body"),
        (b"[1, 2]", "fields must be a JSON object, not array"),
        (b'"text"', "fields must be a JSON object, not string"),
        (b'{"x": NaN}', "numbers must be finite"),
        (b'{"x": 1e999}', "numbers must be finite"),
        (b'{"x": 100000000000000000000000}', "64-bit"),
        (b'{"": 1}', "bad field name"),
        (json.dumps({"k" * 129: 1}).encode(), "bad field name"),
        (json.dumps({f"f{i}": i for i in range(257)}).encode(), "at most 256 fields"),
        (b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}", "nest at most"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"x": "\\ud800"}', "not valid Unicode"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
async def test_bad_records_are_a_400_and_change_nothing(
    dabble_client: httpx.AsyncClient, dabble_context: TenantContext, body: bytes, error: str
) -> None:
    before = packed(dabble_context.state)
    response = await dabble_client.post(
        "/api/tables/t/records", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert packed(dabble_context.state) == before
    assert dabble_context.journal_pos == 0


@pytest.mark.anyio
@pytest.mark.parametrize("table", ["bad%20name", "a.b", "x" * 65, "%C3%A9t%C3%A9"])
async def test_bad_table_names_are_a_400(dabble_client: httpx.AsyncClient, table: str) -> None:
    for method, path in [
        ("POST", f"/api/tables/{table}/records"),
        ("GET", f"/api/tables/{table}/records"),
        ("GET", f"/api/tables/{table}/records/1"),
    ]:
        response = await dabble_client.request(method, path, json={"a": 1})
        assert response.status_code == 400, (method, path)
        assert "bad table name" in response.json()["error"]


@pytest.mark.anyio
async def test_a_too_large_json_body_is_a_413(dabble_client: httpx.AsyncClient) -> None:
    big = json.dumps({"x": "y" * (1 << 20)})
    response = await dabble_client.post("/api/tables/t/records", content=big)
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


@pytest.mark.anyio
async def test_patch_that_would_pass_the_field_limit_is_refused(
    dabble_client: httpx.AsyncClient,
) -> None:
    await add(dabble_client, "t", {f"a{i}": i for i in range(200)})
    response = await dabble_client.patch("/api/tables/t/records/1",
                                         json={f"b{i}": i for i in range(57)})
    assert response.status_code == 400
    assert "at most 256 fields" in response.json()["error"]
    assert len((await dabble_client.get("/api/tables/t/records/1")).json()["fields"]) == 200


@pytest.mark.anyio
async def test_unknown_routes_and_methods_answer_json(dabble_client: httpx.AsyncClient) -> None:
    missing = await dabble_client.get("/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = await dabble_client.put("/api/tables/t/records/1", json={})
    assert wrong.status_code == 405
    assert wrong.json() == {"error": "Method Not Allowed"}
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}


# --- sessions ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_login_me_logout(
    dabble_client: httpx.AsyncClient, dabble_context: TenantContext
) -> None:
    anonymous = await dabble_client.get("/api/me")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": "not logged in"}

    response = await dabble_client.post("/login", json={"user": "ann"})
    assert response.status_code == 200
    assert response.json() == {"user": "ann"}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("sb_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/;" in cookie + ";"
    assert (await dabble_client.get("/api/me")).json() == {"user": "ann"}
    assert [s["user"] for s in dabble_context.state["sessions"].values()] == ["ann"]

    # logging in again replaces the browser's session instead of piling them up
    await dabble_client.post("/login", json={"user": "bob"})
    assert (await dabble_client.get("/api/me")).json() == {"user": "bob"}
    assert [s["user"] for s in dabble_context.state["sessions"].values()] == ["bob"]

    out = await dabble_client.post("/logout")
    assert out.status_code == 200
    assert 'sb_session=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    assert (await dabble_client.get("/api/me")).status_code == 401
    assert dabble_context.state["sessions"] == {}
    # logging out twice, or without a session, is harmless
    assert (await dabble_client.post("/logout")).status_code == 200


@pytest.mark.anyio
async def test_a_forged_session_cookie_is_not_a_login(dabble_client: httpx.AsyncClient) -> None:
    dabble_client.cookies.set("sb_session", "x" * 43)
    assert (await dabble_client.get("/api/me")).status_code == 401
    assert (await dabble_client.post("/logout")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [{"user": ""}, {"user": "   "}, {"user": 7}, {"name": "ann"}, ["ann"], {"user": "u" * 129}],
)
async def test_bad_logins_are_a_400(
    dabble_client: httpx.AsyncClient, dabble_context: TenantContext, body: Any
) -> None:
    response = await dabble_client.post("/login", json=body)
    assert response.status_code == 400
    assert "user" in response.json()["error"]
    assert "set-cookie" not in response.headers
    assert dabble_context.state["sessions"] == {}


@pytest.mark.anyio
async def test_the_session_cookie_is_scoped_to_the_tenant(mounted: httpx.AsyncClient) -> None:
    response = await mounted.post("/login", json={"user": "ann"})
    assert "Path=/t/acme" in response.headers["set-cookie"]
    assert (await mounted.get("/api/me")).json() == {"user": "ann"}
    await mounted.post("/logout")
    assert (await mounted.get("/api/me")).status_code == 401


# --- the HTML page -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_page_builds_links_from_root_path(mounted: httpx.AsyncClient) -> None:
    await mounted.post("/api/tables/people/records", json={"name": "Ann"})
    response = await mounted.get("/", params={"table": "people"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'data-root="/t/acme"' in html
    assert 'data-table="people"' in html
    assert 'href="/t/acme/?table=people"' in html
    assert 'href="/t/acme/"' in html
    assert "<td>Ann</td>" in html
    assert not re.search(r'href="/(?!t/acme/)', html), "a link that leaves the tenant's mount"


@pytest.mark.anyio
async def test_the_page_without_a_mount_links_from_the_root(
    dabble_client: httpx.AsyncClient,
) -> None:
    await add(dabble_client, "people", {"name": "Ann"})
    html = (await dabble_client.get("/")).text
    assert 'data-root=""' in html
    assert 'href="/?table=people"' in html
    assert "No tables yet" not in html
    assert "Choose a table" in html


@pytest.mark.anyio
async def test_the_page_escapes_user_data(dabble_client: httpx.AsyncClient) -> None:
    evil = '<script>alert("x")</script>'
    await add(dabble_client, "t", {evil: evil, "note": "</textarea><b>&"})
    await dabble_client.post("/login", json={"user": "<i>ann</i>"})
    response = await dabble_client.get("/?table=t")
    html = response.text
    assert evil not in html and "<i>ann</i>" not in html and "</textarea><b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;i&gt;ann&lt;/i&gt;" in html
    nonce = re.search(r"script-src 'nonce-([^']+)'", response.headers["content-security-policy"])
    assert nonce is not None
    assert f'<script nonce="{nonce.group(1)}">' in html
    assert html.count("<script") == 1


@pytest.mark.anyio
async def test_the_page_shows_records_pages_and_a_bad_table_name(
    dabble_client: httpx.AsyncClient,
) -> None:
    for n in range(120):
        await add(dabble_client, "t", {"n": n})
    first = (await dabble_client.get("/?table=t")).text
    assert "1-100 of 120" in first and 'href="/?table=t&amp;offset=100"' in first
    second = (await dabble_client.get("/?table=t&offset=100")).text
    assert "101-120 of 120" in second and 'href="/?table=t&amp;offset=0"' in second
    assert "No records here" in (await dabble_client.get("/?table=empty")).text
    bad = await dabble_client.get("/?table=<x>")
    assert bad.status_code == 200
    assert "No table can be named &#x27;&lt;x&gt;&#x27;" in bad.text
