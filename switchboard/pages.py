"""The router's own answers: short HTML pages that say only what a visitor may know.

What went wrong inside (a worker's traceback, a path, an exception's text) goes to the log and
to `switchboard status`, never into a page: a 503 says the tenant is unavailable and when to
try again, and every 404 is the same page, so a visitor cannot tell a tenant that does not
exist from a URL that names none.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from http import HTTPStatus

NOT_FOUND_TEXT = "There is nothing at this address."


# RFC 9110's names where HTTPStatus still has RFC 2616's before Python 3.13.
RFC_9110_PHRASES = {413: "Content Too Large", 414: "URI Too Long"}


def reason_phrase(status: int) -> str:
    if status in RFC_9110_PHRASES:
        return RFC_9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def simple_response(status: int, text: str, *, close: bool,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A short HTML answer from the router itself."""
    title = f"{status} {reason_phrase(status)}"
    body = (f"<!doctype html><title>{title}</title><h1>{title}</h1>"
            f"<p>{html.escape(text)}</p>\n").encode()
    head = [f"HTTP/1.1 {title}".encode(), b"content-type: text/html; charset=utf-8",
            b"content-length: %d" % len(body)]
    head += [name + b": " + value for name, value in extra]
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def unavailable_text(tenant: str, retry_after_s: float | None) -> str:
    """The visitor's part of a 503 for `tenant` (its reason is for the log)."""
    if retry_after_s is None:
        return f"The site {tenant} is not available."
    return f"The site {tenant} is not available right now; please try again in a moment."
