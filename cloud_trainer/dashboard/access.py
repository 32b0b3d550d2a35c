"""Who may look at the dashboard and who may change the fleet's models.

- Bound to a loopback address, the dashboard shows the fleet to anyone on this machine
  without a login; bound to any other address, every page and stream needs one.
- A change (promote, rollback) always needs the operator's token: a logged-in session,
  or the token given with the request (the page's confirmation asks for it).
- The token is a random secret in ``[dashboard] token_file`` (0600), made on the first
  start and printed once; the cloud trainer checks the same token again on every change
  (``cloud_trainer.control``), so the dashboard's broker login alone changes nothing.
- A login is a random session id in an HttpOnly, SameSite=Strict cookie; wrong tokens are
  counted per client address and a client that keeps guessing is made to wait.
- Requests that change something must come from the page itself: a custom header (which
  a cross-site form cannot send) and, when the browser says, the same Origin; so must the
  live feed's WebSocket (browsers let any site open one to any address). On loopback
  the Host header must be a loopback name too: a web page elsewhere cannot point a name of
  its own at 127.0.0.1 (DNS rebinding) and read the fleet through the visitor's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgepilot import EdgepilotError

COOKIE = "edgepilot_dashboard"
CHANGE_HEADER = "X-Edgepilot-Dashboard"
MAX_FAILURES = 5  # wrong tokens per client address within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 60.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Request(Protocol):
    """What ``Access`` reads of an HTTP request (aiohttp's ``web.Request`` has it)."""

    @property
    def headers(self) -> object: ...
    @property
    def cookies(self) -> object: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def host(self) -> str: ...
    @property
    def scheme(self) -> str: ...


class Refused(Exception):
    """An HTTP refusal: status and a sentence for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(addr: str) -> bool:
    if addr in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(addr.strip("[]")).is_loopback
    except ValueError:
        return False


def load_or_make_token(path: str | Path) -> tuple[str, bool]:
    """The operator's token from ``path``; made (random, 0600) when missing. Returns
    (token, made now): the caller prints a new token once, never an old one."""
    p = Path(path)
    if p.exists():
        token = p.read_text().strip()
        if len(token) < 16:
            raise EdgepilotError(f"operator token file {p}: the token must have at least 16 characters")
        return token, False
    p.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    tmp = p.with_name(p.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, p)
    return token, True


def _host_name(host: str) -> str:
    """``Host`` header without the port (``[::1]:8080`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class Access:
    token: str
    open_reads: bool  # bound to loopback: looking needs no login
    session_s: float = 8 * 3600.0
    sessions: dict[str, float] = field(default_factory=dict)  # id -> expiry (monotonic)
    failures: dict[str, list[float]] = field(default_factory=dict)  # address -> times

    # -- sessions ------------------------------------------------------------------------------
    def logged_in(self, req: Request) -> bool:
        sid = req.cookies.get(COOKIE)  # type: ignore[attr-defined]
        exp = self.sessions.get(sid) if sid else None
        if exp is None:
            return False
        if exp < time.monotonic():
            self.sessions.pop(sid, None)
            return False
        return True

    def login(self, req: Request, given: str | None) -> str:
        """Check ``given`` against the token; a new session id (or Refused)."""
        self.check_token(req, given)
        now = time.monotonic()
        self.sessions = {k: v for k, v in self.sessions.items() if v > now}
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + self.session_s
        return sid

    def logout(self, req: Request) -> None:
        self.sessions.pop(req.cookies.get(COOKIE, ""), None)  # type: ignore[attr-defined]

    def check_token(self, req: Request, given: str | None) -> None:
        addr = req.remote or "?"
        now = time.monotonic()
        recent = [t for t in self.failures.get(addr, []) if now - t < FAILURE_WINDOW_S]
        self.failures[addr] = recent
        if len(recent) >= MAX_FAILURES:
            wait = FAILURE_WINDOW_S - (now - recent[0])
            raise Refused(429, f"too many wrong tokens from {addr}: try again in {wait:.0f} s")
        if not given:
            raise Refused(401, "this needs the operator's token (log in, or give it in the confirmation)")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            recent.append(now)
            raise Refused(403, "wrong operator token")

    # -- the checks of each kind of request -------------------------------------------------------
    def check_host(self, req: Request) -> None:
        if self.open_reads and not is_loopback(_host_name(req.host)):
            raise Refused(421, f"this dashboard answers on loopback names only, not {req.host!r}")

    def check_read(self, req: Request) -> None:
        self.check_host(req)
        if not (self.open_reads or self.logged_in(req)):
            raise Refused(401, "log in with the operator's token to see this dashboard")

    def check_origin(self, req: Request) -> None:
        """When the browser names the page that sent the request, it must be this one."""
        origin = req.headers.get("Origin")  # type: ignore[attr-defined]
        if origin and origin != f"{req.scheme}://{req.host}":
            raise Refused(403, f"a request from another site ({origin}) is refused")

    def check_same_page(self, req: Request) -> None:
        """A request that changes something (login, change) comes from this page."""
        self.check_host(req)
        if req.headers.get(CHANGE_HEADER) != "1":  # type: ignore[attr-defined]
            raise Refused(403, f"a change needs the {CHANGE_HEADER} header (sent by the dashboard's page)")
        self.check_origin(req)

    def check_change(self, req: Request, given: str | None) -> None:
        """Changing the fleet: a logged-in session, or the operator's token given now."""
        self.check_same_page(req)
        if self.logged_in(req) and not given:
            return
        self.check_token(req, given)
