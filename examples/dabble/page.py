"""The HTML page at GET / to browse and edit tables (runs in the tenant worker).

Rendered on the server; a little vanilla JavaScript calls the JSON API for writes. The app is
mounted under `/t/<tenant>`, so every URL starts with the request's root_path, which reaches the
script through the `data-root` attribute (never spliced into code). Every piece of user data
passes through html.escape. The Content-Security-Policy allows only this page's own script and
style, by a nonce drawn per request. The page declares an empty `data:` icon: otherwise browsers
ask the router for `/favicon.ico` (outside any tenant) and log its 404 as an error on every load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode

PAGE_SIZE = 100
MAX_COLUMNS = 24
MAX_CELL_CHARS = 120


@dataclass(frozen=True)
class PageView:
    """Everything the page shows; built by the endpoint from the tenant's state."""

    root: str  # the request's root_path without a trailing slash: "" or "/t/acme"
    tenant: str
    nonce: str
    user: str | None = None
    tables: list[dict[str, Any]] = field(default_factory=list)
    table: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    offset: int = 0
    notice: str | None = None


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            # data: only for the page's empty icon (see the module docstring).
            "img-src 'self' data:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def page_url(root: str, **query: str | int) -> str:
    return f"{root}/" + (f"?{urlencode(query)}" if query else "")


def render_page(view: PageView) -> str:
    e = escape
    title = f"Dabble · {view.tenant}"
    notice = f'<p class="notice">{e(view.notice)}</p>' if view.notice else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<link rel="icon" href="data:,">
<style nonce="{e(view.nonce)}">{_CSS}</style>
</head>
<body data-root="{e(view.root)}" data-table="{e(view.table or "")}">
<header>
<h1><a href="{e(page_url(view.root))}">Dabble</a> <span class="tenant">{e(view.tenant)}</span></h1>
{_render_auth(view.user)}
</header>
{notice}
<p id="message" class="notice" role="status" hidden></p>
<main>
{_render_tables(view)}
<section>
{_render_records(view)}
{_render_add_form(view.table)}
</section>
</main>
<script nonce="{e(view.nonce)}">{_JS}</script>
</body>
</html>
"""


def _render_auth(user: str | None) -> str:
    if user is not None:
        return (
            f'<div class="auth">Signed in as <b>{escape(user)}</b> '
            '<button type="button" id="logout">Log out</button></div>'
        )
    return (
        '<form class="auth" id="login"><input name="user" placeholder="your name" required '
        'maxlength="128" aria-label="user name"> <button>Log in</button></form>'
    )


def _render_tables(view: PageView) -> str:
    if not view.tables:
        items = "<p>No tables yet: add a record to create one.</p>"
    else:
        rows = []
        for entry in view.tables:
            name = entry["name"]
            current = ' aria-current="page"' if name == view.table else ""
            href = page_url(view.root, table=name)
            rows.append(
                f'<li><a href="{escape(href)}"{current}>{escape(name)}</a> '
                f'<span class="count">{int(entry["count"])}</span></li>'
            )
        items = '<ul class="tables">' + "".join(rows) + "</ul>"
    return f"<nav><h2>Tables</h2>{items}</nav>"


def _render_records(view: PageView) -> str:
    if view.table is None:
        return "<p>Choose a table, or add a record to start one.</p>"
    noun = "record" if view.total == 1 else "records"
    heading = f"<h2>{escape(view.table)} <small>{view.total} {noun}</small></h2>"
    if not view.records:
        return heading + "<p>No records here.</p>"
    columns: list[str] = []
    for record in view.records:
        for key in record["fields"]:
            if key not in columns and len(columns) < MAX_COLUMNS:
                columns.append(key)
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join(_render_row(record, columns) for record in view.records)
    table = f"<table><thead><tr><th>id</th>{head}<th></th></tr></thead><tbody>{body}</tbody>"
    return heading + table + "</table>" + _render_pager(view)


def _render_row(record: dict[str, Any], columns: list[str]) -> str:
    fields = record["fields"]
    cells = "".join(
        f"<td>{escape(_cell_text(fields[column]))}</td>" if column in fields else "<td></td>"
        for column in columns
    )
    record_id = int(record["id"])
    source = json.dumps(fields, indent=2, ensure_ascii=False)
    return (
        f'<tr data-id="{record_id}"><td>{record_id}</td>{cells}<td class="actions">'
        '<button type="button" class="edit">Edit</button> '
        '<button type="button" class="delete">Delete</button></td></tr>'
        f'<tr class="editor" hidden><td colspan="{len(columns) + 2}">'
        f'<textarea rows="6" aria-label="fields of record {record_id}">{escape(source)}</textarea>'
        '<button type="button" class="save">Save</button> '
        '<button type="button" class="cancel">Cancel</button></td></tr>'
    )


def _cell_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _render_pager(view: PageView) -> str:
    assert view.table is not None
    links = []
    if view.offset > 0:
        previous = page_url(view.root, table=view.table, offset=max(0, view.offset - PAGE_SIZE))
        links.append(f'<a href="{escape(previous)}">&larr; previous</a>')
    if view.offset + PAGE_SIZE < view.total:
        following = page_url(view.root, table=view.table, offset=view.offset + PAGE_SIZE)
        links.append(f'<a href="{escape(following)}">next &rarr;</a>')
    last = min(view.total, view.offset + len(view.records))
    shown = f"{view.offset + 1}-{last} of {view.total}"
    return f'<p class="pager">{shown} {" ".join(links)}</p>'


def _render_add_form(table: str | None) -> str:
    return f"""<h2>Add a record</h2>
<form id="add">
<label>Table <input name="table" value="{escape(table or "")}" required maxlength="64"
 pattern="[A-Za-z0-9_\\-]+" title="letters, digits, _ and -"></label>
<div id="fields"><div class="field"><input class="key" placeholder="field" maxlength="128"
 aria-label="field name"> <input class="value" placeholder="value" aria-label="value"></div></div>
<button type="button" id="more">+ field</button> <button>Add record</button>
<p class="hint">A value is read as JSON when it parses (42, true, [1, 2]), as text otherwise.</p>
</form>"""


_CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 0 1rem; }
header { display: flex; justify-content: space-between; align-items: center; }
header h1 a { color: inherit; text-decoration: none; }
.tenant { color: #666; font-weight: normal; font-size: 1rem; }
main { display: grid; grid-template-columns: 14rem 1fr; gap: 2rem; }
.tables { list-style: none; padding: 0; }
.tables a[aria-current] { font-weight: bold; }
.count { color: #666; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }
td { vertical-align: top; }
textarea { width: 100%; font-family: monospace; }
.notice { background: #fee; border: 1px solid #c99; padding: .5rem; }
.hint { color: #666; font-size: .9rem; }
.field { margin: .3rem 0; }
"""

_JS = """
"use strict";
const root = document.body.dataset.root;
const currentTable = document.body.dataset.table;
const message = document.getElementById("message");

function show(text) { message.textContent = text; message.hidden = false; }
function recordsPath(table) { return "/api/tables/" + encodeURIComponent(table) + "/records"; }
function go(table) { location.href = root + "/?table=" + encodeURIComponent(table); }
function parseValue(text) { try { return JSON.parse(text); } catch (error) { return text; } }
function act(fn) {
  return (event) => {
    event.preventDefault();
    message.hidden = true;  // what the page says is about the latest action, not an earlier one
    fn(event).catch((error) => show(error.message));
  };
}
async function call(method, path, body) {
  const options = {method, headers: {}, credentials: "same-origin"};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(root + path, options);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((data && data.error) || response.status + " " + response.statusText);
  }
  return data;
}

const login = document.getElementById("login");
if (login) login.addEventListener("submit", act(async () => {
  await call("POST", "/login", {user: login.elements.user.value});
  location.reload();
}));
const logout = document.getElementById("logout");
if (logout) logout.addEventListener("click", act(async () => {
  await call("POST", "/logout");
  location.reload();
}));

const fieldsBox = document.getElementById("fields");
document.getElementById("more").addEventListener("click", () => {
  const row = fieldsBox.firstElementChild.cloneNode(true);
  for (const input of row.querySelectorAll("input")) input.value = "";
  fieldsBox.appendChild(row);
});
const add = document.getElementById("add");
add.addEventListener("submit", act(async () => {
  const table = add.elements.table.value.trim();
  const fields = {};
  for (const row of fieldsBox.children) {
    const key = row.querySelector(".key").value.trim();
    if (key) fields[key] = parseValue(row.querySelector(".value").value);
  }
  await call("POST", recordsPath(table), fields);
  go(table);
}));

for (const row of document.querySelectorAll("tr[data-id]")) {
  const path = recordsPath(currentTable) + "/" + row.dataset.id;
  const editor = row.nextElementSibling;
  const textarea = editor.querySelector("textarea");
  row.querySelector(".edit").addEventListener("click", () => { editor.hidden = !editor.hidden; });
  editor.querySelector(".cancel").addEventListener("click", () => { editor.hidden = true; });
  row.querySelector(".delete").addEventListener("click", act(async () => {
    if (!confirm("Delete record " + row.dataset.id + "?")) return;
    await call("DELETE", path);
    location.reload();
  }));
  editor.querySelector(".save").addEventListener("click", act(async () => {
    let fields;
    try { fields = JSON.parse(textarea.value); }
    catch (error) { throw new Error("the fields are not valid JSON: " + error.message); }
    if (fields === null || typeof fields !== "object" || Array.isArray(fields)) {
      throw new Error("the fields must be a JSON object");
    }
    // PATCH merges; a field removed in the editor is sent as null, which deletes it.
    const patch = Object.assign({}, fields);
    for (const key of Object.keys(JSON.parse(textarea.defaultValue))) {
      if (!(key in fields)) patch[key] = null;
    }
    await call("PATCH", path, patch);
    location.reload();
  }));
}
"""
