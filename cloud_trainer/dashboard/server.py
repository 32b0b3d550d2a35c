"""The dashboard's web server (aiohttp): the page, a live stream, the change API.

``GET /live`` is a WebSocket: the whole view once (``snapshot``), then ``delta`` messages
with what changed, each sent only after the page acknowledged the one before and at most
one every ``STREAM_INTERVAL_S`` (a fleet of 32 cars at 10 Hz is 320 messages a second; a
page wants a few updates a second, each with the newest state of whatever changed, and a
page that cannot keep up must not build a backlog: a server-sent-event stream, which has
no acknowledgement, queued seconds of stale updates in the socket buffers of a busy
machine). ``POST /api/change`` sends a promote or rollback to the cloud trainer and
answers with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud_trainer.dashboard.access import COOKIE, Access, Refused
from cloud_trainer.dashboard.bus import DashboardBus
from cloud_trainer.dashboard.storeview import StoreView
from cloud_trainer.dashboard.view import FleetView
from edgepilot import EdgepilotError
from edgepilot.schema.wire import WireError

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
STREAM_INTERVAL_S = 0.2
BURST_S = 0.05
PING_S = 20.0
REGISTRY_EVERY_S = 3.0
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class Hub:
    """Wakes the page feeds waiting for a change; ``changed`` may be called from any
    thread. Only a feed that waits is woken, and many changes before the loop runs make one
    wake-up: with 320 messages a second and nobody waiting, the loop is not woken at all
    (waking it per message cost the dashboard a few % of a core)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.waiting = 0  # feeds awaiting ``event`` (changed on the loop only)
        self._pending = False
        self._lock = threading.Lock()

    def changed(self) -> None:
        if not self.waiting:  # a feed counts itself in before it looks: it sees this change
            return
        with self._lock:
            if self._pending:
                return
            self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._pending = False
        ev, self.event = self.event, asyncio.Event()
        ev.set()


@dataclass
class Settings:
    bind: str
    port: int
    change_timeout_s: float = 30.0
    tls: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


class Dashboard:
    def __init__(
        self, settings: Settings, access: Access, bus: DashboardBus, view: FleetView, store: StoreView | None
    ) -> None:
        self.settings = settings
        self.access = access
        self.bus = bus
        self.view = view
        self.store = store
        self.url = ""
        self.hub: Hub | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.app = self._app()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> str:
        """Serve; returns the page's URL (the real port when ``port`` is 0)."""
        self.hub = Hub(asyncio.get_running_loop())
        self.view.on_change = self.hub.changed
        self.bus.start()
        await self._read_store()  # the first page shows the registry and the runs already
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.bind, self.settings.port, ssl_context=self.settings.tls
        )
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self.bus.close()
            raise EdgepilotError(
                f"dashboard: cannot listen on {self.settings.bind}:{self.settings.port}: {e.strerror}"
            ) from None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = self.settings.bind if ":" not in self.settings.bind else f"[{self.settings.bind}]"
        self.url = f"{self.settings.scheme}://{host}:{port}/"
        self._tasks = [asyncio.create_task(self._sampler()), asyncio.create_task(self._store_refresh())]
        return self.url

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        self.bus.close()

    async def _sampler(self) -> None:
        while True:
            self.view.sample()
            self.bus.watch_connection()
            await asyncio.sleep(1.0)

    async def _store_refresh(self) -> None:
        while self.store is not None:
            await asyncio.sleep(REGISTRY_EVERY_S)
            await self._read_store()

    async def _read_store(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.refresh_store)
        except (OSError, ValueError, EdgepilotError) as e:
            log.warning("dashboard: cannot read the store: %s", e)
            self.view.put("bus", "store", {"error": str(e)[:300]})

    def refresh_store(self) -> None:
        """Re-read the registry and the runs; the page hears of them only when they changed."""
        if self.store is None:
            return
        for section, value in (("registry", self.store.registry_state()), ("runs", self.store.runs_state())):
            if self.view.get(section, "store") != value:
                self.view.put(section, "store", value)

    # -- the app ------------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/access", self.whoami)
        app.router.add_get("/live", self.live)
        app.router.add_post("/api/change", self.change)
        app.router.add_get("/store/runs/{run}/{name}", self.plot)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except Refused as e:
            if request.method == "GET" and request.path == "/" and e.status == 401:
                resp = web.Response(status=303, headers={"Location": "/login"})
            else:
                resp = web.json_response({"error": e.message}, status=e.status)
        except EdgepilotError as e:
            resp = web.json_response({"error": str(e)}, status=404)
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
        if request.path.startswith(("/api/", "/live", "/login")):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # -- pages --------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        self.access.check_read(request)
        return web.FileResponse(STATIC / "index.html")

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        self.access.check_host(request)
        return web.FileResponse(STATIC / "login.html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        self.access.check_same_page(request)
        body = await _json(request)
        sid = self.access.login(request, body.get("token"))
        resp = web.json_response({"ok": True})
        resp.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.access.session_s),
            httponly=True,
            samesite="Strict",
            secure=self.settings.tls is not None,
            path="/",
        )
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.access.check_same_page(request)
        self.access.logout(request)
        resp = web.json_response({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        self.access.check_host(request)
        return web.json_response(
            {
                "logged_in": self.access.logged_in(request),
                "open_reads": self.access.open_reads,
                "store": self.store is not None,
            }
        )

    async def state(self, request: web.Request) -> web.StreamResponse:
        self.access.check_read(request)
        snap, seq = self.view.snapshot()
        return web.json_response({**snap, "seq": seq})

    async def plot(self, request: web.Request) -> web.StreamResponse:
        self.access.check_read(request)
        if self.store is None:
            raise Refused(404, "this dashboard has no store (--store)")
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(
            None, self.store.plot, request.match_info["run"], request.match_info["name"]
        )
        return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The page's live feed: the whole view once, then what changed, one update at a
        time: the next goes out only after the page acknowledged (drew) the last one and at
        most every ``STREAM_INTERVAL_S``. A page that falls behind (a busy or backgrounded
        tab) gets fewer updates, each with the newest state, never a backlog."""
        self.access.check_read(request)
        self.access.check_origin(request)  # a WebSocket is not bound by the same-origin rule
        ws = web.WebSocketResponse(heartbeat=PING_S, max_msg_size=4096)
        await ws.prepare(request)
        acked = asyncio.Event()
        reader = asyncio.create_task(self._acks(ws, acked))
        snap, seq = self.view.snapshot()
        sent = asyncio.get_running_loop().time()
        try:
            await ws.send_str(json.dumps({"type": "snapshot", **snap, "seq": seq}, separators=(",", ":")))
            while True:
                await acked.wait()
                acked.clear()
                if ws.closed:
                    break
                seq, sent = await self._next(ws, seq, sent)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
        return ws

    async def _next(self, ws: web.WebSocketResponse, seq: int, sent: float) -> tuple[int, float]:
        """Send what changed after ``seq``, no sooner than ``STREAM_INTERVAL_S`` after the
        last send (at ``sent``); when nothing has yet, wait for a change and give a burst
        (a fleet reporting at once) ``BURST_S`` to land. The new seq and send time."""
        hub = self.hub
        assert hub is not None
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, sent + STREAM_INTERVAL_S - loop.time()))
        while True:
            wake = hub.event
            hub.waiting += 1
            try:
                delta, now_seq = self.view.since(seq)
                if delta:
                    await ws.send_str(json.dumps({"type": "delta", **delta, "seq": now_seq}, separators=(",", ":")))
                    return now_seq, loop.time()
                await wake.wait()
            finally:
                hub.waiting -= 1
            await asyncio.sleep(BURST_S)

    @staticmethod
    async def _acks(ws: web.WebSocketResponse, acked: asyncio.Event) -> None:
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT and msg.data.startswith('{"ack"'):
                acked.set()
        acked.set()  # closed: let the sender see it

    # -- changes ------------------------------------------------------------------------------------
    async def change(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        self.access.check_change(request, body.get("token"))
        action, target, version = body.get("action"), body.get("target"), body.get("version")
        by = f"dashboard@{socket.gethostname()} for {request.remote}"
        try:
            fut = self.bus.ask(
                str(action), str(target), version if action == "promote" else None, self.access.token, by
            )
        except WireError as e:
            raise Refused(400, str(e)) from None
        except EdgepilotError as e:
            raise Refused(503, str(e)) from None
        try:
            res = await asyncio.wait_for(asyncio.wrap_future(fut), self.settings.change_timeout_s)
        except TimeoutError:
            self.bus.forget(fut)
            raise Refused(
                504,
                f"no cloud trainer answered in {self.settings.change_timeout_s:.0f} s: is `edgepilot cloud` "
                "running on this broker, and may the dashboard's login publish cloud/models?",
            ) from None
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.refresh_store)
        out = {
            k: getattr(res, k)
            for k in ("id", "ok", "action", "target", "current", "previous", "pushed", "error")
        }
        return web.json_response(out, status=200 if res.ok else 409)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    return body
