"""aiohttp vs Starlette + uvicorn for the car's web controller, side by side, one run.

The same tiny app in each stack (a page, and a WebSocket that pushes a 6 kB binary frame
and a HUD JSON at 20 Hz while the client sends a drive command at 20 Hz: the controller's
traffic), each server in its own process; measured: idle CPU (20 s, no client), CPU with
one page connected (20 s), resident memory. Starlette is not a dependency of the project:
run this from a throwaway venv::

    python3 -m venv /tmp/webcmp && /tmp/webcmp/bin/pip install aiohttp starlette uvicorn websockets psutil
    /tmp/webcmp/bin/python scripts/web_stack_compare.py

Prints one JSON object; docs/benchmarks.md ("Web controller") has the figures.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

AIOHTTP_APP = """
import asyncio, json, sys
from aiohttp import web, WSMsgType
FRAME = bytes(6000)
async def index(req): return web.Response(text="<html>hi</html>", content_type="text/html")
async def ws(req):
    w = web.WebSocketResponse(); await w.prepare(req)
    async def push():
        while not w.closed:
            await w.send_bytes(FRAME); await w.send_str(json.dumps({"mode": "user", "s": 0.1, "t": 0.2}))
            await asyncio.sleep(0.05)
    t = asyncio.create_task(push())
    async for m in w:
        if m.type == WSMsgType.TEXT: json.loads(m.data)
    t.cancel(); return w
app = web.Application(); app.router.add_get("/", index); app.router.add_get("/ws", ws)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

STARLETTE_APP = """
import asyncio, json, sys
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect
import uvicorn
FRAME = bytes(6000)
async def index(req): return HTMLResponse("<html>hi</html>")
async def ws(w):
    await w.accept()
    async def push():
        while True:
            await w.send_bytes(FRAME); await w.send_text(json.dumps({"mode": "user", "s": 0.1, "t": 0.2}))
            await asyncio.sleep(0.05)
    t = asyncio.create_task(push())
    try:
        while True: json.loads(await w.receive_text())
    except WebSocketDisconnect: pass
    t.cancel()
app = Starlette(routes=[Route("/", index), WebSocketRoute("/ws", ws)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, ws=sys.argv[2])
"""


def cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def one_page(port: int, proc, seconds: float) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as w:

        async def send() -> None:
            while True:
                await w.send_str(json.dumps({"type": "drive", "steering": 0.1, "throttle": 0.2}))
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(send())
        await asyncio.sleep(2)
        c0, t0, n = cpu_s(proc), time.time(), 0
        while time.time() - t0 < seconds:
            await w.receive()
            n += 1
        busy = (cpu_s(proc) - c0) / seconds * 100
        sender.cancel()
        return busy, n / seconds


def measure(name: str, code: str, port: int, extra: list[str], seconds: float) -> dict:
    import psutil

    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        proc = psutil.Process(p.pid)
        c0 = cpu_s(proc)
        time.sleep(seconds)
        idle = (cpu_s(proc) - c0) / seconds * 100
        rss_idle = proc.memory_info().rss / 2**20
        busy, rate = asyncio.run(one_page(port, proc, seconds))
        return {
            "stack": name,
            "idle_cpu_pct": round(idle, 2),
            "page_cpu_pct": round(busy, 2),
            "messages_per_s": round(rate, 1),
            "rss_mb": round(rss_idle, 1),
        }
    finally:
        p.terminate()
        p.wait()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    out = [
        measure("aiohttp", AIOHTTP_APP, 18901, [], seconds),
        measure("starlette+uvicorn (websockets)", STARLETTE_APP, 18902, ["websockets"], seconds),
    ]
    print(json.dumps({"seconds": seconds, "results": out}))


if __name__ == "__main__":
    main()
