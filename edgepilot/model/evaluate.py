"""Open-loop evaluation and the side-by-side per-frame benchmark of two packages."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgepilot.model.data import decode, load_samples
from edgepilot.model.runtime import Autopilot
from edgepilot.progress import bar


def load_frames(logs: list[str], limit: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded frames and steering labels (evenly subsampled to ``limit``)."""
    samples = load_samples(logs).samples
    if limit and len(samples) > limit:
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).astype(int)]
    return [decode(s.jpeg) for s in samples], np.array([s.steering for s in samples])


def evaluate(ap: Autopilot, frames: list[np.ndarray], labels: np.ndarray, batch: int = 64) -> dict:
    """What the car would steer on each frame (early exits on), against the labels."""
    decisions = []
    for i in bar(range(0, len(frames), batch), desc="eval", unit="batch"):
        decisions.extend(ap.infer_batch(frames[i : i + batch]))
    steer = np.array([d.steering for d in decisions])
    exits = np.array([d.exit for d in decisions])
    err = steer - labels
    macs = np.cumsum(ap.stage_macs)
    return {
        "steering_mae": float(np.abs(err).mean()),
        "steering_rmse": float(np.sqrt((err**2).mean())),
        "exit_rate": {str(k): float(np.mean(exits == k)) for k in range(ap.n_exits)},
        "mean_macs": float(np.mean(macs[exits])) if len(exits) else 0.0,
        "offload_rate": float(np.mean([d.hard for d in decisions])),
        "frames": len(frames),
        "version": ap.version,
    }


def bench(
    model: Autopilot, baseline: Autopilot, frames: list[np.ndarray], labels: np.ndarray, block: int = 50
) -> dict:
    """Per-frame compute (preprocess + inference at batch 1, one thread) of two models in
    one run: alternating blocks of ``block`` frames (model, then the same frames through
    the baseline), so load from other processes hits both alike, while each model runs
    with its own weights in cache as it would on the car (alternating every frame would
    make each evict the other's weights)."""
    model.warmup()
    baseline.warmup()
    tm, tb, sm, sb, ex = [], [], [], [], []
    for i in bar(range(0, len(frames), block), desc="bench", unit="block"):
        chunk = frames[i : i + block]
        for f in chunk:
            t0 = time.perf_counter()
            d = model.infer(f)
            tm.append(time.perf_counter() - t0)
            sm.append(d.steering)
            ex.append(d.exit)
        for f in chunk:
            t0 = time.perf_counter()
            b = baseline.infer(f)
            tb.append(time.perf_counter() - t0)
            sb.append(b.steering)
    tm_a, tb_a, ex_a = np.array(tm) * 1e3, np.array(tb) * 1e3, np.array(ex)
    macs = np.cumsum(model.stage_macs)
    return {
        "model_ms": float(tm_a.mean()),
        "baseline_ms": float(tb_a.mean()),
        "speedup": float(tb_a.mean() / tm_a.mean()),
        "speedup_p50": float(np.median(tb_a) / np.median(tm_a)),
        "model_ms_p50": float(np.median(tm_a)),
        "baseline_ms_p50": float(np.median(tb_a)),
        "model_mae": float(np.abs(np.array(sm) - labels).mean()),
        "baseline_mae": float(np.abs(np.array(sb) - labels).mean()),
        "mae_ratio": float(
            np.abs(np.array(sm) - labels).mean() / max(np.abs(np.array(sb) - labels).mean(), 1e-9)
        ),
        "exit_rate": {str(k): float(np.mean(ex_a == k)) for k in range(model.n_exits)},
        "mean_macs": float(np.mean(macs[ex_a])),
        "baseline_macs": float(sum(baseline.stage_macs)),
        "model_bytes": Path(model.path).stat().st_size if model.path else None,
        "baseline_bytes": Path(baseline.path).stat().st_size if baseline.path else None,
        "frames": len(frames),
        "model_version": model.version,
        "baseline_version": baseline.version,
    }
