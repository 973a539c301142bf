"""The demo page in a real headless Chromium, through a real `switchboard serve` router.

Chromium is driven over the DevTools protocol (tests/cdp.py) the way a user drives the page: read
the table list, open a table, add a record through the form, edit it, delete it. Every change
is checked on the page and again through the JSON API, and the page must not throw or log a
single JavaScript error along the way (its script has no other test that runs it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cdp import DevTools, Page
from tests.conftest import Router

LOAD_TIMEOUT_S = 60  # two cores shared with other test runs: a cold renderer can be slow
STALE = "window.__sbStale"  # set on a document to tell it from the one that replaces it
MESSAGE_SHOWN = """(() => {
    const message = document.getElementById("message");
    return !message.hidden && message.textContent;
})()"""


@pytest.fixture
def acme(make_router: Callable[..., Router]) -> Iterator[Router]:
    """A router serving the demo app, with tenant acme holding two tables."""
    router = make_router().start()
    router.create("acme")
    with router.client() as http:
        for table, fields in [("people", {"name": "Ada", "born": 1815}),
                              ("people", {"name": "Alan", "born": 1912}),
                              ("projects", {"title": "Analytical Engine"})]:
            http.post(f"/t/acme/api/tables/{table}/records", json=fields).raise_for_status()
    yield router


# --- what a user does ----------------------------------------------------------------------


def fill(selector: str, value: str) -> str:
    """JS that types `value` into the element at `selector`, as input events announce it."""
    return (f"(() => {{ const el = {element(selector)};"
            f" el.value = {json.dumps(value)};"
            " el.dispatchEvent(new Event('input', {bubbles: true}));"
            " el.dispatchEvent(new Event('change', {bubbles: true})); })()")


def element(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})"


def click(selector: str) -> str:
    return f"{element(selector)}.click()"


def click_soon(selector: str) -> str:
    """JS that clicks on the next tick: a dialog the click opens (confirm) blocks the page's
    script, and would otherwise block the evaluate that sent the click until it is answered."""
    return f"setTimeout(() => {element(selector)}.click()), true"


@contextlib.contextmanager
def new_page_after(page: Page, what: str) -> Iterator[None]:
    """The body should make the page load a new document (a link, a reload): wait for it. Fails
    at once, with the page's own message, if the body's action reported an error instead."""
    page.evaluate(f"{STALE} = true")
    yield
    state = page.wait_for(
        f"""(() => {{
            if (!{STALE} && document.readyState === "complete") return {{loaded: true}};
            const message = document.getElementById("message");
            if ({STALE} && message && !message.hidden) return {{error: message.textContent}};
            return null;
        }})()""",
        LOAD_TIMEOUT_S, what)
    assert "error" not in state, f"{what}: the page said {state['error']!r}"


def table_list(page: Page) -> list[list[str]]:
    rows: list[list[str]] = page.evaluate(
        """[...document.querySelectorAll("nav .tables li")].map((li) =>
               [li.querySelector("a").textContent, li.querySelector(".count").textContent])""")
    return rows


def shown_rows(page: Page) -> dict[str, dict[str, str]]:
    """The record table as the user reads it: {id: {column: cell text}}."""
    rows: dict[str, dict[str, str]] = page.evaluate(
        """(() => {
            const table = document.querySelector("main table");
            if (!table) return {};
            const columns = [...table.tHead.rows[0].cells].map((th) => th.textContent);
            const rows = {};
            for (const tr of table.querySelectorAll("tr[data-id]")) {
                const cells = {};
                [...tr.cells].forEach((td, i) => {
                    if (columns[i]) cells[columns[i]] = td.textContent;
                });
                rows[tr.dataset.id] = cells;
            }
            return rows;
        })()""")
    return rows


def heading(page: Page) -> str:
    text: str = page.evaluate(f'{element("main section h2")}.textContent')
    return text


def assert_no_page_errors(page: Page) -> None:
    """Nothing went wrong in the page's script, nor in anything the browser logged (a failed
    load, a Content-Security-Policy violation, a console.error)."""
    exceptions = page.events("Runtime.exceptionThrown")
    assert exceptions == [], json.dumps(exceptions, indent=1)[:3000]
    logged = page.events("Log.entryAdded", lambda e: e["entry"]["level"] == "error")
    logged += page.events("Runtime.consoleAPICalled", lambda e: e["type"] in ("error", "assert"))
    assert logged == [], json.dumps(logged, indent=1)[:3000]


def session_cookies(page: Page) -> list[dict[str, Any]]:
    cookies: list[dict[str, Any]] = page.send("Network.getCookies")["cookies"]
    return [c for c in cookies if c["name"] == "sb_session"]


def api_records(router: Router, table: str) -> dict[int, dict[str, Any]]:
    with router.client() as http:
        response = http.get(f"/t/acme/api/tables/{table}/records")
    response.raise_for_status()
    return {r["id"]: r["fields"] for r in response.json()["records"]}


def row(record_id: int) -> str:
    return f'tr[data-id="{record_id}"]'


# --- the test ------------------------------------------------------------------------------


def test_a_user_browses_adds_edits_and_deletes_a_record_in_chromium(
        acme: Router, devtools: DevTools, tmp_path: Path) -> None:
    page = Page.open(devtools)
    page.navigate(f"{acme.url}/t/acme/")
    page.wait_for(f'document.readyState === "complete" && !!{element("nav")}',
                  LOAD_TIMEOUT_S, "the home page")
    assert page.evaluate("document.title") == "Dabble · acme"
    assert table_list(page) == [["people", "2"], ["projects", "1"]]

    # Open a table by its link.
    with new_page_after(page, "the people table"):
        page.evaluate(click('nav a[href$="table=people"]'))
    assert page.evaluate("location.pathname + location.search") == "/t/acme/?table=people"
    assert heading(page) == "people 2 records"
    assert shown_rows(page) == {"1": {"id": "1", "name": "Ada", "born": "1815"},
                                "2": {"id": "2", "name": "Alan", "born": "1912"}}

    # Add a record through the form: the table is filled in, a second field row is one click away.
    assert page.evaluate(f"{element('#add [name=table]')}.value") == "people"
    page.evaluate(fill("#fields .field:nth-child(1) .key", "name"))
    page.evaluate(fill("#fields .field:nth-child(1) .value", "Grace"))
    page.evaluate(click("#more"))
    assert page.evaluate('document.querySelectorAll("#fields .field").length') == 2
    page.evaluate(fill("#fields .field:nth-child(2) .key", "born"))
    page.evaluate(fill("#fields .field:nth-child(2) .value", "1906"))
    with new_page_after(page, "the page after adding a record"):
        page.evaluate(click("#add button:not([type])"))
    assert heading(page) == "people 3 records"
    assert shown_rows(page)["3"] == {"id": "3", "name": "Grace", "born": "1906"}
    assert table_list(page) == [["people", "3"], ["projects", "1"]]
    assert api_records(acme, "people")[3] == {"name": "Grace", "born": 1906}  # "1906" read as JSON

    # Edit it: the editor shows the record's fields as JSON; dropping a field removes it.
    page.evaluate(click(f"{row(3)} .edit"))
    editor = f"{row(3)} + tr.editor"
    assert page.evaluate(f"{element(editor)}.hidden") is False
    source = page.evaluate(f"{element(editor + ' textarea')}.value")
    assert json.loads(source) == {"name": "Grace", "born": 1906}
    page.evaluate(fill(f"{editor} textarea", '{"name": "Grace Hopper",'))  # a typo first
    page.evaluate(click(f"{editor} .save"))
    said = page.wait_for(MESSAGE_SHOWN, LOAD_TIMEOUT_S, "the typo")
    assert said.startswith("the fields are not valid JSON: ")
    assert api_records(acme, "people")[3] == {"name": "Grace", "born": 1906}
    page.evaluate(fill(f"{editor} textarea", '{"name": "Grace Hopper", "lang": "COBOL"}'))
    screenshot = page.screenshot(tmp_path / "dabble-people.png")
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with new_page_after(page, "the page after saving an edit"):
        page.evaluate(click(f"{editor} .save"))
    assert shown_rows(page)["3"] == {"id": "3", "name": "Grace Hopper", "born": "", "lang": "COBOL"}
    assert api_records(acme, "people")[3] == {"name": "Grace Hopper", "lang": "COBOL"}

    # Delete it: the page asks first; Cancel keeps the record, OK deletes it.
    mark = devtools.mark()
    page.evaluate(click_soon(f"{row(3)} .delete"))
    dialog = page.wait_event("Page.javascriptDialogOpening", since=mark)["params"]
    assert (dialog["type"], dialog["message"]) == ("confirm", "Delete record 3?")
    page.send("Page.handleJavaScriptDialog", {"accept": False})
    assert page.evaluate(f"!!{element(row(3))}")
    assert 3 in api_records(acme, "people")

    mark = devtools.mark()
    with new_page_after(page, "the page after deleting a record"):
        page.evaluate(click_soon(f"{row(3)} .delete"))
        page.wait_event("Page.javascriptDialogOpening", since=mark)
        page.send("Page.handleJavaScriptDialog", {"accept": True})
    assert heading(page) == "people 2 records"
    assert set(shown_rows(page)) == {"1", "2"}
    assert table_list(page) == [["people", "2"], ["projects", "1"]]
    assert set(api_records(acme, "people")) == {1, 2}

    assert_no_page_errors(page)


def test_a_user_logs_in_and_out_in_chromium(acme: Router, devtools: DevTools) -> None:
    """The session cookie as a real browser keeps it: sent under /t/acme, hidden from scripts."""
    page = Page.open(devtools)
    page.navigate(f"{acme.url}/t/acme/")
    page.wait_for(f'document.readyState === "complete" && !!{element("#login")}',
                  LOAD_TIMEOUT_S, "the home page with its login form")
    assert session_cookies(page) == []

    page.evaluate(fill("#login [name=user]", "Ada"))
    with new_page_after(page, "the page after logging in"):
        page.evaluate(click("#login button"))
    # The server rendered this from the cookie, so the browser sent it back on the reload.
    assert page.evaluate(f'{element("header .auth")}.textContent') == (
        "Signed in as Ada Log out")
    [cookie] = session_cookies(page)
    assert (cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == ("/t/acme", True, "Lax")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it

    with new_page_after(page, "the page after logging out"):
        page.evaluate(click("#logout"))
    assert page.evaluate(f'!!{element("#login")}')
    assert session_cookies(page) == []

    assert_no_page_errors(page)
