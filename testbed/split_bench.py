"""Split mode vs frame mode, side by side in one run (co-inference by partitioning).

    .venv/bin/python -m testbed.split_bench --car CAR.eppkg --edge EDGE.eppkg \\
        --train LOG... --test LOG... [--tails TAILS.pt] [--frames 300] [--out result.json]

Trains (or loads) the edge tails for every split point of the car model on ``--train``,
starts a Mosquitto and one ``edgepilot edge`` *process* (the edge's big model for frame
mode, the tails for split mode), then, for each held-out frame of ``--test``, asks the
edge every way in turn, one request in flight: the JPEG (frame mode) and the car's
features after each stage (split mode). Per way: steering MAE of the edge's answer against
the expert's label (all frames, and the car's *hard* frames), bytes on the wire,
end-to-end latency (car-side packing or JPEG encoding + round trip) and its parts, and
``(1 - MAE) / latency`` (accuracy per millisecond). The car's own inference is the same
for every way (a frame is known to be hard at the car's final exit) and is reported apart.
The measured numbers then feed a ``SplitPlanner``, whose choice is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepilot.broker import start_broker
from edgepilot.config import BrokerConfig
from edgepilot.imaging import encode_jpeg
from edgepilot.model.data import Sample, decode, load_samples
from edgepilot.model.runtime import Autopilot
from edgepilot.model.tail import TailSet, split_points, stage_outputs, train_tails
from edgepilot.offload.client import CircuitBreaker, EdgeAnswer, OffloadClient
from edgepilot.offload.planner import FRAME, Candidate, SplitPlanner
from edgepilot.schema import wire
from edgepilot.stats import pct
from testbed.procs import spawn_edge

log = logging.getLogger(__name__)


@dataclass
class _Runs:
    """What the run measured: per way (``frame``, ``split<k>``) a list per figure, the car's
    time per split point, the car's own error, and the request counter."""

    ways: dict[str, dict[str, list[float]]]
    car_ms: dict[int, list[float]]
    local_err: list[float] = field(default_factory=list)
    hard: int = 0
    n: int = 0


def run(
    car_pkg: str,
    edge_pkg: str,
    train: list[str],
    test: list[str],
    tails_path: str | None,
    frames: int,
    epochs: int,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    car = Autopilot.load(car_pkg)
    tails, tails_path = _tails(car, train, tails_path, epochs)
    samples = load_samples(test).samples
    idx = np.linspace(0, len(samples) - 1, min(frames, len(samples))).astype(int)
    samples = [samples[i] for i in idx]
    ways = ["frame", *[f"split{k}" for k in sorted(tails.tails)]]
    points = split_points(car)
    runs = _Runs(
        {w: {"err": [], "err_hard": [], "bytes": [], "prep": [], "rtt": [], "compute": []} for w in ways},
        {k: [] for k in points},
    )
    with _edge_client(car, edge_pkg, tails_path) as client:
        for s in samples:
            _measure(client, car, s, points, runs)
    out: dict[str, Any] = {
        "frames": len(samples),
        "hard_frames": runs.hard,
        # per stage (a merged segment's time on its last stage), as the planner takes it
        "car_stage_ms": [
            round(float(np.median(runs.car_ms[k])), 3) if k in runs.car_ms else 0.0
            for k in range(max(points) + 1)
        ],
        "split_points": points,
        "car_local_mae": round(float(np.mean(runs.local_err)), 4),
        "car_version": car.version,
        "ways": {w: _way_summary(w, r, tails) for w, r in runs.ways.items()},
    }
    out["planner"] = _plan(out)
    return out


def _tails(car: Autopilot, train: list[str], tails_path: str | None, epochs: int) -> tuple[TailSet, str]:
    """The edge tails from ``tails_path`` if it exists, else trained (and saved there)."""
    if tails_path and Path(tails_path).exists():
        return TailSet.load(tails_path), tails_path
    t0 = time.perf_counter()
    tails = train_tails(car, train, epochs=epochs)
    log.warning("tails trained in %.0f s", time.perf_counter() - t0)
    return tails, str(tails.save(tails_path or Path(tempfile.mkdtemp()) / "tails.pt"))


@contextmanager
def _edge_client(car: Autopilot, edge_pkg: str, tails_path: str) -> Iterator[OffloadClient]:
    """A Mosquitto of its own, one edge node process, and a split-mode client to it that
    never backs off; all stopped on the way out."""
    broker = start_broker(Path(tempfile.mkdtemp(prefix="split-bench-")))
    edge = spawn_edge(broker.url, "edge-split", edge_pkg, tails_path)
    client = OffloadClient(
        BrokerConfig(url=broker.url),
        "bench-split",
        deadline_s=1.0,
        mode="split",
        model_version=car.version,
        breaker=CircuitBreaker(trip_after=10**9),
    )
    client.start()
    try:
        yield client
    finally:
        client.close()
        edge.terminate()
        edge.wait(10)
        broker.stop()


def _measure(client: OffloadClient, car: Autopilot, s: Sample, points: list[int], runs: _Runs) -> None:
    """One held-out frame: the car's own answer and stage times, then the edge's answer
    every way in turn."""
    img = decode(s.jpeg)
    dec = car.infer(img, force_final=True)  # every stage: its features and times
    seg_ms = [v for name, v in dec.stage_ms.items() if name.startswith("stage")]
    for k, ms in zip(points, seg_ms, strict=True):
        runs.car_ms[k].append(ms)
    feats = stage_outputs(car, [img])  # every split point's features
    runs.hard += dec.hard
    runs.local_err.append(abs(dec.steering - s.steering))
    for w, r in runs.ways.items():
        ans, nbytes, prep, rtt = _ask(client, runs.n, w, img, feats)
        runs.n += 1
        if ans is None:
            continue
        r["err"].append(abs(ans.steering - s.steering))
        if dec.hard:
            r["err_hard"].append(abs(ans.steering - s.steering))
        r["bytes"].append(nbytes)
        r["prep"].append(prep)
        r["rtt"].append(rtt - prep if w != "frame" else rtt)  # submit packs again: count once
        r["compute"].append(ans.compute_ms or 0.0)


def _ask(
    client: OffloadClient, n: int, way: str, img: np.ndarray, feats: dict[int, torch.Tensor]
) -> tuple[EdgeAnswer | None, int, float, float]:
    """One request, one in flight: (answer or None, bytes, car-side prep ms, round trip ms)."""
    t0 = time.perf_counter()
    if way == "frame":
        body = encode_jpeg(img, 90)
        prep = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        ok = client.submit(n, body)
        nbytes = len(body)
    else:
        k = int(way[5:])
        fb, meta = wire.pack_features(feats[k].numpy(), k)
        prep = (time.perf_counter() - t0) * 1e3  # what submit will repeat: measured apart
        nbytes = len(fb)
        t1 = time.perf_counter()
        ok = client.submit(n, None, features={k: feats[k]})
    ans = client.poll(n, time.monotonic() + 1.0) if ok else None
    return ans, nbytes, prep, (time.perf_counter() - t1) * 1e3


def _way_summary(w: str, r: dict[str, list[float]], tails: TailSet) -> dict[str, Any]:
    if not r["err"]:
        return {"answered": 0}
    e2e = [a + b for a, b in zip(r["prep"], r["rtt"], strict=True)]
    mae = float(np.mean(r["err"]))
    p50 = float(np.median(e2e))
    return {
        "answered": len(r["err"]),
        "mae": round(mae, 4),
        "mae_hard": round(float(np.mean(r["err_hard"])), 4) if r["err_hard"] else None,
        "tail_val_mae": tails.tails[int(w[5:])].val_mae if w != "frame" else None,
        "wire_bytes": round(float(np.mean(r["bytes"]))),
        "car_prep_ms": pct(r["prep"], digits=3),
        "edge_compute_ms": pct(r["compute"], digits=3),
        "link_ms": pct([a - b for a, b in zip(r["rtt"], r["compute"], strict=True)], digits=3),
        "e2e_ms": pct(e2e, digits=3),
        "accuracy_per_ms": round((1 - mae) / p50, 4),
    }


def _plan(out: dict[str, Any]) -> dict[str, Any]:
    """Feed the measurements to the planner (one frame period, 33 ms, as the deadline)."""
    cands = []
    links = []
    for w, r in out["ways"].items():
        if not r.get("answered"):
            continue
        stage = FRAME if w == "frame" else int(w[5:])
        cands.append(
            Candidate(
                stage,
                r["wire_bytes"],
                r["edge_compute_ms"]["p50"],
                0.0 if stage == FRAME else r["car_prep_ms"]["p50"],
                r["mae"],  # held-out MAE measured in this run, the same yardstick for every way
            )
        )
        links.append((r["wire_bytes"], r["link_ms"]["p50"]))
    p = SplitPlanner(cands, out["car_stage_ms"], deadline_ms=33.3)
    for _ in range(4):
        for b, ms in links:
            p.observe(b, ms)
    res: dict[str, Any] = {
        "rtt_ms": round(p.rtt_ms, 3),
        "bandwidth_mbps": round(p.bandwidth_mbps, 1),
        "choice": "frame" if p.choice == FRAME else p.choice,
        "table": p.table(),
    }
    p.update(bandwidth_mbps=1.0)  # what a congested 1 Mbit/s Wi-Fi link would change
    res["choice_at_1mbps"] = "frame" if p.choice == FRAME else p.choice
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--car", required=True)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--tails", help="tails file: loaded if it exists, else trained and saved there")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    res = run(a.car, a.edge, a.train, a.test, a.tails, a.frames, a.epochs)
    text = json.dumps(res)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
