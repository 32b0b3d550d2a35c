"""The web controller's server (aiohttp, on its own thread and asyncio loop).

Routes: ``/`` the page (``static/``), ``/login`` the token form, ``/ws`` the page's one
WebSocket (commands in; HUD state and camera JPEGs out), ``/video.mjpg`` the camera as
MJPEG for other viewers (VLC, an ``<img>``). Every route but ``/login`` needs the token
(``vehicle.web.auth``) unless the request comes from loopback and ``web.loopback_open``.

Why aiohttp: one package that is both server and client (the tests and the benchmark
talk to the socket with its client), no periodic timer when idle, and the least CPU
per message of the stacks measured (docs/benchmarks.md, "Web controller").

Each page gets a reader (its messages, checked by ``vehicle.web.protocol`` and then
handed to ``WebUser``) and a sender that waits for a newer frame, sends the HUD and the
newest JPEG, and waits for the socket to drain before the next: a slow phone gets fewer,
fresher frames instead of a growing queue of stale ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from edgepilot import EdgepilotError
from edgepilot.config import GamepadConfig, WebConfig
from vehicle.web import auth
from vehicle.web.protocol import VIDEO_HEADER, Message, ProtocolError, RateLimit, error, parse
from vehicle.web.user import Page, WebUser
from vehicle.web.view import View

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FLOOD_CLOSE_AFTER = 5.0  # seconds of messages over the limit before the socket is closed
WS_HARD_LIMIT = 1 << 16  # aiohttp closes the socket (1009) above this; below, our own check answers


@dataclass
class ServerSettings:
    cfg: WebConfig
    token: str
    gamepad: GamepadConfig = field(default_factory=GamepadConfig)
    delete_seconds: float = 5.0
    car_id: str = "car-1"


class WebServer:
    def __init__(self, settings: ServerSettings, user: WebUser, view: View) -> None:
        self.s, self.cfg = settings, settings.cfg
        self.user, self.view = user, view
        self.url = ""
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._next: asyncio.Future | None = None  # resolved at each new frame
        self._waiting = False  # a sender waits for the next frame (set here, cleared by the loop thread)
        self.stats = {"messages": 0, "refused": 0, "flooded": 0, "frames_sent": 0, "unauthorized": 0}

    # -- lifecycle (any thread) ---------------------------------------------------------
    def start(self, timeout: float = 10.0) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []
        tls = self._ssl()  # here: a bad certificate is the caller's error, said as such

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._aloop = loop
            try:
                loop.run_until_complete(self._serve(tls))
            except BaseException as e:  # the bind failed: hand it to start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=main, name="web-controller", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise EdgepilotError("web controller: the server did not start in time")
        if failure:
            e = failure[0]
            raise EdgepilotError(
                f"web controller: cannot listen on {self.cfg.bind}:{self.cfg.port} ({e}); "
                "is another drive running? set web.port or --port"
            ) from None
        self.view.on_new = self._wake_threadsafe
        return self.url

    def stop(self) -> None:
        self.view.on_new = None
        loop = self._aloop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _serve(self, tls: ssl.SSLContext | None) -> None:
        app = web.Application(middlewares=[self._auth, self._headers])
        app.router.add_get("/", self._index)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/video.mjpg", self._mjpeg)
        app.router.add_static("/static/", STATIC, show_index=False)
        self._next = asyncio.get_running_loop().create_future()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.bind, self.cfg.port, ssl_context=tls)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self.cfg.tls_cert else "http"
        self.url = f"{scheme}://{self.cfg.bind}:{port}/"

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _ssl(self) -> ssl.SSLContext | None:
        if not (self.cfg.tls_cert and self.cfg.tls_key):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise EdgepilotError(f"web.tls_cert/tls_key: cannot load them ({e})") from None
        return ctx

    # -- frames from the loop thread ------------------------------------------------------
    def _wake_threadsafe(self) -> None:
        """The loop thread's per-frame call: a flag test unless a sender waits, so an
        unpaced loop (replay at full speed) is not taxed by one wake-up per frame."""
        loop = self._aloop
        if self._waiting and loop is not None:
            self._waiting = False
            with contextlib.suppress(RuntimeError):  # the server is stopping
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        fut, self._next = self._next, asyncio.get_running_loop().create_future()
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _newer_than(self, seq: int, timeout: float) -> bool:
        """Wait until the view holds a frame after ``seq`` (False on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            self._waiting = True  # before the test: a frame that lands in between still wakes us
            if self.view.seq > seq:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._next), left)

    # -- HTTP ---------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self.cfg.loopback_open and auth.is_loopback(request.remote):
            return True
        return auth.same(request.cookies.get(auth.COOKIE), self.s.token) or auth.same(
            request.query.get("token"), self.s.token
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # the page's code and style are no secret (the login page needs the style)
        if request.path == "/login" or request.path.startswith("/static/") or self._authorized(request):
            if "token" in request.query and request.method == "GET" and request.path == "/":
                raise self._with_cookie(web.HTTPSeeOther("/"))  # keep the token out of the URL bar
            return await handler(request)
        self.stats["unauthorized"] += 1
        if request.path in ("/ws", "/video.mjpg"):
            raise web.HTTPUnauthorized(text="wrong or missing token: open the page and log in first\n")
        wrong = "token" in request.query or auth.COOKIE in request.cookies
        return self._login_page(401, "Wrong token." if wrong else "")

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp = await handler(request)
        host = request.host
        resp.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws://{host} wss://{host}",
        )
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    def _with_cookie(self, resp: web.StreamResponse) -> web.StreamResponse:
        resp.set_cookie(
            auth.COOKIE,
            self.s.token,
            httponly=True,
            samesite="Strict",
            secure=bool(self.cfg.tls_cert),
            max_age=30 * 24 * 3600,
        )
        return resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    def _login_page(self, status: int, note: str) -> web.Response:
        html = (STATIC / "login.html").read_text().replace("{{note}}", note)
        return web.Response(status=status, text=html, content_type="text/html")

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._login_page(200, "")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = form.get("token")
        if isinstance(given, str) and auth.same(given.strip(), self.s.token):
            raise self._with_cookie(web.HTTPSeeOther("/"))
        self.stats["unauthorized"] += 1
        return self._login_page(401, "Wrong token.")

    def _same_origin(self, request: web.Request) -> bool:
        """A page from another site must not use this browser's cookie to drive the car."""
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host

    # -- the camera as MJPEG --------------------------------------------------------------
    async def _mjpeg(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"})
        await resp.prepare(request)
        seq = 0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                t0 = time.monotonic()
                if not await self._newer_than(seq, 5.0):
                    continue
                got = await loop.run_in_executor(None, self.view.jpeg)
                if got is not None:
                    seq, index, t, data = got
                    head = (
                        f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                        f"X-Frame-Time: {t * 1e3:.1f}\r\nX-Frame-Index: {index}\r\n\r\n"
                    )
                    await resp.write(head.encode() + data + b"\r\n")
                await self._pace(t0)
        return resp

    async def _pace(self, t0: float) -> None:
        """At most view_max_hz frames per viewer: a phone needs no more than it can show."""
        await asyncio.sleep(max(0.0, 1.0 / self.cfg.view_max_hz - (time.monotonic() - t0)))

    # -- the page's socket ----------------------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-origin WebSocket refused\n")
        ws = web.WebSocketResponse(heartbeat=2.0, max_msg_size=WS_HARD_LIMIT)
        await ws.prepare(request)
        page = self.user.connect(request.query.get("client", "")[:64])
        log.info("page %d connected from %s as %s", page.cid, request.remote, self.user.role(page))
        sender = None
        try:
            await ws.send_str(json.dumps(self._hello(page)))
            await self._tell_trip(ws, page)
            sender = asyncio.create_task(self._send_frames(ws, page))
            await self._read(ws, page)
        finally:
            if sender is not None:
                sender.cancel()
            self.user.disconnect(page)
            log.info("page %d gone (%s)", page.cid, ws.close_code)
        return ws

    def _hello(self, page: Page) -> dict[str, Any]:
        gp = self.s.gamepad
        return {
            "type": "hello",
            "role": self.user.role(page),
            "car_id": self.s.car_id,
            "deadman_ms": self.cfg.deadman_ms,
            "send_hz": self.cfg.send_hz,
            "delete_seconds": self.s.delete_seconds,
            "autopilot": self.user.autopilot(),
            "gamepad": {
                "steering_axis": gp.steering_axis,
                "throttle_axis": gp.throttle_axis,
                "invert_throttle": gp.invert_throttle,
                "deadzone": gp.deadzone,
                "record_button": gp.record_button,
                "mode_button": gp.mode_button,
                "estop_button": gp.estop_button,
                "delete_button": gp.delete_button,
            },
        }

    async def _tell_trip(self, ws: web.WebSocketResponse, page: Page) -> None:
        trip = self.user.news(page)
        if trip is not None:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "deadman",
                        "reason": trip.reason,
                        "silent_ms": trip.silent_ms,
                        "at": round(trip.at * 1e3),
                        "count": trip.count,
                    }
                )
            )

    async def _read(self, ws: web.WebSocketResponse, page: Page) -> None:
        limit = RateLimit(self.cfg.max_msgs_per_s)
        flood_since: float | None = None
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            if not limit.allow():
                now = time.monotonic()
                flood_since = flood_since or now
                self.stats["flooded"] += 1
                if now - flood_since > FLOOD_CLOSE_AFTER:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"flooding")
                    return
                if limit.dropped % 50 == 1:  # answer floods, but not one error per message
                    await ws.send_str(error(f"flood: over {self.cfg.max_msgs_per_s:g} messages/s, dropped"))
                continue
            flood_since = None
            self.stats["messages"] += 1
            try:
                m = parse(msg.data, self.cfg.max_msg_bytes)
                answer = self._handle(page, m)
            except ProtocolError as e:
                self.stats["refused"] += 1
                await ws.send_str(error(str(e), e.kind))
                continue
            if answer is not None:
                await ws.send_str(json.dumps(answer))
            await self._tell_trip(ws, page)

    def _handle(self, page: Page, m: Message) -> dict[str, Any] | None:
        """Act on one checked message; ``ProtocolError`` for one this page may not send."""
        f, u = m.fields, self.user
        if m.type == "ping":
            return {"type": "pong", "t": f["t"]}
        if m.type == "video":
            page.video = f["on"]
            return None
        if m.type == "estop" and f["on"]:  # any page may stop the car
            u.estop(True)
            return None
        if m.type == "takeover":
            u.takeover(page)
            return {"type": "role", "role": "driver"}
        if u.role(page) != "driver":
            raise ProtocolError(f"{m.type}: this page is watching; another page drives (send takeover)")
        if m.type == "drive":
            u.command(f["steering"], f["throttle"])
        elif m.type == "mode":
            if f["mode"] != "user" and not u.autopilot():
                raise ProtocolError(f"mode {f['mode']}: no autopilot model is loaded; only user mode")
            u.request_mode(f["mode"])
        elif m.type == "record":
            u.request_record(f["on"])
        elif m.type == "estop":
            u.estop(False)
        elif m.type == "erase":
            u.request_erase()
        elif m.type == "throttle_scale":
            u.set_throttle(scale=f["value"])
        elif m.type == "constant_throttle":
            u.set_throttle(constant=f["on"])
        return None

    async def _send_frames(self, ws: web.WebSocketResponse, page: Page) -> None:
        """HUD state and the newest JPEG after each new frame, at most view_max_hz."""
        seq = 0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError, RuntimeError):
            while not ws.closed:
                t0 = time.monotonic()
                fresh = await self._newer_than(seq, 1.0)
                state = {
                    "type": "state",
                    **self.view.hud(),
                    **self.user.status(),
                    "role": self.user.role(page),
                }
                state.update(self.user.summary(), t=round(time.time() * 1e3, 1))
                await ws.send_str(json.dumps(state))
                seq = state["seq"]
                if fresh and page.video:
                    got = await loop.run_in_executor(None, self.view.jpeg)
                    if got is not None:
                        _, index, t, data = got
                        await ws.send_bytes(VIDEO_HEADER.pack(t * 1e3, index & 0xFFFFFFFF) + data)
                        self.stats["frames_sent"] += 1
                await self._pace(t0)
