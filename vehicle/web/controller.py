"""``start_web``: the web controller wired onto a ``DriveLoop`` in one call.

    web = start_web(profile, mode=opts.mode)
    loop = DriveLoop(source, actuator, user=web.user, on_frame=web.on_frame, options=opts, ...)
    try:
        loop.run()
    finally:
        web.stop()

The page's commands reach the car only through ``web.user`` (the loop's user input);
``web.on_frame`` shows each frame and the loop's info on the page. There is one loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple, TextIO

from edgepilot import EdgepilotError
from edgepilot.config import Profile, WebConfig
from edgepilot.drive.parts import Frame, UserInput
from vehicle.web.auth import Token, resolve_token
from vehicle.web.server import ServerSettings, WebServer
from vehicle.web.user import WebUser
from vehicle.web.view import View

log = logging.getLogger(__name__)

OnFrame = Callable[[Frame, dict[str, Any]], None]


class WebControl(NamedTuple):
    user: WebUser
    on_frame: OnFrame
    stop: Callable[[], None]


def check(cfg: WebConfig) -> None:
    """Refuse settings that would make the controller unsafe or unusable, naming the key."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise EdgepilotError(f"web.{key}: {what}")

    need(0 <= cfg.port <= 65535, "port", f"{cfg.port} is not a TCP port (0..65535; 0 picks a free one)")
    need(50 <= cfg.deadman_ms <= 5000, "deadman_ms", f"{cfg.deadman_ms} must be 50..5000 ms")
    need(
        cfg.send_hz >= 1.0 and 2000 / cfg.send_hz <= cfg.deadman_ms,
        "send_hz",
        f"{cfg.send_hz} Hz: the page must send at least twice per deadman ({cfg.deadman_ms} ms)",
    )
    need(1.0 <= cfg.view_max_hz <= 120.0, "view_max_hz", f"{cfg.view_max_hz} must be 1..120")
    need(10 <= cfg.jpeg_quality <= 100, "jpeg_quality", f"{cfg.jpeg_quality} must be 10..100")
    need(0 <= cfg.estop_brake_ms <= 2000, "estop_brake_ms", f"{cfg.estop_brake_ms} must be 0..2000 ms")
    need(0.0 <= cfg.estop_brake_throttle <= 1.0, "estop_brake_throttle", "must be 0..1")
    need(
        cfg.max_msgs_per_s >= 2 * cfg.send_hz + 20,
        "max_msgs_per_s",
        f"{cfg.max_msgs_per_s} leaves no room above the page's own {cfg.send_hz} Hz; use >= {2 * cfg.send_hz + 20:g}",
    )
    need(128 <= cfg.max_msg_bytes <= 65536, "max_msg_bytes", f"{cfg.max_msg_bytes} must be 128..65536")
    need(bool(cfg.tls_cert) == bool(cfg.tls_key), "tls_cert", "tls_cert and tls_key go together")


def lan_addresses() -> list[str]:
    """This machine's addresses a phone on the same network could reach (best effort)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        found.append(s.getsockname()[0])
    return sorted({a for a in found if not a.startswith("127.")})


def announce(url: str, cfg: WebConfig, token: Token, out: TextIO) -> None:
    """Where to point the phone, and the token once: when it was just made."""
    port = url.rsplit(":", 1)[1].rstrip("/")
    scheme = url.split(":", 1)[0]
    hosts = lan_addresses() if cfg.bind in ("0.0.0.0", "::", "") else [cfg.bind]
    for h in hosts or ["<the car's address>"]:
        print(f"web controller: {scheme}://{h}:{port}/", file=out)
    if token.created:
        print(
            f"web controller token (new, saved to {token.source}; shown only this once): {token.value}\n"
            f"  open {scheme}://{(hosts or ['CAR'])[0]}:{port}/?token={token.value} on the phone",
            file=out,
        )
    else:
        where = "web.token in the profile" if token.source == "profile" else token.source
        print(f"web controller token: in {where}", file=out)


def start_web(
    profile: Profile,
    *,
    mode: str = "user",
    labels: UserInput | None = None,
    port: int | None = None,
    bind: str | None = None,
    also: OnFrame | None = None,
    out: TextIO | None = None,
) -> WebControl:
    """Start the web controller for a drive about to run; see the module docstring.

    ``mode``: the loop's starting mode; ``labels``: a user input that labels the frames the
    human does not drive (the simulator's expert, ``edgepilot.sim.parts.ExpertUser``);
    ``port``/``bind`` override the profile's ``[web]``; ``also``: another on_frame to call
    (a window, a progress bar); ``out``: where the URL and a new token are printed."""
    cfg = replace(profile.web, **{k: v for k, v in {"port": port, "bind": bind}.items() if v is not None})
    check(cfg)
    token = resolve_token(cfg)
    user = WebUser(cfg, mode=mode, labels=labels)
    view = View(cfg.jpeg_quality)
    settings = ServerSettings(cfg, token.value, profile.gamepad, profile.drive.delete_seconds, profile.car_id)
    server = WebServer(settings, user, view)
    url = server.start()
    announce(url, cfg, token, out or sys.stderr)

    def on_frame(frame: Frame, info: dict[str, Any]) -> None:
        user.observe(info)
        view.update(frame, info)
        if also is not None:
            also(frame, info)

    user.server = server
    return WebControl(user, on_frame, server.stop)
