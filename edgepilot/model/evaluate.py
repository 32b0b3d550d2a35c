"""Open-loop evaluation and the side-by-side per-frame benchmark of two packages."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgepilot.imaging import backend
from edgepilot.model.calibrate import CalibrationTarget, ratio_interval
from edgepilot.model.data import decode, evenly, load_samples
from edgepilot.model.runtime import Autopilot
from edgepilot.progress import bar


def load_frames(logs: list[str], limit: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded frames and steering labels (evenly subsampled to ``limit``)."""
    samples = evenly(load_samples(logs).samples, limit)
    return [decode(s.jpeg) for s in samples], np.array([s.steering for s in samples])


def evaluate(ap: Autopilot, frames: list[np.ndarray], labels: np.ndarray, batch: int = 64) -> dict:
    """What the car would steer on each frame (early exits on), against the labels; and
    the full network's own error (every frame at the final head), the exits' yardstick."""
    decisions, full = [], []
    for i in bar(range(0, len(frames), batch), desc="eval", unit="batch"):
        decisions.extend(ap.infer_batch(frames[i : i + batch]))
        full.extend(d.steering for d in ap.infer_batch(frames[i : i + batch], force_final=True))
    steer = np.array([d.steering for d in decisions])
    exits = np.array([d.exit for d in decisions])
    err = steer - labels
    full_err = np.abs(np.array(full) - labels)
    final_mae = float(full_err.mean()) if len(full) else 0.0
    macs = np.cumsum(ap.stage_macs)
    return {
        "steering_mae": float(np.abs(err).mean()),
        "steering_rmse": float(np.sqrt((err**2).mean())),
        "final_head_mae": final_mae,
        "mae_vs_final_head": float(np.abs(err).mean() / max(final_mae, 1e-9)),
        # how far that ratio could move on other frames like these: one held-out track is
        # a few dozen independent seconds, and a ratio near the budget is a draw
        "mae_vs_final_head_ci95": dict(
            zip(("low", "high"), ratio_interval(np.abs(err), full_err, CalibrationTarget.block), strict=True)
        )
        if len(full)
        else None,
        "early_exit_rate": float(np.mean(exits < ap.n_exits - 1)) if len(exits) else 0.0,
        "exit_rate": {str(k): float(np.mean(exits == k)) for k in range(ap.n_exits)},
        "mean_macs": float(np.mean(macs[exits])) if len(exits) else 0.0,
        "offload_rate": float(np.mean([d.hard for d in decisions])),
        "frames": len(frames),
        "version": ap.version,
        "runtime": ap.runtime,
    }


def bench(
    model: Autopilot,
    baseline: Autopilot,
    frames: list[np.ndarray],
    labels: np.ndarray,
    block: int = 50,
    *,
    torch_model: Autopilot | None = None,
) -> dict:
    """Per-frame compute (preprocess + inference at batch 1, one thread) of two or three
    models in one run: alternating blocks of ``block`` frames (model, then the same frames
    through the others), so load from other processes hits all alike, while each model
    runs with its own weights in cache as it would on the car (alternating every frame
    would make each evict the other's weights).

    ``torch_model``: the same car package compressed for the torch runtime
    (``compress --runtime torch``), timed in the same blocks: ONNX Runtime vs torch int8."""
    models = {"model": model, "baseline": baseline}
    if torch_model is not None:
        models["torch_model"] = torch_model
    for ap in models.values():
        ap.warmup()
    times: dict[str, list[float]] = {n: [] for n in models}
    steer: dict[str, list[float]] = {n: [] for n in models}
    exits: dict[str, list[int]] = {n: [] for n in models}
    prep: dict[str, list[float]] = {n: [] for n in models}  # of the time: what preprocessing took
    for i in bar(range(0, len(frames), block), desc="bench", unit="block"):
        chunk = frames[i : i + block]
        for name, ap in models.items():
            for f in chunk:
                t0 = time.perf_counter()
                d = ap.infer(f)
                times[name].append(time.perf_counter() - t0)
                steer[name].append(d.steering)
                exits[name].append(d.exit)
                prep[name].append(d.stage_ms.get("preprocess", 0.0))
    out: dict = {}
    for name, ap in models.items():
        t = np.array(times[name]) * 1e3
        out[f"{name}_ms"] = float(t.mean())
        out[f"{name}_ms_p50"] = float(np.median(t))
        out[f"{name}_preprocess_ms"] = float(np.mean(prep[name]))
        out[f"{name}_mae"] = float(np.abs(np.array(steer[name]) - labels).mean())
        out[f"{name}_runtime"] = ap.runtime
        sp = ap.spec  # the car's net takes the camera's crop as it is, PilotNet 66x200 YUV
        out[f"{name}_input"] = f"{sp.width}x{sp.height} {sp.colour}"
        out[f"{name}_version"] = ap.version
        out[f"{name}_bytes"] = Path(ap.path).stat().st_size if ap.path else None
        ex = np.array(exits[name])
        out[f"{name}_exit_rate"] = {str(k): float(np.mean(ex == k)) for k in range(ap.n_exits)}
        out[f"{name}_mean_macs"] = float(np.mean(np.cumsum(ap.stage_macs)[ex]))
    out["speedup"] = out["baseline_ms"] / out["model_ms"]
    out["speedup_p50"] = out["baseline_ms_p50"] / out["model_ms_p50"]
    out["mae_ratio"] = out["model_mae"] / max(out["baseline_mae"], 1e-9)
    out["exit_rate"] = out["model_exit_rate"]
    out["mean_macs"] = out["model_mean_macs"]
    out["baseline_macs"] = float(sum(baseline.stage_macs))
    if torch_model is not None:
        out["torch_speedup"] = out["baseline_ms"] / out["torch_model_ms"]
        out["onnx_vs_torch_ms"] = out["model_ms"] / out["torch_model_ms"]  # <= 1: ONNX Runtime as fast
        out["onnx_vs_torch_ms_p50"] = out["model_ms_p50"] / out["torch_model_ms_p50"]
        out["torch_mae_ratio"] = out["torch_model_mae"] / max(out["baseline_mae"], 1e-9)
    out["frames"] = len(frames)
    out["preprocess_backend"] = backend()  # numpy on the car's install: docs/model.md
    return out
