"""The dashboard's HTML, rendered on the server (switchboard/dashboard): the page layout, the
tenant rows with their action forms, the pager and sortable headers, a tenant's fields.

Everything that comes from a tenant or a query is escaped here; the page's script only swaps
in fragments rendered by these functions.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request

from switchboard.api import TenantInfo

HOME = "/dashboard/"  # the tenant list; `/` redirects here
PAGE_SIZE = 100
ACTIONS = ("checkpoint", "stop", "start")
SORT_KEYS = {
    "name": "name", "state": "state", "memory": "rss_bytes",
    "request": "last_request_at", "snapshot": "last_checkpoint_at",
}  # fmt: skip
SIGNIN = """<section class="signin"><h1>Sign in</h1><p>{lead}</p>
<p>Run <code>switchboard dashboard</code> on the host (with the admin key) and open the
one-time login URL it prints.</p></section>"""



def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = max(0, int(now - when))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _field_text(name: str, value: Any, now: float) -> str:
    if value is None or value == []:
        return "-"
    if name.endswith("_at") and isinstance(value, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        return f"{_ago(value, now)} ({stamp})"
    if name == "rss_bytes":
        return _bytes(value)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Listing:
    """One page of the tenant list, as asked for in the query string (bad values: defaults)."""

    page: int
    sort: str
    descending: bool

    @classmethod
    def from_query(cls, request: Request) -> Listing:
        sort = request.query_params.get("sort", "name")
        page = request.query_params.get("page", "1")
        return cls(int(page) if page.isdigit() and int(page) > 0 else 1,
                   sort if sort in SORT_KEYS else "name",
                   request.query_params.get("order") == "desc")

    def query(self, **changes: Any) -> str:
        values = {"page": self.page, "sort": self.sort,
                  "order": "desc" if self.descending else "asc", **changes}
        return "?" + urlencode(values)

    def slice(self, tenants: list[TenantInfo]) -> tuple[list[TenantInfo], int]:
        """This page's tenants, sorted (no value sorts last either way), and the page count."""
        attr = SORT_KEYS[self.sort]
        known = [t for t in tenants if getattr(t, attr) is not None]
        unknown = [t for t in tenants if getattr(t, attr) is None]
        known.sort(key=lambda t: (getattr(t, attr), t.name), reverse=self.descending)
        ordered = known + unknown
        pages = max(1, math.ceil(len(ordered) / PAGE_SIZE))
        page = min(self.page, pages)
        return ordered[(page - 1) * PAGE_SIZE: page * PAGE_SIZE], pages


# --- HTML -------------------------------------------------------------------------------------


def layout(title: str, body: str, csrf: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{escape(csrf)}">
<title>{escape(title)}</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script>
</head><body>
<header><a class="brand" href="{HOME}">Switchboard</a>{_logout(csrf)}</header>
<main>{body}</main>
<div id="message" role="status" hidden></div>
</body></html>"""


def _logout(csrf: str) -> str:
    if not csrf:
        return ""
    return ('<form class="logout" method="post" action="/dashboard/logout">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            '<button type="submit" class="link">Sign out</button></form>')


def _actions(name: str, state: str, csrf: str) -> str:
    forms = []
    for action in ACTIONS:
        disabled = ((action == "start" and state in ("running", "starting"))
                    or (action in ("stop", "checkpoint") and state != "running"))
        forms.append(
            f'<form method="post" action="/dashboard/t/{quote(name)}/{action}">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            f'<button type="submit" class="{action}"{" disabled" if disabled else ""}>'
            f"{action}</button></form>")
    return f'<div class="actions">{"".join(forms)}</div>'


def rows_html(tenants: list[TenantInfo], csrf: str, now: float) -> str:
    if not tenants:
        return '<tr><td colspan="6" class="empty">No tenants yet.</td></tr>'
    return "".join(
        f'<tr data-name="{escape(t.name)}">'
        f'<td class="name"><a href="/dashboard/t/{quote(t.name)}">{escape(t.name)}</a></td>'
        f'<td class="state"><span class="badge {escape(t.state)}">{escape(t.state)}</span></td>'
        f'<td class="memory num">{_bytes(t.rss_bytes)}</td>'
        f'<td class="request">{_ago(t.last_request_at, now)}</td>'
        f'<td class="snapshot">{_ago(t.last_checkpoint_at, now)}</td>'
        f"<td>{_actions(t.name, t.state, csrf)}</td></tr>"
        for t in tenants)


def header_cell(listing: Listing, key: str, label: str) -> str:
    descending = not listing.descending if listing.sort == key else False
    arrow = ""
    if listing.sort == key:
        arrow = " ▼" if listing.descending else " ▲"
    query = listing.query(sort=key, order="desc" if descending else "asc", page=1)
    return f'<th><a href="{HOME}{query}" class="sort">{label}{arrow}</a></th>'


def pager(listing: Listing, pages: int, total: int) -> str:
    page = min(listing.page, pages)
    previous = (f'<a href="{HOME}{listing.query(page=page - 1)}" rel="prev">&lsaquo; previous</a>'
                if page > 1 else '<span class="off">&lsaquo; previous</span>')
    following = (f'<a href="{HOME}{listing.query(page=page + 1)}" rel="next">next &rsaquo;</a>'
                 if page < pages else '<span class="off">next &rsaquo;</span>')
    return (f'<nav class="pager">{previous}<span class="where">page {page} of {pages}'
            f' · {total} tenants</span>{following}</nav>')


def _fields(info: TenantInfo, now: float) -> str:
    rows = "".join(
        f'<dt>{escape(f.name)}</dt><dd data-field="{escape(f.name)}">'
        f"{escape(_field_text(f.name, getattr(info, f.name), now))}</dd>"
        for f in fields(info))
    return f'<dl class="fields">{rows}</dl>'


def status_html(info: TenantInfo, csrf: str, now: float, log_tail: list[bytes]) -> str:
    """A tenant page's live part: its actions (enabled by state), every field and the last
    lines of its worker's log."""
    text = b"".join(log_tail).decode("utf-8", errors="replace")
    log = (f'<pre class="log">{escape(text)}</pre>' if text
           else '<p class="empty">Nothing logged yet.</p>')
    return (_actions(info.name, info.state, csrf) + _fields(info, now)
            + f'<h2>Log <span class="hint">last {len(log_tail)} lines</span></h2>{log}')
