"""``edgepilot bench offload``: offload round trips through a running edge node, with the floor.

In one run, side by side on the same payload (a 160x120 camera-like JPEG):

1. the floor of the link: a raw TCP echo of the same bytes on loopback (TCP_NODELAY), and
   a bare MQTT v5 request/response of the same size through the broker (no inference);
2. the floor of the edge: its own decode + inference at batch 1 (sequential requests, one
   in flight, read off the replies' ``compute_ms``);
3. the fleet: ``--vehicles`` car clients (the real ``OffloadClient``), each offloading
   every frame at ``--rate`` Hz with a one-frame deadline, for ``--duration`` seconds.

``rtt_ms / floor_ms`` (floor = TCP echo + edge compute) and ``transport_overhead_ms``
(round trip minus the edge's compute, per answer) are the ratios that matter; absolute
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import heapq
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import paho.mqtt.client as paho

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig, load_profile
from edgepilot.mqtt import Connection, broker_config
from edgepilot.offload.client import CircuitBreaker, EdgeAnswer, OffloadClient
from edgepilot.progress import bar
from edgepilot.schema import wire
from edgepilot.stats import pct
from testbed.loadgen import bench_frame

P = ParamSpec("P")
R = TypeVar("R")


def tcp_echo_floor(size: int, rounds: int = 500) -> list[float]:
    """Round trips (ms) of ``size`` bytes through a loopback TCP echo, both ends NODELAY."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cli = socket.create_connection(("127.0.0.1", port))
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * size
    out = []
    for i in range(rounds + 20):
        t0 = time.perf_counter()
        cli.sendall(payload)
        got = 0
        while got < size:
            got += len(cli.recv(1 << 16))
        if i >= 20:  # warm-up rounds are not measured
            out.append((time.perf_counter() - t0) * 1e3)
    cli.close()
    srv.close()
    t.join(1)
    return out


def find_edges(cfg: BrokerConfig, wait_s: float = 2.0) -> list[wire.EdgeHealth]:
    """The edge nodes that say (retained health) they are up."""
    seen: dict[str, wire.EdgeHealth] = {}

    def on(msg: paho.MQTTMessage) -> None:
        try:
            h = wire.decode_health(msg.payload)
        except wire.WireError:
            return
        if h.status == "up":
            seen[h.node] = h
        else:
            seen.pop(h.node, None)

    conn = Connection(cfg, f"bench-probe-{int(time.time() * 1e3) % 100000}")
    conn.subscribe(wire.HEALTH_FILTER, on)
    conn.start()
    time.sleep(wait_s)
    conn.close()
    return list(seen.values())


def sequential(cfg: BrokerConfig, payload: bytes, n: int) -> list[EdgeAnswer]:
    car = OffloadClient(cfg, "bench-seq", deadline_s=1.0, breaker=CircuitBreaker(trip_after=10**9))
    car.start()
    out = []
    try:
        for i in range(n + 10):
            car.submit(i, payload)
            ans = car.poll(i, time.monotonic() + 1.0)
            if ans is not None and i >= 10:
                out.append(ans)
    finally:
        car.close()
    return out


def fleet(cfg: BrokerConfig, payload: bytes, vehicles: int, rate: float, duration: float) -> dict[str, Any]:
    period = 1.0 / rate
    answers: list[tuple[EdgeAnswer, bool]] = []
    lock = threading.Lock()

    def on_answer(a: EdgeAnswer, in_time: bool) -> None:
        with lock:
            answers.append((a, in_time))

    cars = [
        OffloadClient(
            cfg,
            f"bench-car-{i}",
            deadline_s=period,
            breaker=CircuitBreaker(trip_after=10**9),
            on_answer=on_answer,
        )
        for i in range(vehicles)
    ]
    for c in cars:
        c.start()
    t0 = time.monotonic() + 0.2
    # cars are not synchronised: car i's frames are offset by i/vehicles of a period
    events = [(t0 + i * period / vehicles, i, 0) for i in range(vehicles)]
    heapq.heapify(events)
    n_frames = round(duration * rate)  # per car
    behind = 0
    with bar(total=int(duration * rate * vehicles), desc="offload", unit="frame") as pb:
        while events:
            t, i, k = heapq.heappop(events)
            if k >= n_frames:
                continue
            now = time.monotonic()
            if t > now:
                time.sleep(t - now)
            elif now - t > period:
                behind += 1
            cars[i].submit(k, payload)
            pb.update()
            heapq.heappush(events, (t0 + (i / vehicles + k + 1) * period, i, k + 1))
    time.sleep(max(0.3, 3 * period))
    for c in cars:
        c.poll(-1, 0.0)  # sweep: whatever is still unanswered is a miss
    stats = [c.stats for c in cars]
    for c in cars:
        c.close()
    sent = sum(s["sent"] for s in stats)
    in_time = [a for a, ok in answers if ok]
    return {
        "sent": sent,
        "answered": sum(s["answered"] for s in stats),
        "late": sum(s["late"] for s in stats),
        "missed": sum(s["missed"] for s in stats),
        "deadline_miss_rate": round(sum(s["missed"] for s in stats) / sent, 5) if sent else 1.0,
        "rtt_ms": pct([a.rtt_ms for a, _ in answers], 50, 90, 99),
        "transport_overhead_ms": pct([a.rtt_ms - (a.compute_ms or 0) for a in in_time], 50, 99),
        "edge_queue_ms": pct([a.queue_ms or 0 for a in in_time], 50, 99),
        "batch_mean": round(float(np.mean([a.batch or 1 for a in in_time])), 3) if in_time else None,
        "scheduler_behind": behind,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    prof = load_profile(args.profile, default="sim")
    cfg = broker_config(prof.broker, args.broker)
    if getattr(args, "saturate", False):
        from testbed.scaling import cli as saturate_cli

        return saturate_cli(args, cfg.url)
    if args.vehicles < 1 or args.rate <= 0 or args.duration <= 0:
        raise EdgepilotError("--vehicles, --rate and --duration must be positive")
    edges = find_edges(cfg)
    if not edges:
        raise EdgepilotError(
            f"no edge node is up on {cfg.url}: start one, e.g. `edgepilot edge --model builtin:pilotnet`"
        )
    payload = bench_frame()
    size = len(wire.encode_request(wire.InferRequest("bench-car-0", 0, payload, sent=0.0, budget_ms=33.3)))
    tcp = tcp_echo_floor(size)
    mqtt = mqtt_floor(cfg, size)
    seq = sequential(cfg, payload, 200)
    if not seq:
        raise EdgepilotError("the edge node answered none of the sequential requests")
    compute = [a.compute_ms or 0.0 for a in seq if a.batch == 1]
    load = fleet(cfg, payload, args.vehicles, args.rate, args.duration)
    tcp_p = pct(tcp, 50, 99)
    comp_p = pct(compute, 50, 99)
    floor = tcp_p["p50"] + comp_p["p50"]
    return {
        "vehicles": args.vehicles,
        "rate_hz": args.rate,
        "duration_s": args.duration,
        "deadline_ms": round(1e3 / args.rate, 3),
        "payload_bytes": size,
        "edge_nodes": sorted(h.node for h in edges),
        "edge_models": sorted({h.model or "?" for h in edges}),
        "tcp_floor_ms": tcp_p,
        "mqtt_floor_ms": pct(mqtt, 50, 99),  # bare request/response through the broker
        "edge_compute_ms": comp_p,
        "floor_ms": round(floor, 4),
        "rtt_unloaded_ms": pct([a.rtt_ms for a in seq], 50, 99),
        **load,
        "rtt_over_floor": round(load["rtt_ms"]["p50"] / floor, 3) if load["rtt_ms"] else None,
    }


def mqtt_floor(cfg: BrokerConfig, size: int, rounds: int = 300) -> list[float]:
    """Round trips (ms) of a bare MQTT v5 request/response through the broker, shaped like
    the edge's path (the responder's network thread queues the request, a worker thread
    publishes a small answer) but with no decoding, inference or JSON: the MQTT floor."""
    import queue

    tag = f"{int(time.time() * 1e3) % 100000}"
    work: queue.Queue = queue.Queue()
    resp = Connection(cfg, f"floor-resp-{tag}")
    resp.subscribe(f"edgepilot/bench/floor-{tag}/req", work.put)
    got = threading.Event()
    req = Connection(cfg, f"floor-req-{tag}")
    req.subscribe(f"edgepilot/bench/floor-{tag}/rep", lambda _m: got.set())
    resp.start()
    req.start()
    time.sleep(0.2)

    def worker() -> None:
        while work.get() is not None:
            resp.publish(f"edgepilot/bench/floor-{tag}/rep", b"ok")

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    payload = b"x" * size
    out = []
    try:
        for i in range(rounds + 20):
            got.clear()
            t0 = time.perf_counter()
            req.publish(f"edgepilot/bench/floor-{tag}/req", payload)
            if got.wait(1.0) and i >= 20:
                out.append((time.perf_counter() - t0) * 1e3)
    finally:
        work.put(None)
        t.join(1)
        req.close()
        resp.close()
    return out


HOPS = [
    "car_submit",
    "car_to_edge",
    "edge_queue_wake",
    "edge_decode_infer",
    "edge_reply_publish",
    "edge_to_car",
    "car_wake_poll",
    "edge_compute_ms_reported",
]
"""What ``trace_hops`` reports, in the order of one request's trip."""


def trace_hops(cfg: BrokerConfig, rounds: int = 300) -> dict[str, float]:
    """Median time (ms) of each hop of one request, sequential, with an in-process edge
    node (``builtin:pilotnet``) and car client: where a round trip goes. Car and edge share
    one interpreter here (and its GIL), so hops are a little slower than across processes;
    the point is the split between them."""
    from edge_node.model import load_edge_model
    from edge_node.service import EdgeService

    marks: dict[str, float] = {}
    svc = EdgeService(cfg, load_edge_model("builtin:pilotnet"), node_id=f"trace-{time.time_ns() % 10**6}")
    svc._on_request = _marked(marks, "arrive", svc._on_request)  # type: ignore[method-assign]
    svc.process = _marked(marks, "batch", svc.process)  # type: ignore[method-assign]
    svc._reply = _marked(marks, "reply", svc._reply)  # type: ignore[method-assign]
    svc.start()
    car = OffloadClient(
        cfg, f"trace-car-{time.time_ns() % 10**6}", deadline_s=1.0, breaker=CircuitBreaker(10**9)
    )
    car._on_reply = _marked(marks, "back", car._on_reply)  # type: ignore[method-assign]
    car.start()
    payload = bench_frame()
    rows = []
    try:
        for i in range(rounds + 20):
            marks.clear()
            t0 = time.perf_counter()
            car.submit(i, payload)
            t1 = time.perf_counter()
            ans = car.poll(i, time.monotonic() + 1.0)
            t2 = time.perf_counter()
            time.sleep(0.002)  # the worker finishes its bookkeeping
            if ans is None or i < 20 or "reply_end" not in marks:
                continue
            rows.append(_hops(marks, t0, t1, t2, ans))
    finally:
        car.close()
        svc.stop()
    med = np.median(np.array(rows), axis=0) * 1e3
    return {n: round(float(v), 4) for n, v in zip(HOPS, med, strict=True)}


def _marked(marks: dict[str, float], name: str, fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, noting in ``marks`` when it is called (``name``) and when it returns."""

    def wrapped(*a: P.args, **kw: P.kwargs) -> R:
        marks[name] = time.perf_counter()
        out = fn(*a, **kw)
        marks[name + "_end"] = time.perf_counter()
        return out

    return wrapped


def _hops(marks: dict[str, float], t0: float, t1: float, t2: float, ans: EdgeAnswer) -> list[float]:
    """One request's hops (s), in the order of ``HOPS``: submit called at ``t0``, returned at
    ``t1``; poll returned the answer at ``t2``."""
    return [
        t1 - t0,
        marks["arrive"] - t1,
        marks["batch"] - marks["arrive"],
        marks["reply"] - marks["batch"],
        marks["reply_end"] - marks["reply"],
        marks["back"] - marks["reply_end"],
        t2 - marks["back"],
        (ans.compute_ms or 0.0) / 1e3,
    ]


if __name__ == "__main__":  # python -m testbed.offload_bench floor|trace mqtt://HOST:PORT
    import json
    import sys

    url = sys.argv[2] if len(sys.argv) > 2 else "mqtt://127.0.0.1:1883"
    if sys.argv[1:2] == ["trace"]:
        print(json.dumps(trace_hops(BrokerConfig(url=url))))
        sys.exit(0)
    if sys.argv[1:2] == ["floor"]:
        print(json.dumps(pct(mqtt_floor(BrokerConfig(url=url), len(bench_frame())), 50, 99)))
        sys.exit(0)
    sys.exit("usage: python -m testbed.offload_bench trace|floor mqtt://HOST:PORT (saturation: edgepilot bench offload --saturate)")
