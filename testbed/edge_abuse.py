"""One car floods the edge node; does another car keep its round trip?

In one run, side by side (alternating windows, so the machine's load drifts equally over
both arms): a legitimate car (the real ``OffloadClient``, frame mode, one 160x120 frame at
a time at ``rate_hz``) measures its edge round trips while nobody else sends (baseline),
then while a flooding car sends at the same time (attacked), ``rounds`` times.

The flooder is its own process (its CPU is not the edge's) with its own car login and
topic, as an attacker holding one car's credentials would be. Per second it sends
``bomb_rate`` frames of 4000 x 4000 pixels (small as JPEGs, 48 MB each once decoded) and
``cap_rate`` frames of ``cap_w`` x ``cap_h`` (by default exactly the largest frame an edge
node accepts), in bursts, every request with a deadline and a budget a day away. It reads
its replies and counts them by kind.

A miss (no answer in the car's deadline) counts as an infinite round trip, so a p50 that
is not finite means more than half the frames were never answered.

``python -m testbed.edge_abuse --broker mqtt://127.0.0.1:1883 --json`` (starts its own
``edgepilot edge`` process; a broker must be running). With ``--rate-limit`` it starts its
own broker with the broker's per-login rate limit (launch/mosquitto-plugin) and floods from
a limited car and from one the limit exempts, in turn: the same flood with and without the
limit, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot.broker import RATE_LIMITS, ratelimit_config, start_broker
from edgepilot.config import BrokerConfig
from edgepilot.imaging import encode_jpeg
from edgepilot.mqtt import Connection, parse_url
from edgepilot.offload.client import CircuitBreaker, OffloadClient
from edgepilot.schema import wire
from testbed.loadgen import (
    _read_one,
    _request_parts,
    _varint_at,
    bench_frame,
    connect_packet,
    subscribe_packet,
)
from testbed.procs import ROOT, spawn_edge

BOMB_SIDE = 4000
DAY_S = 86400.0


def bomb_frame() -> bytes:
    """A 4000 x 4000 JPEG: ~250 KB on the wire, 48 MB once decoded."""
    img = np.zeros((BOMB_SIDE, BOMB_SIDE, 3), np.uint8)
    return encode_jpeg(img, 5)


def noise_frame(w: int, h: int, seed: int = 1) -> bytes:
    """A ``w`` x ``h`` JPEG of noise: the costliest frame of its size to decode."""
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return encode_jpeg(img, 90)


@dataclass
class FloodSpec:
    car: str = "car-flood"
    bomb_rate: float = 30.0  # 4000 x 4000 frames per second (150 in 5 s)
    cap_rate: float = 150.0  # largest accepted frames per second (a camera sends 20-30)
    cap_w: int = 320
    cap_h: int = 240
    burst: int = 20  # requests sent back to back


def classify(rep: wire.InferReply) -> str:
    """A reply's kind, for the flooder's tally: ok, throttled, too-big or other-error."""
    if rep.status == "ok":
        return "ok"
    if rep.status == "throttled":
        return "throttled"
    why = rep.error or ""
    if "pixels" in why or "bytes" in why:
        return "too-big"
    return "other-error"


class Flooder:
    """The attacking car's side: one plain MQTT v5 connection spoken over a socket (its
    requests prebuilt, so that the attacker's own CPU, on this machine, stays small next
    to what it makes the edge do), and the tally of its replies, read on a thread."""

    def __init__(self, cfg: BrokerConfig, spec: FloodSpec) -> None:
        self.spec = spec
        self.replies: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        addr = parse_url(cfg.url)
        self.sock = socket.create_connection((addr.host, addr.port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(spec.car))
        if _read_one(self.sock)[0] != 0x20:
            raise RuntimeError("the broker refused the flooder")
        self.sock.sendall(subscribe_packet(wire.reply_topic(spec.car)))
        if _read_one(self.sock)[0] != 0x90:
            raise RuntimeError("the broker refused the flooder's subscription")
        self.sock.settimeout(None)
        now = time.time()
        self._packets = {
            kind: _request_parts(
                spec.car,
                wire.encode_request(
                    wire.InferRequest(
                        spec.car, 0, body, sent=now, deadline=now + DAY_S, budget_ms=DAY_S * 1e3
                    )
                ),
            )
            for kind, body in (("bomb", bomb_frame()), ("cap", noise_frame(spec.cap_w, spec.cap_h)))
        }
        self._n = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = bytearray()
        while data := self._recv():
            buf += data
            while (got := _publish_payload(buf)) is not None:
                payload, used = got
                del buf[:used]
                if payload is None:
                    continue
                try:
                    kind = classify(wire.decode_reply(payload))
                except wire.WireError:
                    kind = "undecodable"
                with self._lock:
                    self.replies[kind] += 1

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 16)
        except OSError:
            return b""

    def _send(self, kind: str) -> None:
        self._n += 1
        head, tail = self._packets[kind]
        self.sock.sendall(head + self._n.to_bytes(8, "big") + tail)
        self.sent[kind] += 1

    def flood(self, seconds: float) -> None:
        """Send at the spec's rates, ``burst`` requests at a time, for ``seconds``."""
        t0 = time.monotonic()
        due = {"bomb": 0.0, "cap": 0.0}
        rates = {"bomb": self.spec.bomb_rate, "cap": self.spec.cap_rate}
        while (now := time.monotonic()) < t0 + seconds:
            for kind, rate in rates.items():
                owed = rate * (now - t0) - due[kind]
                for _ in range(int(min(owed, self.spec.burst))):
                    self._send(kind)
                    due[kind] += 1
            time.sleep(self.spec.burst / max(1.0, sum(rates.values())))

    def tally(self) -> dict[str, Any]:
        with self._lock:
            return {"sent": dict(self.sent), "replies": dict(self.replies)}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def _publish_payload(buf: bytearray) -> tuple[bytes | None, int] | None:
    """The first whole packet in ``buf``: (its payload if a PUBLISH, else None; its
    length). None when no whole packet is there yet."""
    got = _varint_at(buf, 1) if len(buf) >= 2 else None
    if got is None:
        return None
    rem, i = got
    end = i + rem
    if end > len(buf):
        return None
    if buf[0] >> 4 != 3:
        return None, end
    topic_end = i + 2 + int.from_bytes(buf[i : i + 2], "big")
    plen, j = _varint_at(buf, topic_end) or (0, end)
    return bytes(buf[j + plen : end]), end


def flood_process(url: str, spec: FloodSpec) -> None:
    """The flooder as a process: ``flood S`` on stdin floods S seconds and prints the
    tally as one JSON line; ``quit`` ends it."""
    f = Flooder(BrokerConfig(url=url), spec)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        f.flood(float(cmd[1]))
        time.sleep(0.3)  # replies still on their way
        print(json.dumps(f.tally()), flush=True)
    f.close()


def spawn_flooder(url: str, spec: FloodSpec) -> subprocess.Popen:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in asdict(spec).items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.edge_abuse", "flood", "--broker", url, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the flooder did not start")
    return proc


@dataclass
class Victim:
    """The legitimate car: one frame at a time at ``rate_hz``, each waited for until its
    deadline; round trips in ms (a miss: inf)."""

    cfg: BrokerConfig
    car: str = "car-legit"
    rate_hz: float = 20.0
    deadline_s: float = 2.0
    frame: bytes = field(default_factory=bench_frame)

    def __post_init__(self) -> None:
        # a breaker that never opens: every frame is sent, so misses are measured, not skipped
        self.client = OffloadClient(
            self.cfg,
            self.car,
            deadline_s=self.deadline_s,
            mode="frame",
            breaker=CircuitBreaker(trip_after=1 << 30),
            plan_from_health=False,
        )
        self.client.start()
        self._i = 0

    def drive(self, seconds: float, parts: list[tuple[float, float]] | None = None) -> list[float]:
        """Round trips for ``seconds``; ``parts`` collects each answer's (wait in the edge's
        queue, batch compute) in ms: the rest of a round trip is transport."""
        out: list[float] = []
        t_end = time.monotonic() + seconds
        while (t0 := time.monotonic()) < t_end:
            self._i += 1
            sent = self.client.submit(self._i, self.frame)
            ans = self.client.poll(self._i, t0 + self.deadline_s) if sent else None
            out.append(ans.rtt_ms if ans is not None else math.inf)
            if ans is not None and parts is not None:
                parts.append((ans.queue_ms or 0.0, ans.compute_ms or 0.0))
            time.sleep(max(0.0, t0 + 1.0 / self.rate_hz - time.monotonic()))
        return out


def p50(xs: list[float]) -> float:
    """The lower median: an infinite one (most frames missed) stays infinite."""
    return sorted(xs)[(len(xs) - 1) // 2] if xs else math.nan


def p90(xs: list[float]) -> float:
    """The round trip 90% of frames beat (a miss: inf)."""
    return sorted(xs)[int(0.9 * (len(xs) - 1))] if xs else math.nan


def _figure(x: Any) -> Any:
    """Rounded; an infinite figure as the string "inf" (JSON has no infinity)."""
    if not isinstance(x, float):
        return x
    return round(x, 3) if math.isfinite(x) else str(x)


def _jsonable(res: dict[str, Any]) -> dict[str, Any]:
    return {k: _figure(v) for k, v in res.items()}


def side_by_side(
    url: str,
    spec: FloodSpec,
    rounds: int = 6,
    window_s: float = 1.75,
    lead_s: float = 0.3,
    drain_s: float = 1.2,
    unlimited: FloodSpec | None = None,
) -> dict[str, Any]:
    """Alternate a baseline window and an attacked window ``rounds`` times against the edge
    node(s) serving ``url``; the victim's round trips in each arm and the flooder's tally.

    Each attacked window starts ``lead_s`` into the flood (its steady state); after it,
    ``drain_s`` unmeasured (what the flood left queued, and the flooder's penalty, which
    outlasts its flood by a second, run out) before the next window.

    ``unlimited``: the same flood from a second car, one the broker's rate limit exempts
    (``plugin_opt_exempt_users``), in a third window per round (its keys ``unlimited_*``):
    the flood with and without the broker's limit side by side. The two attacked windows
    swap places every round, so that neither always follows the other's drain."""
    specs = {"attacked": spec, **({"unlimited": unlimited} if unlimited is not None else {})}
    rtts: dict[str, list[float]] = {"baseline": [], **{arm: [] for arm in specs}}
    parts: dict[str, list[tuple[float, float]]] = {arm: [] for arm in rtts}
    tally: dict[str, Any] = {}
    floods: dict[str, subprocess.Popen] = {}
    victim = Victim(BrokerConfig(url=url))
    try:
        for arm, flood in specs.items():
            floods[arm] = spawn_flooder(url, flood)
        victim.drive(0.5)  # warm-up: connections, the edge's first batches
        for r in range(rounds):
            rtts["baseline"] += victim.drive(window_s, parts["baseline"])
            for arm in list(floods)[:: 1 if r % 2 == 0 else -1]:
                proc = floods[arm]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"flood {lead_s + window_s}\n")
                proc.stdin.flush()
                time.sleep(lead_s)
                rtts[arm] += victim.drive(window_s, parts[arm])
                t_drained = time.monotonic() + drain_s
                tally[arm] = json.loads(proc.stdout.readline())
                victim.drive(t_drained - time.monotonic())
    finally:
        for proc in floods.values():
            with_timeout_quit(proc)
        victim.client.close()
    b = p50(rtts["baseline"])
    res: dict[str, Any] = {"baseline_p50_ms": b, "baseline_p90_ms": p90(rtts["baseline"])}
    res["baseline_n"] = len(rtts["baseline"])
    for arm in floods:
        a = p50(rtts[arm])
        res |= {
            f"{arm}_p50_ms": a,
            f"{arm}_p90_ms": p90(rtts[arm]),
            "ratio" if arm == "attacked" else f"{arm}_ratio": a / b,
            f"{arm}_n": len(rtts[arm]),
            f"{arm}_missed": sum(1 for x in rtts[arm] if not math.isfinite(x)),
        }
    # where the victim's time went, p50 of its answers: wait in the edge's queue, compute
    for arm, got in parts.items():
        for k, what in enumerate(("queue", "compute")):
            res[f"{arm}_{what}_p50_ms"] = p50([pt[k] for pt in got])
    res["flooder"] = tally.get("attacked", {})
    if unlimited is not None:
        res["unlimited_flooder"] = tally.get("unlimited", {})
    return res


def with_timeout_quit(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.write("quit\n")
            proc.stdin.close()
        proc.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(5)


def edge_health(url: str, node: str, wait_s: float = 3.0) -> wire.EdgeHealth | None:
    """The node's retained health, as the fleet sees it."""
    got: list[wire.EdgeHealth] = []
    conn = Connection(BrokerConfig(url=url), f"abuse-health-{time.time_ns() % 10**8}")
    conn.subscribe(wire.health_topic(node), lambda m: got.append(wire.decode_health(m.payload)))
    conn.start()
    try:
        t_end = time.monotonic() + wait_s
        while not got and time.monotonic() < t_end:
            time.sleep(0.05)
    finally:
        conn.close()
    return got[-1] if got else None


def broker_drops(log: Path, key: str) -> int:
    """How many of ``key``'s messages the broker's rate limit dropped: the sum of its log
    lines (one a second at most per client, each counting the drops since the last)."""
    pat = re.compile(rf"edgepilot_ratelimit: '{re.escape(key)}' over its limit .*: dropped (\d+) messages")
    return sum(int(m.group(1)) for m in pat.finditer(log.read_text())) if log.exists() else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.edge_abuse", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "flood"))
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    for k, v in asdict(FloodSpec()).items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--window", type=float, default=1.75, help="seconds per measured window")
    p.add_argument(
        "--rate-limit",
        action="store_true",
        help="start a broker of its own (launch/mosquitto.conf, loopback) with the per-login rate limit of "
        "launch/mosquitto-secure.conf, and flood from two cars in turn: CAR, limited (the 'attacked' arm), and "
        "CAR-unlimited, which the limit exempts (the 'unlimited' arm); --broker is ignored",
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    spec = FloodSpec(**{k: getattr(a, k) for k in asdict(FloodSpec())})
    if a.mode == "flood":
        flood_process(a.broker, spec)
        return 0
    node = f"edge-abuse-{time.time_ns() % 10**6}"
    with contextlib.ExitStack() as stack:
        url, unlimited, broker = a.broker, None, None
        if a.rate_limit:
            unlimited = replace(spec, car=f"{spec.car}-unlimited")
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-abuse-")))
            broker = start_broker(state, extra=ratelimit_config(exempt_users=(node, unlimited.car)))
            stack.callback(broker.stop)
            url = broker.url
        edge = spawn_edge(url, node)
        try:
            res = side_by_side(url, spec, a.rounds, a.window, unlimited=unlimited)
            h = edge_health(url, node)
            res["edge_health"] = asdict(h) if h is not None else None
        finally:
            edge.terminate()
            edge.wait(10)
        if broker is not None:
            time.sleep(1.2)  # the plugin logs a client's last drops within a second
            res["broker_limits"] = RATE_LIMITS
            res["broker_dropped"] = {c: broker_drops(broker.state / "mosquitto.log", c) for c in (spec.car, node)}
    print(json.dumps(_jsonable(res), indent=None if a.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
