"""Retraining: train the edge teacher and the car model on the fleet's logs, evaluate, gate.

One run (``retrain``):

1. data: every received log in the store; whole sessions are held out for evaluation
   (never frames of a training session: neighbouring frames are near-duplicates);
2. train the edge model (fp32) in a process of its own while this one trains the car's
   model (early exit), compresses it to int8, evaluates it and trains its tails (or, with
   ``distill``, the edge model first, as the car model's teacher) — the model package's
   own ``train``/``compress_package`` functions, so the cloud builds exactly what
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
import os
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_trainer.procguard import die_with_parent
from cloud_trainer.registry import Registry
from edgepilot import EdgepilotError
from edgepilot.config import RetrainConfig
from edgepilot.drive.parts import Pilot
from edgepilot.sim.drive import scored_drives
from edgepilot.stats import pct

if TYPE_CHECKING:  # imported where a package is loaded: the runtime brings its ML libraries
    from edgepilot.model.runtime import Autopilot

log = logging.getLogger(__name__)


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
    """(train, held-out): whole sessions, at least one of each, chosen by a hash of the
    key, so a session's side does not change as the store grows: a session that a current
    model trained on never becomes a held-out one that judges it (a warm-started model
    would carry it too). With no hash hitting, the smallest-hash session is held out; a
    new session can only take that place, never a training one (unless every session
    hits: then the last one trains)."""
    if len(keys) < 2:
        raise EdgepilotError(
            f"retraining needs at least 2 driving sessions in the store (one is held out), found {len(keys)}"
        )
    held = [k for k in keys if _hash(k) % every == 0] or [min(keys, key=_hash)]
    if len(held) == len(keys):
        held = held[:-1]
    return [k for k in keys if k not in held], held


def _hash(key: str) -> int:
    return zlib.crc32(key.encode())


# -- evaluation --------------------------------------------------------------------------


def latency_ms(ap: Pilot, frames: list[np.ndarray], n: int = 200) -> dict[str, float]:
    """Per-frame inference (preprocess + early-exit net), batch 1, p50/p99."""
    import torch

    torch.set_num_threads(1)
    ts = []
    for i in range(min(n, len(frames))):
        t = time.perf_counter()
        ap.infer(frames[i % len(frames)])
        ts.append((time.perf_counter() - t) * 1e3)
    return pct(ts)


def evaluate_package(
    path: Path,
    trusted: list[str] | None,
    frames: list,
    labels: np.ndarray,
    cfg: RetrainConfig,
    plot_prefix: Path | None = None,
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
    if cfg.eval_tracks:  # the same car wiring and loop as every car (edgepilot.drive.car)
        out["closed_loop"] = scored_drives(
            ap, cfg.eval_tracks, cfg.eval_seconds, cfg.eval_scene_seed, cfg.eval_latency_ms, plot_prefix
        )
    return out


def gate(
    cand: dict[str, Any], cur: dict[str, Any] | None, cfg: RetrainConfig, *, check_latency: bool = True
) -> dict:
    """Not worse than ``cur`` beyond the margins, and within the latency budget."""
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, value: float, limit: float) -> None:
        checks.append(_check(name, ok, value, limit))

    if check_latency:
        p50 = cand["latency_ms"]["p50"]
        check("latency_p50_ms", p50 <= cfg.latency_budget_ms, p50, cfg.latency_budget_ms)
    if cur is not None:
        lim = round(cur["steering_mae"] + cfg.margin_mae, 5)
        check("heldout_steering_mae", cand["steering_mae"] <= lim, cand["steering_mae"], lim)
        if "closed_loop" in cand and "closed_loop" in cur:
            checks += closed_loop_checks(cand["closed_loop"], cur["closed_loop"], cfg)
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "against": cur and cur["version"]}


# -- the steps every candidate goes through (central retraining and federated runs) --------


def compress_car(
    fp32: str | Path, out: Path, calib_dirs: list[str], key: str | None, registry: Registry
) -> tuple[Path, dict[str, Any]]:
    """The car model compressed to an ONNX Runtime int8 package (the car's own runtime: it
    runs on a car install without torch), calibrated on ``calib_dirs``: (package, info)."""
    from edgepilot.model.compress import compress_package

    try:
        comp = compress_package(
            str(fp32), str(out), calib_dirs, key=key, trusted=registry.trusted_keys, runtime="onnx"
        )
    except EdgepilotError as e:
        # An int8 failure must not stall the fleet's improvement: the fp32 model goes
        # through the same gate (latency budget included) and the report says why.
        log.warning("int8 compression failed, gating the fp32 car model instead: %s", e)
        return Path(fp32), {"error": str(e)}
    return Path(comp["package"]), {
        k: comp.get(k) for k in ("version", "runtime", "size_bytes_before", "size_bytes_after")
    }


def judge(
    registry: Registry,
    target: str,
    pkg: Path,
    frames: list,
    labels: np.ndarray,
    cfg: RetrainConfig,
    plots: dict[str, Path] | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Candidate and current evaluated side by side, and the gate's verdict; with ``work``,
    the closed-loop trajectories drawn there and named in ``plots``."""
    tcfg = cfg if target == "car" else RetrainConfig(**{**asdict(cfg), "eval_tracks": []})
    trusted = registry.trusted_keys

    def ev(path: Path, who: str) -> dict[str, Any]:
        prefix = work / f"trajectory-{target}-{who}" if work is not None else None
        out = evaluate_package(path, trusted, frames, labels, tcfg, prefix)
        for p in (out.get("closed_loop") or {}).pop("plots", {}).values():
            if plots is not None:
                plots[Path(p).stem] = Path(p)
        return out

    cand = ev(pkg, "candidate")
    cur_v = registry.current(target)
    cur = ev(registry.package_path(target, cur_v), "current") if cur_v else None
    return {"candidate": cand, "current": cur, "gate": gate(cand, cur, cfg, check_latency=target == "car")}


def judge_pair(
    registry: Registry,
    targets: dict[str, Any],
    car_pkg: Path,
    edge_pkg: Path,
    held: tuple[list, np.ndarray],
    cfg: RetrainConfig,
) -> None:
    """The edge candidate judged as the partner of the car model the fleet will run (the car
    candidate if it passed, else the current one): a car that drives cleanly alone can be
    steered off by an edge model that is wrong on exactly the frames it is sent. Open loop,
    on the held-out frames the car would offload, the edge's answers may be at most
    ``edge_offload_ratio`` times as far off as the car's own (``offload_check``); in closed
    loop the car may not drive worse with the edge than alone, within the car gate's margins.
    The checks join the edge candidate's gate."""
    from edgepilot.model.runtime import Autopilot

    fleet = fleet_car(registry, targets["car"], car_pkg)
    if fleet is None:
        return
    path, alone = fleet
    trusted = registry.trusted_keys
    pilot = Autopilot.load(path, trusted, threads=cfg.threads)
    edge = Autopilot.load(edge_pkg, trusted, threads=cfg.threads)
    verdict = targets["edge"]["gate"]
    check, offloaded = offload_check(pilot, edge, *held, cfg)
    verdict["checks"] += [check] if check else []
    pair: dict[str, Any] = {"car": pilot.version, "offloaded": offloaded}
    if cfg.eval_tracks and alone:
        both = scored_drives(
            pilot, cfg.eval_tracks, cfg.eval_seconds, cfg.eval_scene_seed, cfg.eval_latency_ms, edge=edge
        )
        both = {k: both[k] for k in ("autonomy", "mean_abs_cte_m", "interventions", "tracks")}
        verdict["checks"] += closed_loop_checks(both, alone, cfg, "_with_car")
        pair.update(alone=alone, with_edge=both)
    verdict["passed"] = all(c["passed"] for c in verdict["checks"])
    targets["edge"]["with_car"] = pair


def fleet_car(registry: Registry, car: dict[str, Any], car_pkg: Path) -> tuple[Path, dict | None] | None:
    """The car model the fleet runs after this run, and its closed-loop drives alone."""
    if car["gate"]["passed"]:
        return car_pkg, car["candidate"].get("closed_loop")
    if car["current"] is not None:
        return registry.package_path("car", registry.current("car")), car["current"].get("closed_loop")
    return None


def offload_check(
    car: Autopilot, edge: Autopilot, frames: list, labels: np.ndarray, cfg: RetrainConfig
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Open loop: the held-out frames ``car`` would offload (no exit sure enough), the
    edge's answer against the car's own there: (the check, or None when fewer than
    ``edge_offload_min_frames`` were hard: too few to judge; what was measured)."""
    local = _decisions(car, frames)
    hard = np.flatnonzero([d.hard for d in local])
    info: dict[str, Any] = {"frames": int(len(hard)), "of": len(frames)}
    if len(hard) < cfg.edge_offload_min_frames:
        return None, info
    sent = [frames[i] for i in hard]
    answers = [d.steering for d in _decisions(edge, sent)]
    car_mae = float(np.abs(np.array([local[i].steering for i in hard]) - labels[hard]).mean())
    edge_mae = float(np.abs(np.array(answers) - labels[hard]).mean())
    ratio = round(edge_mae / max(car_mae, 1e-6), 3)
    info.update(car_mae=round(car_mae, 5), edge_mae=round(edge_mae, 5))
    return _check("heldout_offload_mae_ratio", ratio <= cfg.edge_offload_ratio, ratio, cfg.edge_offload_ratio), info


def _decisions(ap: Autopilot, frames: list, batch: int = 64) -> list:
    """What ``ap`` answers on each frame, early exits on, a batch at a time."""
    return [d for i in range(0, len(frames), batch) for d in ap.infer_batch(frames[i : i + batch])]


def _check(name: str, ok: bool, value: float, limit: float) -> dict[str, Any]:
    return {"check": name, "passed": bool(ok), "value": value, "limit": limit}


def closed_loop_checks(a: dict[str, Any], b: dict[str, Any], cfg: RetrainConfig, suffix: str = "") -> list[dict]:
    """Drive ``a`` not worse than drive ``b`` beyond the margins: autonomy and mean |CTE|."""
    lim_a = round(b["autonomy"] - cfg.margin_autonomy, 4)
    lim_c = round(b["mean_abs_cte_m"] + cfg.margin_cte_m, 4)
    return [
        _check("sim_autonomy" + suffix, a["autonomy"] >= lim_a, a["autonomy"], lim_a),
        _check("sim_mean_abs_cte_m" + suffix, a["mean_abs_cte_m"] <= lim_c, a["mean_abs_cte_m"], lim_c),
    ]


def register(
    registry: Registry,
    target: str,
    pkg: Path,
    judged: dict[str, Any],
    data: list[str],
    report: str | None,
    tails: dict[str, Any] | None = None,
    source: Path | None = None,
) -> bool:
    """Register a judged candidate (with ``source``, the fp32 package an int8 car model was
    compressed from); promote it when it passed (True). Pushing is the caller's."""
    verdict = judged["gate"]
    registry.add(target, pkg, data=data, gate=verdict, report=report)
    version = judged["candidate"]["version"]
    if source is not None and Path(source) != Path(pkg):
        registry.add_source(version, source)
    if not verdict["passed"]:
        return False
    if tails is not None and "path" in tails:
        registry.add_tails(version, tails["path"], tails)  # before promote: pushed with it
    registry.promote(target, version)
    return True


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
    from edgepilot.model.evaluate import load_frames

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

    results: dict[str, Any] = {"run": run_id, "train": train_keys, "heldout": held_keys, "targets": {}}
    # the plots the run's report keeps in the store: training curves, gate trajectories
    plots: dict[str, Path] = {}
    held = load_frames(held_dirs, cfg.eval_frames)
    init = warm_starts(registry) if cfg.warm_start else {}
    results["warm_start"] = {t: Path(p).name for t, p in init.items()}
    with EdgeJob(train_dirs, work, cfg, key, init.get("edge"), registry.trusted_keys, held_dirs) as edge_job:
        car_pkg, car_src = _car_candidate(
            registry, train_dirs, work, cfg, key, edge_job.teacher(), results, plots, init.get("car"), held_dirs
        )
        results["targets"]["car"] = judge(registry, "car", car_pkg, *held, cfg, plots, work)
        tails = None
        if cfg.tails and results["targets"]["car"]["gate"]["passed"]:
            tails = _train_tails(registry, car_pkg, train_dirs, work, cfg)
            results["tails"] = {k: v for k, v in tails.items() if k != "path"}
        edge = edge_job.result()
    candidates = {"car": car_pkg}
    if edge is not None:
        candidates["edge"] = Path(edge["package"])
        results["edge_train"] = _trained(edge)
        if edge.get("curve"):
            plots["curve-edge"] = Path(edge["curve"])
        results["targets"]["edge"] = judge(registry, "edge", candidates["edge"], *held, cfg, plots, work)
        judge_pair(registry, results["targets"], car_pkg, candidates["edge"], held, cfg)
    report_key = write_report(registry.store, run_id, results, work, plots)
    promoted = [
        target
        for target, pkg in candidates.items()
        if register(
            registry,
            target,
            pkg,
            results["targets"][target],
            train_keys,
            report_key,
            tails if target == "car" else None,
            car_src if target == "car" else None,
        )
    ]
    results.update(promoted=promoted, report=report_key, elapsed_s=round(time.time() - t0, 1))
    return results


def _trained(r: dict) -> dict:
    """What a run's summary keeps of a training result."""
    return {k: r[k] for k in ("version", "val_steering_mae", "epochs", "samples")}


def warm_starts(registry: Registry) -> dict[str, Path]:
    """The fp32 packages the current car and edge models came from (what a warm start
    loads), for the targets that have one."""
    from edgepilot.model.package import read_manifest

    out: dict[str, Path] = {}
    for target in ("car", "edge"):
        version = registry.current(target)
        if version is None:
            continue
        path = registry.package_path(target, version)
        if read_manifest(path).get("quant", "fp32") != "fp32":
            path = registry.source_path(version) if target == "car" else None
        if path is not None:
            out[target] = path
    return out


def _train_config(cfg: RetrainConfig, target: str, warm: bool = False) -> Any:
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.train import TrainConfig

    base = {"seed": cfg.seed, "threads": cfg.threads}
    if target == "edge":
        frames = cfg.edge_max_frames or cfg.max_frames
        epochs = cfg.warm_edge_epochs if warm else cfg.edge_epochs or cfg.epochs
        keep_last = True if cfg.edge_val_heldout else None  # no epoch picked by the gate's frames
        return TrainConfig(arch="edge", epochs=epochs, max_frames=frames, keep_last=keep_last, **base)
    epochs = cfg.warm_epochs if warm else cfg.epochs
    return TrainConfig(
        arch="early-exit",
        epochs=epochs,
        max_frames=cfg.max_frames,
        mutual=cfg.warm_mutual if warm else cfg.mutual,
        target=CalibrationTarget(ok_tol=cfg.offload_tol),
        **base,
    )


def _val_logs(cfg: RetrainConfig, target: str, held_dirs: list[str] | None) -> list[str] | None:
    """The sessions ``target``'s model validates on: the run's held-out ones with
    ``car_val_heldout`` / ``edge_val_heldout``; None: its own seeded pick."""
    use = cfg.car_val_heldout if target == "car" else cfg.edge_val_heldout
    return held_dirs if use and held_dirs else None


def _car_candidate(
    registry: Registry,
    train_dirs: list[str],
    work: Path,
    cfg: RetrainConfig,
    key: str | None,
    teacher: str | None,
    results: dict,
    plots: dict[str, Path],
    init: Path | None = None,
    held_dirs: list[str] | None = None,
) -> tuple[Path, Path]:
    """Train the car model (from ``teacher`` when distilling; starting from ``init`` when
    warm) and compress it to int8: (the candidate package, the fp32 package it came from);
    its figures into ``results``, its training curve into ``plots``. With
    ``car_val_heldout``, ``held_dirs`` (the held-out sessions) are its validation ones
    too: its exit thresholds are calibrated on them, and every other session trains (a
    third split leaves a small fleet's car model four tracks of seven to learn from)."""
    from edgepilot.model.train import train

    tcfg = _train_config(cfg, "car", warm=init is not None)
    trusted = registry.trusted_keys
    val = _val_logs(cfg, "car", held_dirs)
    out = work / "car-fp32.eppkg"
    car = train(train_dirs, out, tcfg, teacher=teacher, init=init, key=key, trusted=trusted, val_logs=val)
    results["car_train"] = _trained(car)
    if car.get("curve"):
        plots["curve-car"] = Path(car["curve"])
    car_pkg, results["compress"] = compress_car(car["package"], work / "car.eppkg", train_dirs, key, registry)
    return car_pkg, Path(car["package"])


class EdgeJob:
    """The edge model's training, beside the car model's pipeline.

    Side by side (the default): a spawned process trains the edge model while this one
    trains, compresses and judges the car model and trains its tails; training uses one
    thread, so on two cores the run takes about the longer of the two instead of their
    sum. Distilled (``cfg.distill``): the car learns from the edge model, so the edge
    model is trained first, here, and ``teacher()`` is its package. With
    ``edge_val_heldout``, ``held_dirs`` are its validation sessions (``_car_candidate``)."""

    def __init__(
        self,
        train_dirs: list[str],
        work: Path,
        cfg: RetrainConfig,
        key: str | None,
        init: Path | None = None,
        trusted: list[str] | None = None,
        held_dirs: list[str] | None = None,
    ) -> None:
        self.args = (train_dirs, work / "edge.eppkg", _train_config(cfg, "edge", warm=init is not None))
        self.enabled, self.distill = cfg.train_edge, cfg.distill
        self.kwargs = {"key": key, "init": init, "trusted": trusted, "val_logs": _val_logs(cfg, "edge", held_dirs)}
        self._done: dict | None = None
        self._pool: Any = None
        self._pending: Any = None

    def __enter__(self) -> EdgeJob:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from edgepilot.model.package import load_private_key
        from edgepilot.model.train import train

        if not self.enabled:
            return self
        if self.distill:
            self._done = train(*self.args, **self.kwargs)
            return self
        load_private_key(self.kwargs["key"], create=True)  # made here once, not by two processes at the same time
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self._pending = self._pool.submit(_train_guarded, os.getpid(), *self.args, **self.kwargs)
        return self

    def teacher(self) -> str | None:
        return self._done["package"] if self.distill and self._done else None

    def result(self) -> dict | None:
        """The edge model's training result (waits for it); None when not trained."""
        from concurrent.futures.process import BrokenProcessPool

        if self._pending is not None and self._done is None:
            try:
                self._done = self._pending.result()
            except BrokenProcessPool:
                raise EdgepilotError("the edge model's training process died (out of memory?)") from None
        return self._done

    def __exit__(self, *exc: object) -> None:
        if self._pool is None:
            return
        if exc[0] is not None:  # the car's pipeline failed: the edge worker stops too
            for proc in list((self._pool._processes or {}).values()):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _train_guarded(parent: int, *args: Any, **kwargs: Any) -> dict:
    """``train`` in a worker that dies with the retraining process that started it (which
    itself dies with its trainer: ``service.run_isolated``)."""
    from edgepilot.model.train import train

    die_with_parent(parent)
    return train(*args, **kwargs)


def _train_tails(
    registry: Registry, car_pkg: Path, train_dirs: list[str], work: Path, cfg: RetrainConfig
) -> dict[str, Any]:
    """The split-mode tails of a car model that passed, on its training logs."""
    from cloud_trainer.tails import train_for_package

    return train_for_package(
        car_pkg,
        train_dirs,
        work / "tails.pt",
        epochs=cfg.tail_epochs,
        width=cfg.tail_width,
        max_frames=cfg.tail_max_frames or cfg.max_frames,
        trusted_keys=registry.trusted_keys,
        seed=cfg.seed,
    )
