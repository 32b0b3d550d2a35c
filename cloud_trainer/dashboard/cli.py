"""``edgepilot dashboard`` and the dashboard inside ``edgepilot cloud --dashboard``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import threading
import time
from dataclasses import replace
from typing import Any

from cloud_trainer.dashboard.access import Access, is_loopback, load_or_make_token
from cloud_trainer.dashboard.bus import DashboardBus
from cloud_trainer.dashboard.server import Dashboard, Settings
from cloud_trainer.dashboard.storeview import StoreView
from cloud_trainer.dashboard.view import FleetView
from cloud_trainer.store import open_store
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig, Profile
from edgepilot.mqtt import broker_config

log = logging.getLogger(__name__)


def dashboard_broker(prof: Profile, url: str | None) -> BrokerConfig:
    """The profile's broker with the dashboard's own login (``[dashboard] broker_username``)."""
    cfg = broker_config(prof.broker, url)
    d = prof.dashboard
    if d.broker_username:
        return replace(cfg, username=d.broker_username, password=None, password_file=d.broker_password_file)
    if cfg.username:
        log.warning(
            "the dashboard logs in to the broker as %r ([broker]); give it its own read-mostly login: "
            "launch/make-broker-auth --dashboard ID, then [dashboard] broker_username/broker_password_file",
            cfg.username,
        )
    return cfg


def _tls(prof: Profile) -> ssl.SSLContext | None:
    d = prof.dashboard
    if not (d.tls_cert or d.tls_key):
        return None
    if not (d.tls_cert and d.tls_key):
        raise EdgepilotError("[dashboard] needs both tls_cert and tls_key to serve HTTPS")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(d.tls_cert, d.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise EdgepilotError(f"[dashboard] tls_cert/tls_key: {e}") from None
    return ctx


def build(
    prof: Profile,
    *,
    broker: str | None = None,
    bind: str | None = None,
    port: int | None = None,
    store: str | None = None,
) -> Dashboard:
    """A dashboard from a profile and the command line's overrides (not started)."""
    d = prof.dashboard
    bind = bind or d.bind
    token, made = load_or_make_token(d.token_file)
    if made:
        print(
            f"edgepilot dashboard: operator token (shown this once; kept in {d.token_file}): {token}",
            flush=True,
        )
    tls = _tls(prof)
    if not is_loopback(bind) and tls is None:
        log.warning(
            "dashboard on %s without TLS: the operator's token crosses the network in clear; "
            "set [dashboard] tls_cert/tls_key or put it behind an HTTPS proxy (docs/deploy.md)",
            bind,
        )
    view = FleetView()
    location = store or prof.cloud.store
    return Dashboard(
        Settings(bind, d.port if port is None else port, d.change_timeout_s, tls),
        Access(token, open_reads=is_loopback(bind), session_s=d.session_s),
        DashboardBus(dashboard_broker(prof, broker), view),
        view,
        StoreView(open_store(location)) if location else None,
    )


def _describe(dash: Dashboard, prof: Profile) -> str:
    reads = (
        "anyone on this machine may look" if dash.access.open_reads else "every page needs the operator token"
    )
    return f"{dash.url} ready ({reads}; changes need the token in {prof.dashboard.token_file})"


def cli(args: Any) -> dict[str, Any]:
    """Serve until SIGTERM/Ctrl-C."""
    from edgepilot.config import load_profile

    prof = load_profile(getattr(args, "profile", None), default="cloud")
    dash = build(prof, broker=args.broker, bind=args.bind, port=args.port, store=args.store)
    t0 = time.time()

    async def main() -> None:
        await dash.start()
        print(f"edgepilot dashboard: {_describe(dash, prof)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await dash.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return {"url": dash.url, "uptime_s": round(time.time() - t0, 1), "bad_messages": dash.bus.bad}


class Background:
    """A dashboard on its own thread and event loop (inside ``edgepilot cloud``)."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dashboard", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.dash.start(), self.loop).result(30)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.dash.stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def start_background(
    prof: Profile, broker: str | None, store: str | None, port: int | None = None
) -> Background:
    bg = Background(build(prof, broker=broker, store=store, port=port))
    bg.start()
    print(f"edgepilot cloud: dashboard {_describe(bg.dash, prof)}", flush=True)
    return bg
