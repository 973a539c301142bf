"""Dashboard sign-in: one-time login tokens and the sessions they open (switchboard/dashboard).

A token is issued by the signed `POST /v1/dashboard/login-url`, lives LOGIN_TOKEN_TTL_S and is
spent by its first use; the session it opens lives SESSION_TTL_S and carries its own CSRF token.
Both live in the router's memory only (a restart signs everyone out) and both are bounded.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

LOGIN_TOKEN_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0
MAX_PENDING_TOKENS = 32  # bounds what a flood of signed login-url calls can hold
MAX_SESSIONS = 64


@dataclass(frozen=True)
class Session:
    csrf: str
    expires_at: float


class Sessions:
    """One-time login tokens and the sessions they open, in memory (a router restart signs
    everyone out). Both are bounded: the oldest goes first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[str, float] = {}  # token -> expires at
        self._sessions: dict[str, Session] = {}  # cookie value -> session

    def issue_login_token(self) -> str:
        self._drop_expired()
        while len(self._tokens) >= MAX_PENDING_TOKENS:
            del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = self.clock() + LOGIN_TOKEN_TTL_S
        return token

    def redeem(self, token: str) -> str | None:
        """A new session's cookie value for a live token (which is then spent), else None."""
        expires_at = self._tokens.pop(token, None)
        if expires_at is None or expires_at <= self.clock():
            return None
        self._drop_expired()
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        cookie = secrets.token_urlsafe(32)
        self._sessions[cookie] = Session(secrets.token_urlsafe(32), self.clock() + SESSION_TTL_S)
        return cookie

    def get(self, cookie: str | None) -> Session | None:
        session = self._sessions.get(cookie) if cookie else None
        if session is None or session.expires_at <= self.clock():
            return None
        return session

    def end(self, cookie: str) -> None:
        self._sessions.pop(cookie, None)

    def _drop_expired(self) -> None:
        now = self.clock()
        self._tokens = {t: at for t, at in self._tokens.items() if at > now}
        self._sessions = {c: s for c, s in self._sessions.items() if s.expires_at > now}
