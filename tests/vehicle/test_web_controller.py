"""The web controller in a real headless Chromium, driving the real loop onto a pty.

``vehicle.web.rig`` builds the car: ``DriveLoop`` with the page's ``WebUser``, a
``FramedActuator`` whose serial port is a pseudo-terminal (the test is the motor
controller: it decodes every CMD frame with ``vehicle.serial_proto``), a real
``LogWriter``, and recorded frames played as a 20 Hz camera. The browser presses keys,
clicks, drags and (through a stood-in ``navigator.getGamepads``: no USB pad exists here)
moves a gamepad; the assertions are on the bytes that reach the pty.

Times are never compared with bare constants: the deadman checks use the configured
deadman and margins measured by the same test (its own key-to-motor latencies and the
loop's period as the pty sees it).
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from edgepilot.browser import chromium, find_chromium
from edgepilot.config import Profile, WebConfig
from edgepilot.drivelog import LogReader
from tests.helpers import wait_for
from vehicle.web.rig import Rig

try:
    find_chromium()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except Exception as e:  # noqa: BLE001 - the reason is shown in the skip
    pytest.skip(f"no browser for the web tests: {e}", allow_module_level=True)

NEUTRAL = (1500, 1500)
DEADMAN_MS = 250  # the profile's default, what the deadman test holds the car to
# The other tests are not about the deadman: on this shared 2-core machine a starved
# browser can miss four sends in a row, and the trip (correct then) would end their drive.
RELAXED_DEADMAN_MS = 1000


def web_profile(tmp_path, deadman_ms: int = RELAXED_DEADMAN_MS, **web) -> Profile:
    prof = Profile(car_id="car-web")
    prof.web = WebConfig(
        bind="127.0.0.1", port=0, token_file=str(tmp_path / "web-token"), deadman_ms=deadman_ms, **web
    )
    return prof


@pytest.fixture(scope="module")
def browser():
    drv = chromium(1100, 760)
    yield drv
    drv.quit()


@pytest.fixture
def rig(tmp_path):
    r = Rig(web_profile(tmp_path), log_dir=tmp_path / "log")
    yield r
    r.stop()


def until(drv, expr: str, timeout: float = 10.0):
    """Poll a JavaScript expression in the page until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = drv.execute_script(f"return {expr}")
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expr}")
        time.sleep(0.02)


def open_page(drv, rig: Rig) -> None:
    drv.get(rig.url)
    until(drv, "window.edgepilot && window.edgepilot.connected && window.edgepilot.role === 'driver'")
    until(drv, "window.edgepilot.framesReceived > 2")  # the camera view is live


def hold(drv, key: str):
    ActionChains(drv).key_down(key).perform()


def let_go(drv, key: str):
    ActionChains(drv).key_up(key).perform()


def reach(rig: Rig, steering: float, throttle: float, after: int, timeout: float = 5.0):
    """The first command on the pty equal to (steering, throttle) after mark ``after``."""
    want = rig.pulses(steering, throttle)
    got = rig.motor.wait(lambda c: (c.steering_us, c.throttle_us) == want, after, timeout)
    assert got is not None, f"the motor never got {want}; last: {rig.motor.since(after)[-3:]}"
    return got


def test_keys_drive_the_motor_and_recording_lands_in_the_log(browser, rig, tmp_path):
    open_page(browser, rig)
    m = rig.motor.mark()
    hold(browser, "w")
    reach(rig, 0.0, 0.5, m)  # forward, up to the loop's throttle cap
    seen = rig.motor.since(m)
    assert all(c.steering_us == 1500 and c.throttle_us >= 1500 for c in seen)
    assert any(1500 < c.throttle_us < 1750 for c in seen)  # it ramped up, no jump
    let_go(browser, "w")
    reach(rig, 0.0, 0.0, rig.motor.mark())
    for keys, (s, t) in (
        (["d"], (1.0, 0.0)),
        (["a"], (-1.0, 0.0)),
        (["s"], (0.0, -0.5)),  # brake/reverse, capped
        ([Keys.ARROW_UP, Keys.ARROW_LEFT], (-1.0, 0.5)),
        ([Keys.ARROW_DOWN, Keys.ARROW_RIGHT], (1.0, -0.5)),
    ):
        m = rig.motor.mark()
        for k in keys:
            hold(browser, k)
        reach(rig, s, t, m)
        for k in keys:
            let_go(browser, k)
        reach(rig, 0.0, 0.0, rig.motor.mark())

    # record: toggled on the page, W held, erase the last second, toggled off
    browser.find_element(By.ID, "record").click()
    until(browser, "window.edgepilot.hud.recording === true")
    hold(browser, "w")
    until(browser, "window.edgepilot.hud.records >= 30")
    let_go(browser, "w")
    reach(rig, 0.0, 0.0, rig.motor.mark())
    ActionChains(browser).send_keys(Keys.BACKSPACE).perform()
    assert wait_for(lambda: rig.loop.stats.deleted > 0)
    ActionChains(browser).send_keys("r").perform()
    until(browser, "window.edgepilot.hud.recording === false")
    recorded = rig.loop.stats.recorded
    assert len(rig.motor.more(10)) == 10
    assert rig.loop.stats.recorded == recorded  # off means off
    shown = browser.execute_script("return window.edgepilot.hud.records")
    rig.stop()
    recs = LogReader(tmp_path / "log").records()
    assert shown == recorded and len(recs) == recorded - rig.loop.stats.deleted > 0
    assert all(r.mode == "user" and r.applied_throttle <= 0.5 for r in recs)
    # the label is the throttle the car got (W held: the page asked 1.0, the cap gave 0.5)
    assert max(r.throttle for r in recs) == 0.5 == max(r.applied_throttle for r in recs)
    assert {r.label_source for r in recs} == {"human"}
    assert LogReader(tmp_path / "log").jpeg(recs[0])  # the camera frame was written


def key_latencies(drv, rig: Rig, n: int) -> list[float]:
    """Key press (the browser's event time) to the first forward command on the pty, ms."""
    out = []
    for _ in range(n):
        m = rig.motor.mark()
        hold(drv, "w")
        got = rig.motor.wait(lambda c: c.throttle_us > 1500, m)
        assert got is not None
        out.append(got.t * 1e3 - drv.execute_script("return window.edgepilot.lastKeyEpochMs"))
        let_go(drv, "w")
        reach(rig, 0.0, 0.0, rig.motor.mark())
    return out


def time_to_neutral(rig: Rig, since_epoch: float, after: int) -> float:
    got = rig.motor.wait(lambda c: c.throttle_us == 1500, after)
    assert got is not None, "the car never went to neutral"
    return (got.t - since_epoch) * 1e3


@pytest.fixture
def strict_rig(tmp_path):
    r = Rig(web_profile(tmp_path, deadman_ms=DEADMAN_MS))
    yield r
    r.stop()


def test_closed_tab_and_silent_page_go_neutral_within_the_deadman(browser, strict_rig):
    rig = strict_rig
    browser.get("about:blank")
    spare = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_page(browser, rig)
    f0, t0 = rig.loop.stats.frames, time.perf_counter()
    lat = key_latencies(browser, rig, 5)
    period_ms = (time.perf_counter() - t0) / (rig.loop.stats.frames - f0) * 1e3  # the loop's, measured
    margin = max(lat)  # what a command needs to reach the motor here and now
    # 1. the tab is closed while W is held
    hold(browser, "w")
    reach(rig, 0.0, 0.5, rig.motor.mark())
    m, t0 = rig.motor.mark(), time.time()
    browser.close()
    closed_ms = time_to_neutral(rig, t0, m)
    assert closed_ms <= DEADMAN_MS + margin, (closed_ms, lat)
    # 2. the page stops sending with its socket open (a hung tab, Wi-Fi that drops packets):
    # its script is kept busy, so no timer runs
    browser.switch_to.window(spare)
    open_page(browser, rig)
    until(browser, "window.edgepilot.deadman && window.edgepilot.deadman.reason === 'lost'")  # told
    hold(browser, "w")
    reach(rig, 0.0, 0.5, rig.motor.mark())
    m = rig.motor.mark()
    browser.execute_script(
        "const ms = arguments[0]; setTimeout(() => {"
        " window.lastBeforeHang = window.edgepilot.lastSendEpochMs;"
        " const end = Date.now() + ms; while (Date.now() < end) {} }, 0)",
        4 * DEADMAN_MS,
    )
    got = rig.motor.wait(lambda c: c.throttle_us == 1500, m)
    assert got is not None, "the car never went to neutral"
    last_sent = until(browser, "window.lastBeforeHang")  # answers once the hang is over
    silent_ms = got.t * 1e3 - last_sent
    send_ms = 1000 / rig.profile.web.send_hz
    assert DEADMAN_MS - 2 * period_ms <= silent_ms <= DEADMAN_MS + margin, (silent_ms, period_ms, lat)
    # back: the page says why, and W still held does not drive until it is let go
    note = until(
        browser,
        "window.edgepilot.deadman && window.edgepilot.deadman.reason === 'silent' && window.edgepilot.deadman",
    )
    # the car trips one loop period ahead of the deadline, so on time it reports <= 250 ms;
    # a loop tick that comes late on a loaded machine reports a little more (250.1 in one CI run)
    assert DEADMAN_MS - period_ms - send_ms <= note["silent_ms"] <= DEADMAN_MS + margin, (note, lat)
    assert browser.find_element(By.ID, "banner-deadman").is_displayed()
    assert all(c.throttle_us == 1500 for c in rig.motor.more(10))
    let_go(browser, "w")
    hold(browser, "w")
    reach(rig, 0.0, 0.5, rig.motor.mark())
    let_go(browser, "w")
    print(
        f"\nkey->motor ms {lat}; closed tab -> neutral {closed_ms:.0f} ms; silent -> neutral {silent_ms:.0f} ms"
    )


def test_wrong_token_is_refused_and_the_right_one_logs_in(browser, tmp_path):
    rig = Rig(web_profile(tmp_path, loopback_open=False, token="the-right-token-42"))
    try:
        browser.get(rig.url + "?token=wrong-token")
        assert "Wrong token." in browser.page_source
        assert browser.execute_script("return window.edgepilot === undefined")

        async def knock(query: str) -> int:
            async with aiohttp.ClientSession() as s:
                try:
                    async with s.ws_connect(rig.url + "ws" + query) as ws:
                        return (await next_json(ws, "hello"))["type"] == "hello" and 101
                except aiohttp.WSServerHandshakeError as e:
                    return e.status

        assert asyncio.run(knock("")) == 401
        assert asyncio.run(knock("?token=wrong-token")) == 401
        assert asyncio.run(knock("?token=the-right-token-42")) == 101

        async def watch(query: str) -> int:
            async with aiohttp.ClientSession() as s, s.get(rig.url + "video.mjpg" + query) as resp:
                return resp.status

        assert asyncio.run(watch("")) == 401 and asyncio.run(watch("?token=the-right-token-42")) == 200
        browser.get(rig.url)
        browser.find_element(By.ID, "token").send_keys("the-right-token-42")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        until(browser, "window.edgepilot && window.edgepilot.connected")
        assert rig.web.user.server.stats["unauthorized"] >= 3
        assert all((c.steering_us, c.throttle_us) == NEUTRAL for c in rig.motor.since(0))
    finally:
        rig.stop()


BAD = [
    ('{"type": "drive", "steering": 0.9, "throttle": NaN}', "NaN"),
    ('{"type": "drive", "steering": 0.9, "throttle": 5}', "outside -1..1"),
    ('{"type": "drive", "steering": "0.9", "throttle": 0.9}', "expected a number"),
    ('{"type": "drive", "steering": 0.9, "throttle": 0.9, "turbo": true}', "unknown field"),
    ('{"type": "drive", "steering": 0.9, "throttle": 0.9, "pad": "' + "x" * 600 + '"}', "over the limit"),
    ('{"type": "drive!", "steering": 0.9, "throttle": 0.9}', "unknown message type"),
    ("drive 0.9 0.9", "not valid JSON"),
    (b"\x01\x02", "binary"),
]


async def next_json(ws, kind: str, timeout: float = 10.0) -> dict:
    """The next text message of type ``kind`` (camera frames and HUD states skipped);
    the timeout is a hang guard, not a measurement."""

    async def scan() -> dict:
        while True:
            m = await ws.receive()
            if m.type == aiohttp.WSMsgType.TEXT and (d := json.loads(m.data))["type"] == kind:
                return d
            if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"socket closed while waiting for {kind}")

    return await asyncio.wait_for(scan(), timeout)


def test_bad_messages_get_an_error_and_never_reach_the_motor(rig):
    async def attack() -> tuple[list[str], str, list[str]]:
        async with aiohttp.ClientSession() as s, s.ws_connect(rig.url + "ws") as ws:
            assert (await next_json(ws, "hello"))["role"] == "driver"
            errors = []
            for raw, _ in BAD:
                await (ws.send_bytes(raw) if isinstance(raw, bytes) else ws.send_str(raw))
                errors.append((await next_json(ws, "error"))["error"])
                await asyncio.to_thread(rig.motor.more, 3)  # frames in which a leak would show
            async with s.ws_connect(rig.url + "ws") as viewer:
                assert (await next_json(viewer, "hello"))["role"] == "viewer"
                await viewer.send_str('{"type": "drive", "steering": 0.9, "throttle": 0.9}')
                viewer_error = (await next_json(viewer, "error"))["error"]
                await asyncio.to_thread(rig.motor.more, 3)
            await ws.send_str('{"type": "drive", "steering": 0.0, "throttle": 0.3}')  # the channel works
            reach(rig, 0.0, 0.3, 0)
            for _ in range(400):  # a flood: more than max_msgs_per_s at once
                await ws.send_str('{"type": "drive", "steering": 0.0, "throttle": 0.0}')
            flood = []
            while not flood:
                m = await next_json(ws, "error")
                flood += [m["error"]] if "flood" in m["error"] else []
            return errors, viewer_error, flood

    m = rig.motor.mark()
    errors, viewer_error, flood = asyncio.run(attack())
    for (_, says), got in zip(BAD, errors, strict=True):
        assert says in got
    assert "watching" in viewer_error and flood
    moved = [c for c in rig.motor.since(m) if (c.steering_us, c.throttle_us) != NEUTRAL]
    assert moved and all(c.steering_us == 1500 and c.throttle_us == rig.pulses(0, 0.3)[1] for c in moved)
    assert rig.web.user.server.stats["refused"] == len(BAD) + 1


def test_touch_pad_and_gamepad_drive(browser, rig):
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    # the browser's gamepad: a stand-in object in the Gamepad API's shape, set before the page loads
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__pad = {connected: true, id: 'stand-in', index: 0, axes: [0, 0, 0, 0],"
            " buttons: Array.from({length: 8}, () => ({pressed: false, value: 0}))};"
            " Object.defineProperty(navigator, 'getGamepads', {value: () => [window.__pad]});"
        },
    )
    open_page(browser, rig)
    pad = browser.find_element(By.ID, "pad")
    half = pad.size["width"] / 2
    finger = PointerInput(interaction.POINTER_TOUCH, "finger")
    act = ActionBuilder(browser, mouse=finger)
    act.pointer_action.move_to(pad).pointer_down().move_to(pad, int(half * 0.5), -int(half * 0.6))
    act.pointer_action.pause(1.0).pointer_up()  # a finger up and right, held, lifted
    m = rig.motor.mark()
    act.perform()
    drove = rig.motor.wait(lambda c: c.steering_us > 1500 and c.throttle_us > 1500, m)
    assert drove is not None, rig.motor.since(m)[-3:]  # forward, steering right
    lifted = rig.motor.wait(lambda c: (c.steering_us, c.throttle_us) == NEUTRAL and c.t > drove.t, m)
    assert lifted is not None
    held = [c for c in rig.motor.since(m) if drove.t <= c.t < lifted.t]
    assert len(held) > 1 and all(c.throttle_us > 1500 for c in held)  # held while the finger was down
    m = rig.motor.mark()
    browser.execute_script("window.__pad.axes[0] = -0.5; window.__pad.axes[1] = -1.0;")  # left, stick up
    reach(rig, -0.5, 0.5, m)  # the profile's mapping: throttle axis inverted, then capped
    browser.execute_script("window.__pad.axes[0] = 0.02; window.__pad.axes[1] = 0.03;")  # in the dead zone
    reach(rig, 0.0, 0.0, rig.motor.mark())
    browser.execute_script("window.__pad.buttons[0] = {pressed: true, value: 1};")  # record
    until(browser, "window.edgepilot.hud.recording === true")


def test_estop_brakes_and_holds_and_throttle_scale_and_constant(browser, rig):
    open_page(browser, rig)
    hold(browser, "w")
    reach(rig, 0.0, 0.5, rig.motor.mark())
    m = rig.motor.mark()
    browser.find_element(By.ID, "estop").click()
    brake = reach(rig, 0.0, -0.5, m)  # a reverse pulse: the ESC brakes
    held = reach(rig, 0.0, 0.0, m)
    assert held.t > brake.t
    until(browser, "window.edgepilot.hud.estop === true && window.edgepilot.hud.mode === 'user'")
    assert browser.find_element(By.ID, "banner-estop").is_displayed()
    assert all(c.throttle_us == 1500 for c in rig.motor.more(10))  # W still held: e-stop wins
    let_go(browser, "w")
    browser.find_element(By.ID, "release").click()
    until(browser, "window.edgepilot.hud.estop === false")
    # max throttle 40%: W gives 0.4 (under the 0.5 cap); constant throttle drives without a key
    browser.execute_script(
        "const e = document.getElementById('scale'); e.value = 40; e.dispatchEvent(new Event('input'));"
    )
    until(browser, "window.edgepilot.hud.throttle_scale === 0.4")
    m = rig.motor.mark()
    hold(browser, "w")
    reach(rig, 0.0, 0.4, m)
    let_go(browser, "w")
    reach(rig, 0.0, 0.0, rig.motor.mark())
    m = rig.motor.mark()
    browser.find_element(By.ID, "constant").click()
    reach(rig, 0.0, 0.4, m)
    browser.find_element(By.ID, "constant").click()
    reach(rig, 0.0, 0.0, rig.motor.mark())
    browser.find_element(By.CSS_SELECTOR, "#modes button[data-mode=local]").click()
    assert until(browser, "window.edgepilot.errors.find(e => e.includes('no autopilot model'))")
    # camera off (a phone's data plan): the HUD goes on, the frames stop; and back on
    browser.find_element(By.ID, "video").click()
    seq = until(browser, "window.edgepilot.hud.seq")
    until(browser, f"window.edgepilot.hud.seq > {seq} + 2")  # in flight when it was clicked
    frames = browser.execute_script("return window.edgepilot.framesReceived")
    until(browser, f"window.edgepilot.hud.seq > {seq} + 12")
    assert browser.execute_script("return window.edgepilot.framesReceived") == frames
    browser.find_element(By.ID, "video").click()
    until(browser, f"window.edgepilot.framesReceived > {frames}")


def test_mjpeg_stream_serves_the_camera_at_its_size(rig):
    """``/video.mjpg`` for viewers other than the page (VLC, an ``<img>``): real JPEGs."""
    import cv2
    import numpy as np

    async def two_parts() -> list[bytes]:
        async with aiohttp.ClientSession() as s, s.get(rig.url + "video.mjpg") as resp:
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            reader = aiohttp.MultipartReader.from_response(resp)
            parts = []
            while len(parts) < 2:
                part = await reader.next()
                parts.append(await part.read())
            return parts

    for data in asyncio.run(two_parts()):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (120, 160, 3)


def test_sim_drive_takes_the_page_and_the_expert_labels(tmp_path):
    """``sim drive --pilot keyboard --web``'s wiring: the simulator's source and car, the
    page's user with the expert as labeller. In user mode the page drives the simulated
    car; in local mode the expert does; every record keeps who drove."""
    import io
    import threading

    from edgepilot.drive.loop import DriveLoop, LoopOptions
    from edgepilot.drivelog import LogWriter
    from edgepilot.sim.expert import Expert
    from edgepilot.sim.parts import ExpertUser, SimActuator, SimSource
    from edgepilot.sim.tracks import load_track
    from edgepilot.sim.world import SimWorld
    from vehicle.web import start_web

    world = SimWorld(load_track("oval"), dt=0.05)
    expert = Expert(world.track, perturb=0.0, seed=1)
    web = start_web(
        web_profile(tmp_path), mode="user", labels=ExpertUser(expert, world), out=io.StringIO()
    )
    writer = LogWriter(tmp_path / "sim-log")
    loop = DriveLoop(
        SimSource(world),
        SimActuator(world),
        user=web.user,
        recorder=writer,
        options=LoopOptions(mode="user", rate_hz=50, record=True),
        on_frame=web.on_frame,
    )
    th = threading.Thread(target=loop.run, daemon=True)
    th.start()
    url = web.user.server.url.replace("0.0.0.0", "127.0.0.1")

    async def drive() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "ws") as ws:
            hello = await next_json(ws, "hello")
            assert hello["role"] == "driver" and hello["autopilot"]  # the expert can take over
            cmd = {"type": "drive", "steering": -0.2, "throttle": 0.4}

            async def send() -> None:  # as the page does: the command at 20 Hz, whatever happens
                while True:
                    await ws.send_str(json.dumps(cmd))
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(send())
            for _ in range(500):  # the page's throttle reaches the simulated car
                if (await next_json(ws, "state"))["throttle"] == 0.4 and world.car.state.throttle == 0.4:
                    break
            assert world.car.state.throttle == 0.4
            cmd["throttle"] = 0.0
            await ws.send_str('{"type": "mode", "mode": "local"}')
            for _ in range(500):
                if (await next_json(ws, "state"))["mode"] == "local":
                    break
            n = loop.stats.recorded
            for _ in range(500):  # the expert drives
                await next_json(ws, "state")
                if loop.stats.recorded >= n + 20:
                    break
            sender.cancel()

    try:
        asyncio.run(drive())
    finally:
        loop.stop()
        th.join(5)
        web.stop()
        writer.close()
    recs = LogReader(tmp_path / "sim-log").records()
    human = [r for r in recs if r.mode == "user" and r.throttle == 0.4]
    auto = [r for r in recs if r.mode == "local"]
    assert human and all(r.steering == -0.2 for r in human)
    assert len(auto) >= 20 and all(r.applied_throttle > 0 for r in auto[5:])  # the expert, not the page's 0


def test_tls_serves_the_controller_over_https_and_wss(tmp_path):
    """``web.tls_cert``/``tls_key``: the page and its socket over TLS (a self-signed
    certificate made here with ``cryptography``); a missing key file is a clear error."""
    import datetime
    import io
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from edgepilot import EdgepilotError
    from vehicle.web import start_web

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "car-web")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "web.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "web.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    prof = web_profile(tmp_path, tls_cert=str(tmp_path / "web.crt"), tls_key=str(tmp_path / "web.key"))
    web = start_web(prof, out=io.StringIO())
    try:
        url = web.user.server.url.replace("0.0.0.0", "127.0.0.1")
        assert url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "web.crt"))
        ctx.check_hostname = False  # the certificate names the car, the test dials 127.0.0.1

        async def hello() -> dict:
            async with aiohttp.ClientSession() as s:
                async with s.get(url, ssl=ctx) as page:
                    assert page.status == 200 and "app.js" in await page.text()
                async with s.ws_connect(url + "ws", ssl=ctx) as ws:
                    return await next_json(ws, "hello")

        assert asyncio.run(hello())["role"] == "driver"
    finally:
        web.stop()
    prof.web.tls_key = str(tmp_path / "missing.key")
    with pytest.raises(EdgepilotError, match="tls_cert/tls_key"):
        start_web(prof, out=io.StringIO())
