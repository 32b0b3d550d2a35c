"""``edgepilot bench web``: the web controller measured in headless Chromium, one run.

On the bench car of ``vehicle.web.rig`` (the real loop, ``FramedActuator`` on a pty,
recorded frames as a 20 Hz camera), side by side:

- ``key_to_motor_ms``: a key pressed in the page (the browser's own event time) to the
  first command with that key's effect in the bytes on the pty, p50/p99 over
  ``--presses`` presses of W and D in turn; targets p50 <= 30 ms, p99 <= 60 ms;
- ``view``: camera frames the page shows per second against the camera's rate, and their
  age (loop frame -> shown), over the page's WebSocket and over ``/video.mjpg``;
- ``loop``: the loop's own rate and this process's CPU with no page, with the page (WS
  view), with an MJPEG viewer; and the loop's capacity (no camera pacing) with and
  without the page.

Chromium and chromedriver come from Debian (launch/apt-packages.txt), selenium from the
dev extra. Numbers go in docs/benchmarks.md, "Web controller".
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepilot import stats
from edgepilot.browser import chromium
from edgepilot.config import Profile, WebConfig
from edgepilot.drive.loop import LoopOptions
from vehicle.web.rig import Rig

TARGET_P50_MS = 30.0
TARGET_P99_MS = 60.0

MJPEG_PROBE = """
const done = arguments[arguments.length - 1];
const seconds = arguments[0];
const ages = []; let n = 0; const t0 = Date.now();
const ctl = new AbortController();
fetch("/video.mjpg", {signal: ctl.signal}).then(async (resp) => {
  const reader = resp.body.getReader(); const dec = new TextDecoder(); let text = "";
  while (Date.now() - t0 < seconds * 1000) {
    const {value, done: end} = await reader.read();
    if (end) break;
    text += dec.decode(value, {stream: true});
    let m;
    const re = /X-Frame-Time: ([0-9.]+)/g;
    while ((m = re.exec(text)) !== null) { n++; ages.push(Date.now() - Number(m[1])); }
    text = text.slice(-64);
  }
  ctl.abort();
  done({frames: n, seconds: (Date.now() - t0) / 1000, ages});
}).catch((e) => done({error: String(e)}));
"""


def pct(xs: list[float], q: float) -> float | None:
    return stats.pct(xs, q, digits=2).get(f"p{q:g}")


def _profile(tmp: Path) -> Profile:
    prof = Profile(car_id="bench")
    prof.web = WebConfig(bind="127.0.0.1", port=0, token_file=str(tmp / "web-token"))
    return prof


def _rate(rig: Rig, seconds: float) -> dict[str, float]:
    """The loop's frames/s and this process's CPU (% of one core) over ``seconds``."""
    f0, c0, t0 = rig.loop.stats.frames, time.process_time(), time.perf_counter()
    time.sleep(seconds)
    dt = time.perf_counter() - t0
    return {
        "loop_fps": round((rig.loop.stats.frames - f0) / dt, 2),
        "cpu_pct": round((time.process_time() - c0) / dt * 100, 1),
    }


def _ws_view(drv: Any, rig: Rig, seconds: float) -> dict[str, Any]:
    drv.execute_script("window.edgepilot.ages.length = 0; window.edgepilot.arrivalAges.length = 0")
    n0 = drv.execute_script("return window.edgepilot.framesReceived")
    out = _rate(rig, seconds)
    n1, shown, arrived = drv.execute_script(
        "const p = window.edgepilot; return [p.framesReceived, p.ages, p.arrivalAges]"
    )
    out.update(
        view_fps=round((n1 - n0) / seconds, 2),
        age_ms={"p50": pct(arrived, 50), "p99": pct(arrived, 99)},  # as MJPEG's: on arrival
        shown_age_ms={"p50": pct(shown, 50), "p99": pct(shown, 99)},  # decoded and drawn
    )
    return out


def _mjpeg_view(drv: Any, rig: Rig, seconds: float) -> dict[str, Any]:
    """The same page with its own camera off (its Camera box), reading ``/video.mjpg``."""
    drv.find_element("id", "video").click()
    drv.set_script_timeout(seconds + 30)
    f0, c0, t0 = rig.loop.stats.frames, time.process_time(), time.perf_counter()
    got = drv.execute_async_script(MJPEG_PROBE, seconds)
    dt = time.perf_counter() - t0
    if "error" in got:
        return {"error": got["error"]}
    return {
        "loop_fps": round((rig.loop.stats.frames - f0) / dt, 2),
        "cpu_pct": round((time.process_time() - c0) / dt * 100, 1),
        "view_fps": round(got["frames"] / got["seconds"], 2),
        "age_ms": {"p50": pct(got["ages"], 50), "p99": pct(got["ages"], 99)},
    }


def _open(drv: Any, rig: Rig) -> None:
    drv.get(rig.url)
    deadline = time.monotonic() + 20
    while not drv.execute_script("return !!(window.edgepilot && window.edgepilot.framesReceived > 5)"):
        if time.monotonic() > deadline:
            raise RuntimeError("the page did not show the camera")
        time.sleep(0.05)


def key_to_motor(drv: Any, rig: Rig, presses: int, period_s: float) -> tuple[list[float], int]:
    """Browser key event -> first CMD frame on the pty with the key's effect, ms; and the
    presses lost to a deadman trip (a page starved of CPU for > deadman: retried).

    Each press waits a random part of a frame period first: a person's key lands anywhere
    in the loop's period, while a press right after the motor's last command (when this
    loop would otherwise press) always lands just after a frame, its worst phase."""
    from selenium.webdriver.common.action_chains import ActionChains

    neutral = rig.pulses(0.0, 0.0)
    out: list[float] = []
    trips = 0
    phase = random.Random(0)
    while len(out) < presses:
        i = len(out)
        key, moved = (
            ("w", lambda c: c.throttle_us > neutral[1])
            if i % 2 == 0
            else ("d", lambda c: c.steering_us > neutral[0])
        )
        m, trips_before = rig.motor.mark(), rig.web.user.trips
        ActionChains(drv).key_down(key).perform()
        got = rig.motor.wait(moved, m)
        key_ms = drv.execute_script("return window.edgepilot.lastKeyEpochMs")
        ActionChains(drv).key_up(key).perform()
        if rig.web.user.trips > trips_before:
            trips += 1
        elif got is None or key_ms is None:
            raise RuntimeError(f"press {i}: the motor never moved")
        else:
            out.append(got.t * 1e3 - key_ms)
        if rig.motor.wait(lambda c: (c.steering_us, c.throttle_us) == neutral, rig.motor.mark()) is None:
            raise RuntimeError(f"press {i}: the motor never came back to neutral")
        rig.motor.more(2)  # a frame or two at rest, so the next press starts from neutral
        time.sleep(phase.uniform(0.0, period_s))
    return out, trips


def screenshot(path: str, fps: float = 20.0) -> str:
    """The page while driving and recording (docs/img/web-controller.png)."""
    from selenium.webdriver.common.action_chains import ActionChains

    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(_profile(Path(tmp)), log_dir=Path(tmp) / "log", fps=fps)
        drv = chromium(1100, 880)
        try:
            _open(drv, rig)
            drv.find_element("id", "record").click()
            ActionChains(drv).key_down("w").key_down("d").perform()
            while drv.execute_script("return window.edgepilot.hud.records || 0") < 40:
                time.sleep(0.05)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(path)
        finally:
            drv.quit()
            rig.stop()
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "camera_fps": args.fps,
        "targets_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
        "cpus": os.cpu_count(),
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        opts = LoopOptions(mode="user", throttle_cap=0.5)
        rig = Rig(_profile(Path(tmp)), options=opts, fps=args.fps)
        drv = chromium(1100, 760)
        try:
            rig.motor.more(10)  # settled
            out["no_page"] = _rate(rig, args.seconds)
            _open(drv, rig)
            out["ws_page"] = _ws_view(drv, rig, args.seconds)
            f0, t0 = rig.loop.stats.frames, time.perf_counter()
            lat, trips = key_to_motor(drv, rig, args.presses, 1.0 / args.fps)
            period_ms = (time.perf_counter() - t0) / max(1, rig.loop.stats.frames - f0) * 1e3
            out["key_to_motor_ms"] = {
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "max": round(max(lat), 2),
                "n": len(lat),
                "mean": round(statistics.fmean(lat), 2),
                # a key lands anywhere in a frame period and waits for the next frame: the
                # floor any loop at this rate has, before a byte moves
                "frame_wait_floor": {"p50": round(period_ms / 2, 2), "p99": round(period_ms * 0.99, 2)},
                "deadman_trips": trips,  # presses retried: the page was starved past the deadman
            }
            out["mjpeg_page"] = _mjpeg_view(drv, rig, args.seconds)
        finally:
            drv.quit()
            rig.stop()
        out["capacity"] = _capacity(Path(tmp), args.seconds)
    out["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    k = out["key_to_motor_ms"]
    out["meets_targets"] = k["p50"] <= TARGET_P50_MS and k["p99"] <= TARGET_P99_MS
    if args.screenshot:
        out["screenshot"] = screenshot(args.screenshot, args.fps)
    return out


def _capacity(tmp: Path, seconds: float) -> dict[str, Any]:
    """The loop unpaced (no camera rate): frames/s with no page, then with the page."""
    rig = Rig(_profile(tmp), options=LoopOptions(mode="user", throttle_cap=0.5), fps=10_000.0)
    drv = chromium(1100, 760)
    try:
        rig.motor.more(10)
        res = {"no_page": _rate(rig, seconds)}
        _open(drv, rig)
        res["ws_page"] = _ws_view(drv, rig, seconds)
    finally:
        drv.quit()
        rig.stop()
    return res
