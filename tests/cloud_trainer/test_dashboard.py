"""The fleet dashboard without a browser: its view of the bus, its access rules over real
HTTP, and model changes asked over the bus and run by the cloud trainer (a real Mosquitto,
a real registry of signed packages, the real announcement). The page itself is tested in a
browser by tests/system/test_dashboard.py."""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

from cloud_trainer.control import ModelControl  # noqa: E402
from cloud_trainer.dashboard.access import MAX_FAILURES  # noqa: E402
from cloud_trainer.dashboard.cli import Background, build  # noqa: E402
from cloud_trainer.dashboard.storeview import StoreView, plot_key, run_card  # noqa: E402
from cloud_trainer.dashboard.view import FleetView  # noqa: E402
from cloud_trainer.registry import Registry  # noqa: E402
from cloud_trainer.report import markdown  # noqa: E402
from cloud_trainer.retrain import RetrainConfig, gate  # noqa: E402
from cloud_trainer.service import CloudService  # noqa: E402
from cloud_trainer.store import DirStore  # noqa: E402
from edgepilot import EdgepilotError  # noqa: E402
from edgepilot.config import BrokerConfig, DashboardConfig, Profile  # noqa: E402
from edgepilot.keys import ANNOUNCEMENTS, load_private_key, make_keys  # noqa: E402
from edgepilot.mqtt import Connection  # noqa: E402
from edgepilot.schema import fleet, wire  # noqa: E402
from edgepilot.schema.wire import WireError  # noqa: E402
from tests.cloud_trainer.test_registry import make_package  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

TOKEN = "operator-token-for-the-tests-0123456789"
STATIC = Path(__file__).resolve().parents[2] / "cloud_trainer" / "dashboard" / "static"


# -- the message ----------------------------------------------------------------------------


def change(action="promote", target="car", version="v-2", at=None, token=TOKEN, **kw) -> fleet.ModelChange:
    c = fleet.ModelChange("req-0123456789", action, target, version, by="test", at=at or time.time(), **kw)
    c.mac = fleet.change_mac(c, token)
    return c


def test_a_model_change_round_trips_and_bad_ones_are_refused_by_name():
    c = change()
    back = fleet.decode_model_change(fleet.encode_model_change(c))
    assert back == c and fleet.change_mac_ok(back, TOKEN) and not fleet.change_mac_ok(back, TOKEN + "x")
    back.version = "v-3"  # any signed field changed: the mac no longer checks
    assert not fleet.change_mac_ok(back, TOKEN)
    for bad, word in [
        (change(action="delete"), "action"),
        (change(target="tails"), "target"),
        (change(action="rollback", version="v-1"), "rollback names no version"),
        (change(version="../x"), "version"),
        (fleet.ModelChange("short", "promote", "car", "v", at=1.0, mac="0" * 64), "id"),
        (fleet.ModelChange("req-0123456789", "promote", "car", "v", at=1.0, mac="xyz"), "mac"),
    ]:
        with pytest.raises(WireError, match=word):
            fleet.encode_model_change(bad)
    with pytest.raises(WireError, match="version 9"):
        fleet.decode_model_change(json.dumps({**json.loads(fleet.encode_model_change(c)), "v": 9}).encode())
    with pytest.raises(WireError, match="must say why"):
        fleet.encode_model_change_result(fleet.ModelChangeResult("req-0123456789", ok=False))


# -- the cloud runs changes ------------------------------------------------------------------


@pytest.fixture
def fleet_keys(tmp_path):
    priv, pub = make_keys(tmp_path / "keys")
    apriv, apub = make_keys(tmp_path / "keys", role=ANNOUNCEMENTS)
    return {"package": load_private_key(priv), "pub": str(pub), "announce": str(apriv), "announce_pub": str(apub)}


@pytest.fixture
def cloud(broker, tmp_path, fleet_keys):
    """A cloud trainer (its service, in this process) with car versions v-1 and v-2, v-1
    current, the operator's token in a file."""
    token_file = tmp_path / "op.token"
    token_file.write_text(TOKEN + "\n")
    store = DirStore(tmp_path / "store")
    conn = Connection(BrokerConfig(url=broker.url), "cloud-dash-test")
    conn.start()
    svc = CloudService(
        store,
        conn,
        RetrainConfig(),
        min_frames=10**9,
        trusted_keys=[fleet_keys["pub"]],
        announce_key=fleet_keys["announce"],
        operator_token_file=str(token_file),
        group="dash-test",
    )
    for i in (1, 2):
        svc.registry.add("car", make_package(tmp_path / f"v{i}.eppkg", f"v-{i}", fleet_keys["package"], seed=i))
    svc.registry.promote("car", "v-1")
    svc.start()
    yield svc
    svc.stop()
    conn.close()


def announcements(url: str) -> tuple[Connection, list[fleet.PushAnnouncement]]:
    got: list[fleet.PushAnnouncement] = []
    conn = Connection(BrokerConfig(url=url), "dash-test-watch")
    conn.subscribe(wire.model_topic("car"), lambda m: m.payload and got.append(fleet.decode_announcement(m.payload)), qos=1)
    conn.start()
    assert conn.wait_subscribed(5)
    return conn, got


def test_the_cloud_runs_a_signed_change_and_refuses_forged_stale_and_replayed_ones(cloud, broker, fleet_keys):
    ctl: ModelControl = cloud.control
    watch, anns = announcements(broker.url)
    try:
        forged = change(token="not-the-operators-token-000000")
        res = ctl.handle(fleet.encode_model_change(forged))
        assert not res.ok and "HMAC" in res.error and cloud.registry.current("car") == "v-1"
        stale = change(at=time.time() - fleet.MODEL_CHANGE_MAX_AGE_S - 5)
        res = ctl.handle(fleet.encode_model_change(stale))
        assert not res.ok and "stale" in res.error and cloud.registry.current("car") == "v-1"

        res = ctl.handle(fleet.encode_model_change(change()))
        assert res.ok and (res.previous, res.current, res.pushed) == ("v-1", "v-2", True)
        assert wait_for(lambda: anns and anns[-1].version == "v-2", 5)
        rb = change(action="rollback", version=None)
        rb.id = "req-rollback-1"
        rb.mac = fleet.change_mac(rb, TOKEN)
        first = ctl.handle(fleet.encode_model_change(rb))
        assert first.ok and first.current == "v-1" and cloud.registry.current("car") == "v-1"
        assert wait_for(lambda: anns[-1].version == "v-1" and anns[-1].rollback, 5)
        # the same request again (redelivered, or replayed within the window): the first
        # answer, and the registry does not walk back a second time
        cloud.registry.promote("car", "v-2")
        again = ctl.handle(fleet.encode_model_change(rb))
        assert again == first and cloud.registry.current("car") == "v-2"
        # nothing to roll back to is the registry's own refusal, said in the result
        cloud.registry.store.put("models/car/current.json", json.dumps({"version": "v-2", "history": []}).encode())
        none = change(action="rollback", version=None)
        none.id = "req-rollback-2"
        none.mac = fleet.change_mac(none, TOKEN)
        res = ctl.handle(fleet.encode_model_change(none))
        assert not res.ok and "no earlier car model" in res.error
        # the announcement key signed what went out, as `edgepilot models` would
        from edgepilot.delivery import verify_announcement

        verify_announcement(anns[-1], [fleet_keys["announce_pub"]])
    finally:
        watch.close()


def test_without_an_operator_token_the_cloud_runs_no_change(cloud):
    Path(cloud.control.token_file).unlink()
    res = cloud.control.handle(fleet.encode_model_change(change()))
    assert not res.ok and "no operator token" in res.error and cloud.registry.current("car") == "v-1"


# -- the dashboard over HTTP -------------------------------------------------------------------


def dash_profile(tmp_path: Path, broker_url: str, store: Path, **kw) -> Profile:
    token = tmp_path / "op.token"
    if not token.exists():
        token.write_text(TOKEN + "\n")
    prof = Profile()
    prof.broker = BrokerConfig(url=broker_url)
    prof.dashboard = DashboardConfig(port=0, token_file=str(token), change_timeout_s=10.0, **kw)
    prof.cloud.store = str(store)
    return prof


class Client:
    """A browser-like HTTP client: cookies, JSON, the page's header on POSTs."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | bytes]:
        h = {"Content-Type": "application/json"} if body is not None else {}
        if method == "POST":
            h["X-Edgepilot-Dashboard"] = "1"
        h.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with self.opener.open(req, timeout=30) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in ctype else raw


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):  # the test looks at the redirect itself
        return None


@pytest.fixture
def dashboard(cloud, broker, tmp_path):
    bg = Background(build(dash_profile(tmp_path, broker.url, cloud.store.root)))
    bg.start()
    assert wait_for(lambda: bg.dash.bus.conn.connected.is_set(), 5)
    assert bg.dash.bus.conn.wait_subscribed(5)
    yield bg
    bg.stop()


def test_reads_are_open_on_loopback_and_every_change_needs_the_token(dashboard, cloud):
    c = Client(dashboard.dash.url)
    status, state = c.call("GET", "/api/state")
    assert status == 200 and state["registry"]["store"]["car"]["current"] == "v-1"
    assert c.call("GET", "/")[0] == 200
    # a change without the token, with a wrong one, from another site, without the page's header
    ask = {"action": "promote", "target": "car", "version": "v-2"}
    status, out = c.call("POST", "/api/change", ask)
    assert status == 401 and "operator's token" in out["error"]
    status, out = c.call("POST", "/api/change", {**ask, "token": "wrong"})
    assert status == 403 and out["error"] == "wrong operator token"
    status, out = c.call("POST", "/api/change", {**ask, "token": TOKEN}, {"Origin": "http://evil.example"})
    assert status == 403 and "another site" in out["error"]
    status, out = c.call("POST", "/api/change", {**ask, "token": TOKEN}, {"X-Edgepilot-Dashboard": "0"})
    assert status == 403 and "header" in out["error"]
    # a web page elsewhere pointing its own name at 127.0.0.1 (DNS rebinding) reads nothing
    status, out = c.call("GET", "/api/state", headers={"Host": "evil.example"})
    assert status == 421
    assert cloud.registry.current("car") == "v-1"  # none of that changed anything
    # with the token: the cloud trainer runs it and says what happened
    status, out = c.call("POST", "/api/change", {**ask, "token": TOKEN})
    assert status == 200 and out["ok"] and (out["previous"], out["current"], out["pushed"]) == ("v-1", "v-2", True)
    assert cloud.registry.current("car") == "v-2"
    # a refusal of the cloud's own (nothing older to roll back to after a fresh start) is a 409
    cloud.registry.store.put("models/car/current.json", json.dumps({"version": "v-2", "history": []}).encode())
    status, out = c.call("POST", "/api/change", {"action": "rollback", "target": "car", "token": TOKEN})
    assert status == 409 and "no earlier car model" in out["error"]
    status, out = c.call("POST", "/api/change", {"action": "promote", "target": "car", "version": "../../etc", "token": TOKEN})
    assert status == 400 and "version" in out["error"]


def test_a_login_is_a_session_and_guessing_is_slowed_down(dashboard, cloud):
    c = Client(dashboard.dash.url)
    for _ in range(MAX_FAILURES):
        assert c.call("POST", "/login", {"token": "guess"})[0] == 403
    status, out = c.call("POST", "/login", {"token": TOKEN})  # even the right one, for a while
    assert status == 429 and "too many wrong tokens" in out["error"]
    dashboard.dash.access.failures.clear()  # the window passed
    assert c.call("POST", "/login", {"token": TOKEN})[0] == 200
    assert c.call("GET", "/api/access")[1]["logged_in"] is True
    status, out = c.call("POST", "/api/change", {"action": "promote", "target": "car", "version": "v-2"})
    assert status == 200 and out["current"] == "v-2"  # the session is the credential
    c.call("POST", "/logout", {})
    status, _ = c.call("POST", "/api/change", {"action": "rollback", "target": "car"})
    assert status == 401 and cloud.registry.current("car") == "v-2"


def test_off_loopback_every_page_needs_the_login(cloud, broker, tmp_path):
    bg = Background(build(dash_profile(tmp_path, broker.url, cloud.store.root, bind="0.0.0.0")))
    bg.start()
    try:
        port = bg.dash.url.rsplit(":", 1)[1].strip("/")
        c = Client(f"http://127.0.0.1:{port}")
        assert not bg.dash.access.open_reads
        status, _ = c.call("GET", "/")
        assert status == 303  # to the login page
        for path in ("/api/state", "/live", "/store/runs/run-1/compare.png"):
            status, out = c.call("GET", path)
            assert status == 401 and "log in" in out["error"], path
        assert c.call("GET", "/login")[0] == 200 and c.call("GET", "/static/app.js")[0] == 200
        assert c.call("POST", "/login", {"token": TOKEN})[0] == 200
        status, state = c.call("GET", "/api/state")
        assert status == 200 and "cars" in state
    finally:
        bg.stop()


def test_with_a_certificate_it_serves_https_and_its_login_cookie_is_secure(cloud, broker, tmp_path):
    import ssl
    import subprocess

    from edgepilot.config import REPO_ROOT

    tls = tmp_path / "tls"
    subprocess.run([REPO_ROOT / "launch" / "make-test-ca", tls], check=True, capture_output=True)
    prof = dash_profile(tmp_path, broker.url, cloud.store.root, tls_cert=str(tls / "server.crt"), tls_key=str(tls / "server.key"))
    bg = Background(build(prof))
    bg.start()
    try:
        assert bg.dash.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        req = urllib.request.Request(
            bg.dash.url + "login",
            data=json.dumps({"token": TOKEN}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "X-Edgepilot-Dashboard": "1"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on the TLS port: nothing
            urllib.request.urlopen(bg.dash.url.replace("https", "http") + "api/state", timeout=10)
    finally:
        bg.stop()


def test_the_view_follows_the_bus_and_sends_only_what_changed(dashboard, broker):
    view = dashboard.dash.view
    conn = Connection(BrokerConfig(url=broker.url), "dash-test-car")
    conn.start()
    try:
        _, seq = view.snapshot()
        t = fleet.CarTelemetry("car-v", "driving", model="v-1", mode="local", loop_hz=20.0, offload_rate=float("nan"), at=time.time())
        conn.publish(fleet.car_telemetry_topic("car-v"), fleet.encode_car_telemetry(t), qos=1, retain=True)
        assert wait_for(lambda: (view.get("cars", "car-v") or {}).get("telemetry"), 5)
        delta, seq2 = view.since(seq)
        assert set(delta["cars"]) == {"car-v"} and delta["cars"]["car-v"]["telemetry"]["mode"] == "local"
        assert delta["cars"]["car-v"]["telemetry"]["offload_rate"] is None  # NaN: the page parses strict JSON
        assert view.since(seq2)[0] is None or "cars" not in view.since(seq2)[0]
        # a message that does not decode is counted and shown, not dropped silently
        conn.publish(fleet.car_telemetry_topic("car-v"), b'{"v":1,"car":"car-v","state":"flying"}', qos=1)
        assert wait_for(lambda: (view.get("bus", "bad") or {}).get("count") == 1, 5)
        assert "state" in view.get("bus", "bad")["error"]
        # a cleared retained message removes the car from the page
        conn.publish(fleet.car_telemetry_topic("car-v"), b"", qos=1, retain=True)
        assert wait_for(lambda: view.get("cars", "car-v") is None, 5)
        assert view.since(seq2)[0]["cars"] == {"car-v": None}
    finally:
        conn.close()


def test_the_live_feed_sends_the_next_update_only_once_the_page_drew_the_last(dashboard, broker):
    """A page that cannot keep up must get fresh state, not a backlog: no delta goes out
    before the page acknowledged the one before; and no other site may open the feed."""
    import asyncio

    import aiohttp

    url = dashboard.dash.url.replace("http", "ws") + "live"
    car = Connection(BrokerConfig(url=broker.url), "dash-test-live-car")
    car.start()

    def publish(mode: str) -> None:
        t = fleet.CarTelemetry("car-live", "driving", mode=mode, at=time.time())
        car.publish(fleet.car_telemetry_topic("car-live"), fleet.encode_car_telemetry(t), qos=1, retain=True)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url, origin="http://evil.example")
            assert refused.value.status == 403
            async with http.ws_connect(url) as ws:
                snap = await ws.receive_json(timeout=10)
                assert snap["type"] == "snapshot" and "cars" in snap
                publish("local")
                with pytest.raises(asyncio.TimeoutError):  # not acknowledged: nothing more comes
                    await ws.receive_json(timeout=1.5)
                await ws.send_str('{"ack":1}')
                for _ in range(20):  # the sampler's chart points may come first
                    delta = await ws.receive_json(timeout=10)
                    assert delta["type"] == "delta"
                    if "car-live" in delta.get("cars", {}):
                        break
                    await ws.send_str('{"ack":1}')
                assert delta["cars"]["car-live"]["telemetry"]["mode"] == "local"

    try:
        asyncio.run(main())
    finally:
        car.publish(fleet.car_telemetry_topic("car-live"), b"", qos=1, retain=True)
        car.close()


def test_the_view_samples_the_fleet_for_the_charts():
    now = [1000.0]
    view = FleetView(clock=lambda: now[0])
    for i, (p50, p99, off) in enumerate([(10.0, 30.0, 0.2), (14.0, 50.0, 0.4)]):
        t = fleet.CarTelemetry(f"c{i}", "driving", loop_hz=20.0, offload_rate=off, edge_rtt_ms={"p50": p50, "p99": p99}, at=now[0])
        view.car_telemetry(f"c{i}", t)
    view.car_telemetry("gone", fleet.CarTelemetry("gone", "offline"))
    view.edge_health("e", wire.EdgeHealth("e", answered=100, latency_p50_ms=3.0))
    p = view.sample()
    assert (p["online"], p["driving"], p["rtt_p50"], p["rtt_p99"]) == (2, 2, 12.0, 50.0)
    assert p["offload"] == pytest.approx(0.3) and p["edges"]["e"]["answered_s"] is None
    now[0] += 2.0
    view.edge_health("e", wire.EdgeHealth("e", answered=160, latency_p50_ms=3.0))
    assert view.sample()["edges"]["e"]["answered_s"] == pytest.approx(30.0)
    now[0] += 10.0  # nobody spoke for 10 s: nobody is online
    assert view.sample()["online"] == 0


# -- the store's side ---------------------------------------------------------------------------


def test_a_run_card_says_why_from_the_gates_own_verdict(tmp_path):
    cfg = RetrainConfig(margin_mae=0.01, latency_budget_ms=5.0)

    def ev(v, mae, aut):
        return {"version": v, "steering_mae": mae, "latency_ms": {"p50": 1.0}, "closed_loop": {"autonomy": aut, "mean_abs_cte_m": 0.1}}

    worse, cur, better = ev("c1", 0.2, 0.9), ev("cur", 0.1, 1.0), ev("c2", 0.09, 1.0)
    res = {
        "run": "run-1",
        "train": ["logs/a/1"],
        "heldout": ["logs/a/2"],
        "targets": {"car": {"candidate": worse, "current": cur, "gate": gate(worse, cur, cfg)}},
    }
    card = run_card(res)
    g = card["targets"]["car"]
    assert not g["passed"] and card["promoted"] == []
    assert g["why"] == "kept the current model: heldout_steering_mae 0.2 > limit 0.11; sim_autonomy 0.9 < limit 1"
    assert g["candidate"]["autonomy"] == 0.9 and g["current"]["steering_mae"] == 0.1
    res["targets"]["car"] = {"candidate": better, "current": cur, "gate": gate(better, cur, cfg)}
    assert run_card(res)["targets"]["car"]["why"] == "promoted: all 4 checks passed"
    # an edge candidate that steers the car off (retrain.judge_pair's checks and drives)
    alone, both = {"autonomy": 1.0, "mean_abs_cte_m": 0.02}, {"autonomy": 0.66, "mean_abs_cte_m": 0.2}
    checks = [
        {"check": "sim_autonomy_with_car", "passed": False, "value": 0.66, "limit": 1.0},
        {"check": "sim_mean_abs_cte_m_with_car", "passed": False, "value": 0.2, "limit": 0.05},
    ]
    edge = {"version": "e1", "steering_mae": 0.05, "latency_ms": {"p50": 1.0}}
    res["targets"]["edge"] = {
        "candidate": edge,
        "current": None,
        "gate": {"passed": False, "checks": checks, "against": None},
        "with_car": {
            "car": "c2",
            "offloaded": {"frames": 40, "of": 400, "car_mae": 0.03, "edge_mae": 0.09},
            "alone": alone,
            "with_edge": both,
        },
    }
    e = run_card(res)["targets"]["edge"]
    assert e["why"] == (
        "kept the current model: sim_autonomy_with_car 0.66 < limit 1; sim_mean_abs_cte_m_with_car 0.2 > limit 0.05"
    )
    assert e["with_car"]["with_edge"]["autonomy"] == 0.66 and e["with_car"]["car"] == "c2"
    assert e["with_car"]["offloaded"]["edge_mae"] == 0.09
    md = markdown({**res, "targets": {"edge": res["targets"]["edge"]}})
    assert "- with edge: autonomy 0.66" in md
    assert "would offload: 40 of 400, MAE there: edge 0.09, car's own 0.03" in md
    # without evaluation tracks there are no drives, only the open-loop frames
    res["targets"]["edge"]["with_car"] = {"car": "c2", "offloaded": {"frames": 3, "of": 400}}
    e = run_card(res)["targets"]["edge"]
    assert "with_edge" not in e["with_car"] and e["with_car"]["offloaded"]["frames"] == 3
    assert "would offload: 3 of 400\n" in markdown({**res, "targets": {"edge": res["targets"]["edge"]}}) + "\n"
    store = DirStore(tmp_path / "s")
    store.put("runs/run-1/summary.json", json.dumps(res).encode())
    store.put("runs/run-1/curve-car.png", b"\x89PNG")
    sv = StoreView(store)
    assert sv.runs_state()[0]["plots"] == ["curve-car.png"] and sv.plot("run-1", "curve-car.png") == b"\x89PNG"
    for run, name in (("..", "x.png"), ("run-1", "summary.json"), ("run-1", "../../models/car/current.json")):
        with pytest.raises(EdgepilotError, match="no such plot"):
            plot_key(run, name)


def test_the_vendored_chart_library_is_the_one_its_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\S+\.(?:js|css)) \| ([0-9a-f]{64}) \|$", readme, re.M))
    assert set(rows) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, sha in rows.items():
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == sha, name
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    page = (STATIC / "index.html").read_text()
    assert "/static/vendor/uPlot.iife.min.js" in page and "://" not in page.replace('content="width', "")


def test_registry_view_lists_versions_and_the_rollback_stack(tmp_path, fleet_keys):
    reg = Registry(DirStore(tmp_path / "s"), trusted_keys=[fleet_keys["pub"]])
    for i in (1, 2, 3):
        reg.add("car", make_package(tmp_path / f"p{i}.eppkg", f"r-{i}", fleet_keys["package"], seed=i))
        reg.promote("car", f"r-{i}")
    reg.rollback("car")
    st = StoreView(reg.store).registry_state()["car"]
    assert st["current"] == "r-2" and st["history"] == ["r-1"] and st["rolled_back"] == ["r-3"]
    assert [v["version"] for v in st["versions"]] == ["r-1", "r-2", "r-3"] and st["versions"][0]["size"] > 0


def test_on_the_secured_broker_the_dashboards_login_reads_the_fleet_and_asks_but_never_announces(tmp_path, fleet_keys):
    """docs/deploy.md's set-up: the dashboard with its own login (role dashboard), the cloud
    trainer with the cloud's, a car with its own, TLS and the ACL from the table of topics."""
    from tests.system.test_secured_broker import creds, make_secured

    auth, b = make_secured(tmp_path, "--car", "car-1", "--cloud", "cloud", "--dashboard", "dash")
    token_file = tmp_path / "op.token"
    token_file.write_text(TOKEN + "\n")
    store = DirStore(tmp_path / "store")
    cloud_conn = Connection(creds(b, auth, "cloud"), "cloud")
    cloud_conn.start()
    svc = CloudService(store, cloud_conn, RetrainConfig(), min_frames=10**9, trusted_keys=[fleet_keys["pub"]],
                       announce_key=fleet_keys["announce"], operator_token_file=str(token_file))  # fmt: skip
    for i in (1, 2):
        svc.registry.add("car", make_package(tmp_path / f"v{i}.eppkg", f"v-{i}", fleet_keys["package"], seed=i))
    svc.registry.promote("car", "v-1")
    svc.start()
    prof = dash_profile(tmp_path, b.url, store.root, broker_username="dash", broker_password_file=str(auth / "dash.pass"))
    prof.broker = creds(b, auth, "cloud")  # the profile's [broker] is the cloud's: the dashboard must not use it
    bg = Background(build(prof))
    bg.start()
    car = Connection(creds(b, auth, "car-1"), "car-1")
    car.start()
    anns: list[fleet.PushAnnouncement] = []
    car.subscribe(wire.model_topic("car"), lambda m: m.payload and anns.append(fleet.decode_announcement(m.payload)), qos=1)
    try:
        assert car.wait_subscribed(5)
        dash_conn = bg.dash.bus.conn
        assert wait_for(dash_conn.connected.is_set, 10) and dash_conn.client_id.startswith("dash")
        assert dash_conn.wait_subscribed(5) and all(codes[0] < 0x80 for codes in dash_conn.suback.values())
        t = fleet.CarTelemetry("car-1", "driving", model="v-1", at=time.time())
        car.publish(fleet.car_telemetry_topic("car-1"), fleet.encode_car_telemetry(t), qos=1, retain=True)
        assert wait_for(lambda: bg.dash.view.get("cars", "car-1"), 10)  # it reads the fleet
        # its login cannot announce a model, not even with a valid-looking announcement
        forged = fleet.PushAnnouncement("car", "evil", "0" * 64, 1, 1, ["0" * 64], "A" * 86 + "==", counter=2**40, expires=2**31)
        dash_conn.publish(wire.model_topic("car"), fleet.encode_announcement(forged), qos=1)
        time.sleep(0.5)  # checking that nothing arrives
        assert all(a.version != "evil" for a in anns)
        # what it may do: ask, with the operator's token; the cloud announces
        status, out = Client(bg.dash.url).call("POST", "/api/change", {"action": "promote", "target": "car", "version": "v-2", "token": TOKEN})
        assert status == 200 and out["current"] == "v-2" and out["pushed"]
        assert wait_for(lambda: anns and anns[-1].version == "v-2", 10)
    finally:
        car.publish(fleet.car_telemetry_topic("car-1"), b"", qos=1, retain=True)
        car.close()
        bg.stop()
        svc.stop()
        cloud_conn.close()
        b.stop()
