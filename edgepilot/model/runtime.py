"""``Autopilot``: the loaded, verified model that the car loop and the edge node call.

Per frame (``infer``): preprocess, then run stage 0; if its exit's confidence reaches the
calibrated threshold, answer from it and skip the rest; else run stage 1, and so on; the
final head always answers. A frame is *hard* when the confidence of the exit that answered
is below that exit's offload threshold: the car may send it to the edge.

Split mode (issue 6): ``Decision.features`` holds the output of the last stage that ran;
``continue_from(features, stage)`` runs the remaining stages of the same model on them
(the edge node holds the same package). Features are float32, shape (1, C, H, W) as the
manifest's ``stage_features`` lists.

Inference runs with ``torch.set_num_threads(1)`` by default: at batch 1 these convolutions
are too small for threads to pay, and the car's other parts need the other cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgepilot import EdgepilotError
from edgepilot.model.compress import float_stages, freeze, load_int8
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import load_package
from edgepilot.model.preprocess import InputSpec, preprocess


@dataclass
class Decision:
    steering: float
    throttle: float
    exit: int  # index of the exit that answered (n_exits - 1 == the final head)
    confidence: float
    hard: bool  # no local exit was sure enough: a candidate for offloading
    stage_ms: dict[str, float] = field(default_factory=dict)  # per stage compute time
    features: torch.Tensor | None = field(default=None, repr=False)  # last evaluated stage output (split)


def decode_np(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit outputs (N, bins+1) -> steering, throttle, confidence; numpy, because at batch 1
    a dozen torch ops on a 21-vector cost more than the int8 stage that produced it."""
    logits = out[:, :-1].astype(np.float64)
    bins = logits.shape[1]
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    centers = np.linspace(-1.0, 1.0, bins)
    steering = p @ centers
    ent = -(p * np.log(np.maximum(p, 1e-12))).sum(1)
    conf = 1.0 - ent / math.log(bins)
    throttle = np.clip(out[:, -1], -1.0, 1.0)
    return np.clip(steering, -1.0, 1.0), throttle, conf


class Autopilot:
    """A verified model package, ready to answer frames. Build with ``Autopilot.load``."""

    def __init__(self, manifest: dict, stages: list[torch.nn.Module], path: Path | None = None) -> None:
        self.manifest = manifest
        self.path = path
        self.version: str = str(manifest.get("version", "?"))
        self.spec = InputSpec.from_dict(manifest.get("input", {}))
        self.stages = stages
        self.n_exits = len(stages)
        th = manifest.get("thresholds") or {}
        ex = list(th.get("exits") or [])
        # an uncalibrated package never exits early: the safe default
        self.exit_thresholds: list[float] = [
            math.inf if x is None else float(x) for x in ex[: self.n_exits - 1]
        ]
        self.exit_thresholds += [math.inf] * (self.n_exits - 1 - len(self.exit_thresholds))
        off = th.get("offload", 0.0)
        off = off if isinstance(off, list) else [off] * self.n_exits  # one number: every exit
        self.offload_thresholds: list[float] = [0.0 if x is None else float(x) for x in off]
        self.offload_thresholds += [0.0] * (self.n_exits - len(self.offload_thresholds))
        self.stage_macs: list[int] = list(manifest.get("stage_macs") or [0] * self.n_exits)
        self.stage_calls: list[int] = [0] * self.n_exits

    @classmethod
    def load(
        cls, path: str | Path, trusted_keys: list[str] | None = None, *, threads: int | None = 1
    ) -> Autopilot:
        """Verify (Ed25519 signature, sha256) and load a package; EdgepilotError if it is bad.

        ``trusted_keys``: ``.pub`` paths or base64 keys; None: ``keys/*.pub``.
        ``threads``: torch's intra-op threads for this process (None leaves it alone)."""
        if threads is not None:
            torch.set_num_threads(threads)
        pkg = load_package(path, trusted_keys)
        return cls.from_state(pkg.manifest, pkg.state, pkg.path)

    @classmethod
    def from_state(cls, manifest: dict, state: dict, path: Path | None = None) -> Autopilot:
        try:
            arch = ArchSpec.from_dict(manifest["arch"])
        except (KeyError, TypeError) as e:
            raise EdgepilotError(f"{path}: manifest lacks a valid 'arch' ({e})") from None
        spec = InputSpec.from_dict(manifest.get("input", {}))
        net = build_net(arch, spec)
        if manifest.get("quant", "fp32") == "int8":
            stages = load_int8(net, state, spec)
        else:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise EdgepilotError(
                    f"{path}: weights do not fit {arch.name}: {str(e).splitlines()[0]}"
                ) from None
            stages = float_stages(net)
        return cls(manifest, freeze(stages, spec), path)

    # -- inference ---------------------------------------------------------------------
    def _input(self, frame_bgr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(preprocess(frame_bgr, self.spec)).unsqueeze(0)

    def infer(self, frame_bgr: np.ndarray, *, force_final: bool = False) -> Decision:
        """One frame (BGR uint8), batch 1, with early exit unless ``force_final``."""
        t0 = time.perf_counter()
        x = self._input(frame_bgr)
        ms = {"preprocess": (time.perf_counter() - t0) * 1e3}
        return self._run(x, 0, ms, force_final)

    def continue_from(self, features: torch.Tensor, stage: int, *, force_final: bool = True) -> Decision:
        """Split mode: ``features`` came out of stage ``stage``; run the stages after it."""
        if not 0 <= stage < self.n_exits - 1:
            raise EdgepilotError(f"no stage after {stage} (the model has {self.n_exits})")
        return self._run(features, stage + 1, {}, force_final)

    def _run(self, x: torch.Tensor, first: int, ms: dict[str, float], force_final: bool) -> Decision:
        last = self.n_exits - 1
        with torch.inference_mode():
            for k in range(first, self.n_exits):
                t = time.perf_counter()
                x, out = self.stages[k](x)
                s, th, c = decode_np(out.numpy())
                ms[f"stage{k}"] = (time.perf_counter() - t) * 1e3
                self.stage_calls[k] += 1
                conf = float(c[0])
                if k == last or (not force_final and conf >= self.exit_thresholds[k]):
                    hard = conf < self.offload_thresholds[k]
                    return Decision(float(s[0]), float(th[0]), k, conf, hard, ms, x)
        raise AssertionError("unreachable")

    def infer_batch(self, frames: list[np.ndarray], *, force_final: bool = False) -> list[Decision]:
        """Many frames at once (the edge node): every frame runs stage 0 together, the
        unsure ones go on to stage 1 together, and so on. ``stage_ms`` is the batch's
        time per stage divided by the frames that ran it; ``stage_calls`` counts frames."""
        if not frames:
            return []
        t0 = time.perf_counter()
        x = torch.from_numpy(np.stack([preprocess(f, self.spec) for f in frames]))
        pre = (time.perf_counter() - t0) * 1e3 / len(frames)
        result: list[Decision | None] = [None] * len(frames)
        idx = np.arange(len(frames))
        ms: list[dict[str, float]] = [{"preprocess": pre} for _ in frames]
        last = self.n_exits - 1
        with torch.inference_mode():
            for k in range(self.n_exits):
                t = time.perf_counter()
                x, out = self.stages[k](x)
                s, th, c = decode_np(out.numpy())
                per = (time.perf_counter() - t) * 1e3 / len(idx)
                self.stage_calls[k] += len(idx)
                done = np.ones(len(idx), bool) if (k == last) else (c >= self.exit_thresholds[k])
                if force_final and k < last:
                    done[:] = False
                for j, i in enumerate(idx):
                    ms[i][f"stage{k}"] = per
                    if done[j]:
                        hard = bool(c[j] < self.offload_thresholds[k])
                        result[i] = Decision(
                            float(s[j]), float(th[j]), k, float(c[j]), hard, ms[i], x[j : j + 1].clone()
                        )
                keep = np.flatnonzero(~done)
                if not len(keep):
                    break
                idx = idx[keep]
                x = x[torch.from_numpy(keep)]
        return [d for d in result if d is not None]

    def warmup(self, n: int = 20) -> None:
        """Run every stage a few times (first calls allocate and pick kernels)."""
        frame = np.zeros((120, 160, 3), np.uint8)
        saved = list(self.stage_calls)
        for _ in range(n):
            self.infer(frame, force_final=True)
        self.stage_calls = saved
