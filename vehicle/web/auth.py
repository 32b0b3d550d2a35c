"""Who may open the web controller: the profile's token, made once when there is none.

A car on a shared Wi-Fi must not be drivable by whoever finds its port. The token is a
shared secret: typed once on the login page (or opened as ``/?token=...``), then kept
by the browser in an HttpOnly, SameSite=Strict cookie that the page's socket carries.
A browser on the car itself (loopback) may go without it (``web.loopback_open``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from edgepilot import EdgepilotError
from edgepilot.config import WebConfig

log = logging.getLogger(__name__)

COOKIE = "edgepilot_token"
MIN_TOKEN_CHARS = 12


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # "profile" | the token file's path
    created: bool  # made on this start: print it (once)


def resolve_token(cfg: WebConfig) -> Token:
    """The profile's ``web.token``; else the one in ``web.token_file``; else a new one
    written there (mode 0600: the secret is readable by the car's user only)."""
    if cfg.token is not None:
        if len(cfg.token) < MIN_TOKEN_CHARS:
            raise EdgepilotError(
                f"web.token: {len(cfg.token)} characters is too short to keep others out; "
                f"use at least {MIN_TOKEN_CHARS} (or remove it and one is made for you)"
            )
        return Token(cfg.token, "profile", False)
    path = Path(cfg.token_file)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    except OSError as e:
        raise EdgepilotError(f"web.token_file {path}: cannot read it ({e})") from None
    if len(value) >= MIN_TOKEN_CHARS:
        return Token(value, str(path), False)
    value = secrets.token_urlsafe(18)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    except OSError as e:
        raise EdgepilotError(
            f"web.token_file {path}: cannot write a new token there ({e}); "
            "set web.token_file to a writable path or web.token in the profile"
        ) from None
    return Token(value, str(path), True)


def same(given: str | None, token: str) -> bool:
    """Constant-time comparison (no timing hint about how much of a guess was right)."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
