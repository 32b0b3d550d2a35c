"""Retraining: train the edge teacher and the car model on the fleet's logs, evaluate, gate.

One run (``retrain``):

1. data: every received log in the store; whole sessions are held out for evaluation
   (never frames of a training session: neighbouring frames are near-duplicates);
2. train the edge model (the teacher, fp32) and the car's model (early exit, distilled
   from that teacher), then compress the car model to int8 — the model issue's own
   ``train``/``compress_package`` functions, so the cloud builds exactly what
   ``edgepilot train``/``compress`` build;
3. evaluate candidate and current side by side in the same run: open loop on the
   held-out sessions (steering MAE with early exits on, as the car runs), closed loop in
   the simulator on the evaluation tracks (autonomy, mean |CTE|), and per-frame latency
   at batch 1 on one thread;
4. gate (``gate``): the candidate is promoted only if it is not worse than the current
   one by more than the configured margins and meets the latency budget;
5. register both packages with their verdict and report; promote (and push) if passed;
6. for a car model that passed, train its split-mode tails on the same training logs
   (``cloud_trainer.tails``) and register them next to it, so they are pushed with it; a
   failure there is reported and the car model goes out without them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_trainer.registry import Registry
from edgepilot import EdgepilotError

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    epochs: int = 8
    edge_epochs: int | None = None  # default: epochs
    max_frames: int | None = None  # cap training frames (tests, quick runs)
    heldout_every: int = 5  # every 5th session (at least one) is held out
    eval_frames: int = 2000
    eval_tracks: list[str] = field(default_factory=lambda: ["oval"])
    eval_seconds: float = 30.0  # simulated seconds per track
    eval_scene_seed: int = 0
    eval_latency_ms: float = 0.0
    # gate margins: how much worse than the current model a candidate may be
    margin_mae: float = 0.01
    margin_autonomy: float = 0.0
    margin_cte_m: float = 0.02
    latency_budget_ms: float = 10.0  # car model, p50 per frame, batch 1, one thread
    train_edge: bool = True
    seed: int = 0
    threads: int = 1
    # split-mode tails of a promoted car model (edgepilot.model.tail): small and quick
    tails: bool = True
    tail_epochs: int = 3
    tail_width: int = 96
    tail_max_frames: int | None = None  # default: max_frames


# -- data --------------------------------------------------------------------------------


def store_logs(registry: Registry) -> list[str]:
    """Keys ``logs/<car>/<name>`` of every complete log in the store."""
    keys = set()
    for key in registry.store.list("logs/"):
        parts = key.split("/")
        if len(parts) >= 4 and parts[3] == "records.jsonl":
            keys.add("/".join(parts[:3]))
    return sorted(keys)


def split_sessions(keys: list[str], every: int) -> tuple[list[str], list[str]]:
    """(train, held-out): deterministic, whole sessions, at least one of each."""
    if len(keys) < 2:
        raise EdgepilotError(
            f"retraining needs at least 2 driving sessions in the store (one is held out), found {len(keys)}"
        )
    held = [k for i, k in enumerate(keys) if i % every == every - 1] or [keys[-1]]
    return [k for k in keys if k not in held], held


# -- evaluation --------------------------------------------------------------------------


def latency_ms(ap: Any, frames: list[np.ndarray], n: int = 200) -> dict[str, float]:
    """Per-frame inference (preprocess + early-exit net), batch 1, p50/p99."""
    import torch

    torch.set_num_threads(1)
    ts = []
    for i in range(min(n, len(frames))):
        t = time.perf_counter()
        ap.infer(frames[i % len(frames)])
        ts.append((time.perf_counter() - t) * 1e3)
    return {"p50": round(float(np.percentile(ts, 50)), 4), "p99": round(float(np.percentile(ts, 99)), 4)}


def closed_loop(
    ap: Any, tracks: list[str], seconds: float, scene_seed: int, latency: float
) -> dict[str, Any]:
    """Drive each evaluation track with ``ap`` through the onboard loop; mean scores."""
    from edgepilot.sim.tracks import load_track
    from edgepilot.sim.world import SimWorld
    from vehicle.hotswap import ModelSlot
    from vehicle.loop import DriveLoop, LoopOptions
    from vehicle.sources import SimActuator, SimSource

    per = {}
    for name in tracks:
        world = SimWorld(load_track(name), scene_seed=scene_seed, latency_ms=latency, keep_trail=False)
        loop = DriveLoop(
            SimSource(world).until(10**6, seconds),  # time-bound, not lap-bound
            SimActuator(world),
            model=ModelSlot(ap),
            options=LoopOptions(mode="local"),
        )
        loop.run()
        per[name] = world.score.as_dict()
    return {
        "autonomy": round(float(np.mean([s["autonomy"] for s in per.values()])), 4),
        "mean_abs_cte_m": round(float(np.mean([s["mean_abs_cte_m"] for s in per.values()])), 4),
        "interventions": int(sum(s["interventions"] for s in per.values())),
        "tracks": per,
    }


def evaluate_package(
    path: Path, trusted: list[str] | None, frames: list, labels: np.ndarray, cfg: RetrainConfig
) -> dict:
    from edgepilot.model.evaluate import evaluate
    from edgepilot.model.runtime import Autopilot

    ap = Autopilot.load(path, trusted, threads=cfg.threads)
    ol = evaluate(ap, frames, labels)
    out: dict[str, Any] = {
        "version": ap.version,
        "steering_mae": round(ol["steering_mae"], 5),
        "exit_rate": ol["exit_rate"],
        "offload_rate": round(ol["offload_rate"], 4),
        "latency_ms": latency_ms(ap, frames),
    }
    if cfg.eval_tracks:
        out["closed_loop"] = closed_loop(
            ap, cfg.eval_tracks, cfg.eval_seconds, cfg.eval_scene_seed, cfg.eval_latency_ms
        )
    return out


def gate(
    cand: dict[str, Any], cur: dict[str, Any] | None, cfg: RetrainConfig, *, check_latency: bool = True
) -> dict:
    """Not worse than ``cur`` beyond the margins, and within the latency budget."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, value: Any, limit: Any) -> None:
        checks.append({"check": name, "passed": bool(ok), "value": value, "limit": limit})

    if check_latency:
        p50 = cand["latency_ms"]["p50"]
        check("latency_p50_ms", p50 <= cfg.latency_budget_ms, p50, cfg.latency_budget_ms)
    if cur is not None:
        lim = round(cur["steering_mae"] + cfg.margin_mae, 5)
        check("heldout_steering_mae", cand["steering_mae"] <= lim, cand["steering_mae"], lim)
        if "closed_loop" in cand and "closed_loop" in cur:
            a, b = cand["closed_loop"], cur["closed_loop"]
            lim_a = round(b["autonomy"] - cfg.margin_autonomy, 4)
            check("sim_autonomy", a["autonomy"] >= lim_a, a["autonomy"], lim_a)
            lim_c = round(b["mean_abs_cte_m"] + cfg.margin_cte_m, 4)
            check("sim_mean_abs_cte_m", a["mean_abs_cte_m"] <= lim_c, a["mean_abs_cte_m"], lim_c)
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "against": cur and cur["version"]}


# -- the run -----------------------------------------------------------------------------


def retrain(
    registry: Registry,
    workdir: str | Path,
    cfg: RetrainConfig,
    *,
    key: str | None = None,
) -> dict[str, Any]:
    """One retraining run; returns its summary (also in the report). Registers both
    candidates and promotes those that pass; pushing is the caller's (it holds the MQTT
    connection): ``results["promoted"]`` lists the targets to push."""
    from cloud_trainer.report import write_report
    from edgepilot.model.compress import compress_package
    from edgepilot.model.evaluate import load_frames
    from edgepilot.model.train import TrainConfig, train

    t0 = time.time()
    run_id = time.strftime("run-%Y%m%d-%H%M%S")
    work = Path(workdir) / run_id
    work.mkdir(parents=True, exist_ok=True)
    keys = store_logs(registry)
    train_keys, held_keys = split_sessions(keys, cfg.heldout_every)
    store = registry.store
    train_dirs = [str(store.local_dir(k)) for k in train_keys]
    held_dirs = [str(store.local_dir(k)) for k in held_keys]
    log.info("retrain %s: %d training sessions, %d held out", run_id, len(train_dirs), len(held_dirs))

    base = {"seed": cfg.seed, "max_frames": cfg.max_frames, "threads": cfg.threads}
    teacher = None
    results: dict[str, Any] = {"run": run_id, "train": train_keys, "heldout": held_keys, "targets": {}}
    if cfg.train_edge:
        edge = train(
            train_dirs,
            work / "edge.eppkg",
            TrainConfig(arch="edge", epochs=cfg.edge_epochs or cfg.epochs, **base),
            key=key,
        )
        teacher = edge["package"]
        results["edge_train"] = {k: edge[k] for k in ("version", "val_steering_mae", "epochs", "samples")}
    car = train(
        train_dirs,
        work / "car-fp32.eppkg",
        TrainConfig(arch="early-exit", epochs=cfg.epochs, **base),
        teacher=teacher,
        key=key,
    )
    results["car_train"] = {k: car[k] for k in ("version", "val_steering_mae", "epochs", "samples")}
    try:
        # the car's own runtime: an ONNX package runs on a car install without torch
        comp = compress_package(
            car["package"],
            str(work / "car.eppkg"),
            train_dirs,
            key=key,
            trusted=registry.trusted_keys,
            runtime="onnx",
        )
        results["compress"] = {
            k: comp.get(k) for k in ("version", "runtime", "size_bytes_before", "size_bytes_after")
        }
        car_pkg = Path(comp["package"])
    except EdgepilotError as e:
        # An int8 failure must not stall the fleet's improvement: the fp32 distilled model
        # goes through the same gate (latency budget included) and the report says why.
        log.warning("int8 compression failed, gating the fp32 car model instead: %s", e)
        results["compress"] = {"error": str(e)}
        car_pkg = Path(car["package"])

    frames, labels = load_frames(held_dirs, cfg.eval_frames)
    candidates = {"car": car_pkg}
    if teacher:
        candidates["edge"] = Path(teacher)
    for target, pkg in candidates.items():
        tcfg = cfg if target == "car" else RetrainConfig(**{**asdict(cfg), "eval_tracks": []})
        cand = evaluate_package(pkg, registry.trusted_keys, frames, labels, tcfg)
        cur_v = registry.current(target)
        cur = (
            evaluate_package(
                registry.package_path(target, cur_v), registry.trusted_keys, frames, labels, tcfg
            )
            if cur_v
            else None
        )
        verdict = gate(cand, cur, cfg, check_latency=target == "car")
        results["targets"][target] = {"candidate": cand, "current": cur, "gate": verdict}
    tails = None
    if cfg.tails and results["targets"]["car"]["gate"]["passed"]:
        from cloud_trainer.tails import train_for_package

        tails = train_for_package(
            car_pkg,
            train_dirs,
            work / "tails.pt",
            epochs=cfg.tail_epochs,
            width=cfg.tail_width,
            max_frames=cfg.tail_max_frames or cfg.max_frames,
            trusted_keys=registry.trusted_keys,
            seed=cfg.seed,
        )
        results["tails"] = {k: v for k, v in tails.items() if k != "path"}
    report_key = write_report(registry.store, run_id, results, work)
    promoted = []
    for target, pkg in candidates.items():
        verdict = results["targets"][target]["gate"]
        registry.add(target, pkg, data=train_keys, gate=verdict, report=report_key)
        if verdict["passed"]:
            version = results["targets"][target]["candidate"]["version"]
            if target == "car" and tails is not None and "path" in tails:
                registry.add_tails(version, tails["path"], tails)  # before promote: pushed with it
            registry.promote(target, version)
            promoted.append(target)
    results.update(promoted=promoted, report=report_key, elapsed_s=round(time.time() - t0, 1))
    return results
