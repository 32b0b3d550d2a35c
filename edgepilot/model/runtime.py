"""``Autopilot``: the loaded, verified model that the car loop and the edge node call.

Per frame (``infer``): preprocess, then run segment 0; if its exit's confidence reaches the
calibrated threshold, answer from it and skip the rest; else run the next segment, and so
on; the final head always answers. A frame is *hard* when the confidence of the exit that
answered is below that exit's offload threshold: the car may send it to the edge.

Split mode: ``Decision.outputs`` holds the output of every segment that ran
(``Decision.features``: the last one, as float32); ``continue_from(features, stage)`` runs
the remaining segments of the same model on them (the edge node holds the same package).
Features have shape (1, C, H, W) as the manifest's ``stage_features`` lists.

Two runtimes behind one interface (``Segments``): ONNX Runtime for ONNX packages (the
car's: ``edgepilot.model.onnx_runtime``, no torch anywhere on its path) and torch for
torch packages (fp32, TorchScript int8: ``edgepilot.model.torch_runtime``, imported only
when such a package is loaded). This module itself does not import torch.

Inference runs on one thread by default: at batch 1 these convolutions are too small for
threads to pay, and the car's other parts need the other cores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from operator import mul
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.model.package import Package, load_weights, runtime_of, torch_module, verify_package
from edgepilot.model.preprocess import InputSpec, preprocess, preprocess_u8


class Segments(Protocol):
    """A package's inference segments on one runtime. ``x`` is the runtime's own batch
    type (a numpy array, or a torch tensor, quantised for torch int8)."""

    runtime: str  # "onnx" | "torch"
    int8: bool

    def inputs(self, batch: np.ndarray) -> Any:
        """Preprocessed frames (N x 3 x H x W; uint8 when ``int8``, else float32) -> x."""

    def run(self, j: int, x: Any) -> tuple[Any, np.ndarray]:
        """Segment ``j`` on ``x``: (its features, the exit's output as float32 numpy)."""

    def features_in(self, j: int, features: Any) -> Any:
        """Split mode: float features (N x C x H x W) of the split point before segment
        ``j`` -> what segment ``j`` takes."""

    def rows(self, x: Any, keep: np.ndarray) -> Any:
        """The rows ``keep`` (indices) of a batch, as a batch of their own."""


@dataclass
class Decision:
    steering: float
    throttle: float
    exit: int  # index of the exit that answered (n_exits - 1 == the final head)
    confidence: float
    hard: bool  # no local exit was sure enough: a candidate for offloading
    stage_ms: dict[str, float] = field(default_factory=dict)  # per segment compute time
    # every split point's output on the way (numpy float32 for ONNX packages; torch tensors,
    # quantised for torch int8): split mode sends the one the car's planner chose, which
    # may be an earlier stage than ``exit``
    outputs: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def features(self) -> Any:
        """The last evaluated segment's output as float32 (split mode). Derived on demand:
        dequantising it on every frame cost the loop work for the few frames offloaded."""
        x = self.outputs.get(self.exit)
        return x.dequantize() if getattr(x, "is_quantized", False) else x


def decode_np(out: np.ndarray, learned: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit outputs (N, bins+1; learned confidence: N, bins+2) -> steering, throttle,
    confidence; numpy with as few calls as possible, because at batch 1 every call on a
    21-vector costs about as much as the arithmetic of an int8 conv: entropy = log Z -
    sum(p_i * l_i) with p = exp(l) / Z. ``learned``: the last output is the exit's own
    predicted steering error, and the confidence is 1 minus it (clipped to [0, 1])."""
    n = out.shape[1] - (2 if learned else 1)
    logits = out[:, :n]
    logits = logits - logits.max(1, keepdims=True)
    e = np.exp(logits)
    z = e.sum(1)
    steering = (e @ _centers(n)) / z
    if learned:
        conf = 1.0 - np.clip(out[:, n + 1], 0.0, 1.0)
    else:
        conf = 1.0 - (np.log(z) - (e * logits).sum(1) / z) / math.log(n)
    return np.clip(steering, -1.0, 1.0), np.clip(out[:, n], -1.0, 1.0), conf


def decode_one(row: np.ndarray, learned: bool = False) -> tuple[float, float, float]:
    """One frame's exit output -> (steering, throttle, confidence), as ``decode_np`` but in
    plain Python floats: at batch 1 its dozen numpy calls on a 21-vector cost ~45 us a
    segment, a tenth of the car's whole network (docs/benchmarks.md#model); this, ~10."""
    v = row.tolist()
    n = len(v) - (2 if learned else 1)
    logits = v[:n]
    top = max(logits)
    if top != top:  # NaN: max() is order-dependent then; the answer is NaN either way
        top = 0.0
    e = [math.exp(x - top) for x in logits]
    z = sum(e)
    steering = sum(map(mul, e, _centers_list(n))) / z
    if learned:
        conf = 1.0 - _clip(v[n + 1], 0.0, 1.0)
    else:
        ent = math.log(z) - (sum(map(mul, e, logits)) - top * z) / z
        conf = 1.0 - ent / math.log(n)
    return _clip(steering, -1.0, 1.0), _clip(v[n], -1.0, 1.0), conf


def _clip(x: float, lo: float, hi: float) -> float:
    return x if x != x else (lo if x < lo else hi if x > hi else x)  # NaN stays NaN


@lru_cache(maxsize=8)
def _centers_list(bins: int) -> list[float]:
    return _centers(bins).tolist()


@lru_cache(maxsize=8)
def _centers(bins: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, bins, dtype=np.float32)


def segment_names(segments: list[list[int]]) -> list[str]:
    """``stage_ms`` keys: ``stage0``, ``stage0-1``, ... per segment."""
    return [f"stage{g[0]}" if len(g) == 1 else f"stage{g[0]}-{g[-1]}" for g in segments]


class Autopilot:
    """A verified model package, ready to answer frames. Build with ``Autopilot.load``."""

    def __init__(
        self,
        manifest: dict,
        segs: Segments,
        path: Path | None = None,
        segments: list[list[int]] | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.version: str = str(manifest.get("version", "?"))
        self.spec = InputSpec.from_dict(manifest.get("input", {}))
        self.learned = (manifest.get("arch") or {}).get("confidence") == "learned"
        self.segs = segs
        self.runtime = segs.runtime
        self.int8 = segs.int8
        n_segs = len(segments) if segments else int(manifest.get("n_segments") or 0)
        self.segments: list[list[int]] = segments or [[k] for k in range(n_segs)]
        self.n_exits = sum(len(s) for s in self.segments)
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
        self._names = segment_names(self.segments)

    @classmethod
    def load(
        cls,
        path: str | Path,
        trusted_keys: list[str] | None = None,
        *,
        threads: int | None = 1,
    ) -> Autopilot:
        """Verify (Ed25519 signature, sha256) and load a package; EdgepilotError if it is bad.

        ``trusted_keys``: ``.pub`` paths or base64 keys; None: ``keys/*.pub``.
        ``threads``: intra-op threads (ONNX Runtime: this session's; torch: the process's;
        None leaves torch's alone and lets ONNX Runtime choose)."""
        pkg = verify_package(path, trusted_keys)
        return cls.from_package(pkg, threads=threads)

    @classmethod
    def from_package(cls, pkg: Package, *, threads: int | None = 1) -> Autopilot:
        """A verified package on the runtime it names."""
        if runtime_of(pkg.manifest) == "onnx":
            from edgepilot.model.onnx_runtime import OnnxSegments

            segments = _segments(pkg.manifest, pkg.path)
            segs = OnnxSegments(pkg.onnx or [], threads=threads, path=pkg.path)
            if len(segments) != segs.count:
                raise EdgepilotError(
                    f"{pkg.path}: {segs.count} ONNX graphs for {len(segments)} segments in the manifest"
                )
            return cls(pkg.manifest, segs, pkg.path, segments)
        try:
            torch_module()
        except EdgepilotError as e:  # a car install without torch: one line that says what to do
            raise EdgepilotError(f"{pkg.path}: a torch package; {e}") from None
        from edgepilot.model.torch_runtime import build_torch, set_threads

        set_threads(threads)
        pkg = load_weights(pkg)
        return build_torch(cls, pkg.manifest, pkg.state, pkg.path, pkg.scripts)

    @classmethod
    def from_state(
        cls, manifest: dict, state: dict, path: Path | None = None, scripts: list[bytes] | None = None
    ) -> Autopilot:
        """A torch package from a verified manifest + weights (see ``torch_runtime``)."""
        from edgepilot.model.torch_runtime import build_torch

        return build_torch(cls, manifest, state, path, scripts)

    # -- inference ---------------------------------------------------------------------
    def _batch(self, frames: list[np.ndarray]) -> Any:
        prep = preprocess_u8 if self.int8 else preprocess
        return self.segs.inputs(np.stack([prep(f, self.spec) for f in frames]))

    def infer(self, frame_bgr: np.ndarray, *, force_final: bool = False) -> Decision:
        """One frame (BGR uint8), batch 1, with early exit unless ``force_final``."""
        t0 = time.perf_counter()
        prep = preprocess_u8 if self.int8 else preprocess
        x = self.segs.inputs(prep(frame_bgr, self.spec)[None])
        ms = {"preprocess": (time.perf_counter() - t0) * 1e3}
        return self._run(x, 0, ms, force_final)

    def continue_from(self, features: Any, stage: int, *, force_final: bool = True) -> Decision:
        """Split mode: ``features`` came out of stage ``stage`` (a ``Decision.exit`` of this
        model, i.e. a segment end); run the segments after it."""
        ends = [seg[-1] for seg in self.segments]
        if stage not in ends[:-1]:
            raise EdgepilotError(
                f"stage {stage} is not a split point of this model (split points: {ends[:-1]})"
            )
        j = ends.index(stage) + 1
        return self._run(self.segs.features_in(j, features), j, {}, force_final)

    def _run(self, x: Any, first: int, ms: dict[str, float], force_final: bool) -> Decision:
        last = len(self.segments) - 1
        outs: dict[int, Any] = {}
        for j in range(first, len(self.segments)):
            seg = self.segments[j]
            k = seg[-1]
            t = time.perf_counter()
            x, out = self.segs.run(j, x)
            outs[k] = x
            s, th, conf = decode_one(out[0], self.learned)
            ms[self._names[j]] = (time.perf_counter() - t) * 1e3
            for i in seg:
                self.stage_calls[i] += 1
            if j == last or (not force_final and conf >= self.exit_thresholds[k]):
                hard = not conf >= self.offload_thresholds[k]  # a NaN answer is hard
                return Decision(s, th, k, conf, hard, ms, outs)
        raise AssertionError("unreachable")

    def infer_batch(self, frames: list[np.ndarray], *, force_final: bool = False) -> list[Decision]:
        """Many frames at once (the edge node): every frame runs segment 0 together, the
        unsure ones go on to segment 1 together, and so on. ``stage_ms`` is the batch's
        time per segment divided by the frames that ran it; ``stage_calls`` counts frames."""
        if not frames:
            return []
        t0 = time.perf_counter()
        x = self._batch(frames)
        pre = (time.perf_counter() - t0) * 1e3 / len(frames)
        result: list[Decision | None] = [None] * len(frames)
        idx = np.arange(len(frames))
        ms: list[dict[str, float]] = [{"preprocess": pre} for _ in frames]
        last = len(self.segments) - 1
        for j, seg in enumerate(self.segments):
            k = seg[-1]
            t = time.perf_counter()
            x, out = self.segs.run(j, x)
            # per row, as ``infer`` decodes: a batch and single frames then decide alike
            s, th, c = (np.array(v) for v in zip(*(decode_one(r, self.learned) for r in out), strict=True))
            per = (time.perf_counter() - t) * 1e3 / len(idx)
            for i in seg:
                self.stage_calls[i] += len(idx)
            done = np.ones(len(idx), bool) if (j == last) else (c >= self.exit_thresholds[k])
            if force_final and j < last:
                done[:] = False
            for jj, i in enumerate(idx):
                ms[i][self._names[j]] = per
                if done[jj]:
                    hard = not c[jj] >= self.offload_thresholds[k]  # NaN: hard
                    one = self.segs.rows(x, np.array([jj]))
                    result[i] = Decision(float(s[jj]), float(th[jj]), k, float(c[jj]), hard, ms[i], {k: one})
            keep = np.flatnonzero(~done)
            if not len(keep):
                break
            idx = idx[keep]
            x = self.segs.rows(x, keep)
        return [d for d in result if d is not None]

    def split_outputs(self, frames: list[np.ndarray]) -> dict[int, np.ndarray]:
        """Every split point's output (float32 numpy, N x C x H x W) on ``frames``, every
        segment run (what the edge's split-mode tails learn from)."""
        x = self._batch(frames)
        outs: dict[int, np.ndarray] = {}
        for j, seg in enumerate(self.segments):
            x, _ = self.segs.run(j, x)
            f = x.dequantize() if getattr(x, "is_quantized", False) else x
            outs[seg[-1]] = np.asarray(f.numpy() if hasattr(f, "numpy") else f, dtype=np.float32)
        return outs

    def warmup(self, n: int = 20) -> None:
        """Run every segment a few times (first calls allocate and pick kernels)."""
        frame = np.zeros((120, 160, 3), np.uint8)
        saved = list(self.stage_calls)
        for _ in range(n):
            self.infer(frame, force_final=True)
        self.stage_calls = saved


def _segments(manifest: dict, path: Path | None) -> list[list[int]]:
    segs = manifest.get("segments")
    if not isinstance(segs, list) or not segs or not all(isinstance(s, list) and s for s in segs):
        raise EdgepilotError(f"{path}: an ONNX package must list its 'segments' in the manifest")
    return [[int(k) for k in s] for s in segs]
