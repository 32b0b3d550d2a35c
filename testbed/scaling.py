"""``edgepilot bench offload --saturate``: saturated throughput of edge nodes, side by side.

Three set-ups of real ``edgepilot edge`` processes, each started here, measured in
alternating rounds so that all of them see the same machine load:

- ``batch1``: one node, ``max_batch = 1`` (every request its own forward pass);
- ``batched``: one node, ``max_batch = 16`` (micro-batching across cars);
- ``two_nodes``: two batched nodes in one shared-subscription group.

Load: the lean raw-socket generator (``testbed.loadgen``), ``--window`` requests always
in flight across 8 car connections, the same request bytes the cars send. Ratios of the
medians over rounds are the result (``batching_gain``, ``two_node_gain``); what the
cores allow is reported with them (``cpu_count``), because on a machine with as many cores
as there are processes competing for them a second node can only add contention.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.progress import bar
from edgepilot.schema import wire
from edgepilot.supervise import Supervisor

SETUPS = {"batch1": (1, 1), "batched": (1, 16), "two_nodes": (2, 16)}  # name: (nodes, max_batch)


def _profile(dirpath: Path, url: str, max_batch: int, threads: int) -> Path:
    p = dirpath / f"edge-b{max_batch}.toml"
    p.write_text(
        f'name = "edge"\n[broker]\nurl = "{url}"\n'
        f"[edge]\nmax_batch = {max_batch}\nbatch_wait_ms = 1.0\nbatch_threads = {threads}\n"
        f'group = "sat"\n[model]\nthreads = 1\ntrusted_keys = []\n'
    )
    return p


def _start_nodes(sup: Supervisor, profile: Path, model: str, n: int, tag: str, url: str) -> list[str]:
    names = []
    for i in range(n):
        name = f"{tag}-{i}"
        sup.edgepilot(
            name, "edge", "--profile", str(profile), "--model", model, "--node-id", name, "--broker", url
        )
        names.append(name)
    for name in names:
        sup.wait_ready(name)
    return names


def measure(
    url: str,
    model: str = "builtin:pilotnet",
    rounds: int = 3,
    seconds: float = 5.0,
    window: int = 64,
    threads: int = 0,
    logdir: str | Path | None = None,
) -> dict[str, Any]:
    from testbed.loadgen import bench_frame, saturate

    frame = bench_frame()

    def payload_for(car: str) -> bytes:
        return wire.encode_request(wire.InferRequest(car, 0, frame, sent=0.0, budget_ms=5000.0))

    cfg = BrokerConfig(url=url)
    results: dict[str, list[dict[str, float]]] = {k: [] for k in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(logdir) if logdir else Path(tmp) / "logs"
        with Supervisor(logs) as sup:
            plan = [(r, name) for r in range(rounds) for name in SETUPS]
            for r, name in bar(plan, desc="saturate", unit="run"):
                nodes, max_batch = SETUPS[name]
                prof = _profile(Path(tmp), url, max_batch, threads)
                started = _start_nodes(sup, prof, model, nodes, f"{name}-r{r}", url)
                time.sleep(0.5)
                results[name].append(saturate(cfg, payload_for, seconds, window))
                for n in started:
                    sup.stop(n)
    med = {k: statistics.median(x["answered_per_s"] for x in v) for k, v in results.items()}
    return {
        "cpu_count": os.cpu_count(),
        "window": window,
        "seconds": seconds,
        "rounds": rounds,
        "answered_per_s": {k: [round(x["answered_per_s"], 1) for x in v] for k, v in results.items()},
        "rtt_ms_p50": {k: [round(x["rtt_ms_p50"], 2) for x in v] for k, v in results.items()},
        "median_per_s": {k: round(v, 1) for k, v in med.items()},
        "batching_gain": round(med["batched"] / med["batch1"], 3) if med["batch1"] else None,
        "two_node_gain": round(med["two_nodes"] / med["batched"], 3) if med["batched"] else None,
    }


def cli(args: argparse.Namespace, url: str) -> dict[str, Any]:
    if args.rounds < 1 or args.duration <= 0 or args.window < 1:
        raise EdgepilotError("--rounds, --duration and --window must be positive")
    return measure(url, args.model or "builtin:pilotnet", args.rounds, args.duration, args.window)


if __name__ == "__main__":  # python -m testbed.scaling [URL] [ROUNDS] [SECONDS]
    import json

    a = sys.argv[1:]
    print(
        json.dumps(
            measure(
                a[0] if a else "mqtt://127.0.0.1:1883",
                rounds=int(a[1]) if len(a) > 1 else 3,
                seconds=float(a[2]) if len(a) > 2 else 5.0,
            )
        )
    )
