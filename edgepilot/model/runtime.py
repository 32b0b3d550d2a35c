"""``Autopilot``: the loaded, verified model that the car loop and the edge node call.

Per frame (``infer``): preprocess, then run stage 0; if its exit's confidence reaches the
calibrated threshold, answer from it and skip the rest; else run stage 1, and so on; the
final head always answers. A frame is *hard* when the confidence of the exit that answered
is below that exit's offload threshold: the car may send it to the edge.

Split mode: ``Decision.features`` holds the output of the last stage that ran;
``continue_from(features, stage)`` runs the remaining stages of the same model on them
(the edge node holds the same package). Features are float32, shape (1, C, H, W) as the
manifest's ``stage_features`` lists.

Inference runs with ``torch.set_num_threads(1)`` by default: at batch 1 these convolutions
are too small for threads to pay, and the car's other parts need the other cores.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, build_net, segment_net, segments_for
from edgepilot.model.package import load_package
from edgepilot.model.preprocess import InputSpec, preprocess, preprocess_u8, quantized_input
from edgepilot.model.quantize import float_stages, freeze, load_int8


@dataclass
class Decision:
    steering: float
    throttle: float
    exit: int  # index of the exit that answered (n_exits - 1 == the final head)
    confidence: float
    hard: bool  # no local exit was sure enough: a candidate for offloading
    stage_ms: dict[str, float] = field(default_factory=dict)  # per stage compute time
    # every split point's output on the way (int8 stages: quantised): split mode sends the
    # one the car's planner chose, which may be an earlier stage than ``exit``
    outputs: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def features(self) -> torch.Tensor | None:
        """The last evaluated stage's output as float32 (split mode). Derived on demand:
        dequantising it on every frame cost the loop work for the few frames offloaded."""
        x = self.outputs.get(self.exit)
        return x.dequantize() if x is not None and x.is_quantized else x


def decode_np(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit outputs (N, bins+1) -> steering, throttle, confidence; numpy with as few calls
    as possible, because at batch 1 every call on a 21-vector costs about as much as the
    arithmetic of an int8 conv: entropy = log Z - sum(p_i * l_i) with p = exp(l) / Z."""
    logits = out[:, :-1]
    logits = logits - logits.max(1, keepdims=True)
    e = np.exp(logits)
    z = e.sum(1)
    bins = logits.shape[1]
    steering = (e @ _centers(bins)) / z
    conf = 1.0 - (np.log(z) - (e * logits).sum(1) / z) / math.log(bins)
    return np.clip(steering, -1.0, 1.0), np.clip(out[:, -1], -1.0, 1.0), conf


_CENTERS: dict[int, np.ndarray] = {}


def _centers(bins: int) -> np.ndarray:
    c = _CENTERS.get(bins)
    if c is None:
        c = _CENTERS[bins] = np.linspace(-1.0, 1.0, bins, dtype=np.float32)
    return c


class Autopilot:
    """A verified model package, ready to answer frames. Build with ``Autopilot.load``."""

    def __init__(
        self,
        manifest: dict,
        stages: list[torch.nn.Module],
        path: Path | None = None,
        segments: list[list[int]] | None = None,
    ) -> None:
        self.manifest = manifest
        self.path = path
        self.version: str = str(manifest.get("version", "?"))
        self.spec = InputSpec.from_dict(manifest.get("input", {}))
        self.stages = stages  # one module per segment (see nets.segments_for)
        self.segments: list[list[int]] = segments or [[k] for k in range(len(stages))]
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
        self.int8 = manifest.get("quant", "fp32") == "int8"
        self._names = [f"stage{g[0]}" if len(g) == 1 else f"stage{g[0]}-{g[-1]}" for g in self.segments]
        # int8 stages pass quint8 features on; their (static) scales, for split mode
        self._feat_qparams: list[tuple[float, int] | None] = []
        with torch.inference_mode():
            x = self._input(np.zeros((120, 160, 3), np.uint8))
            for st in stages:
                x, _ = st(x)
                self._feat_qparams.append((x.q_scale(), x.q_zero_point()) if x.is_quantized else None)

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
        return cls.from_state(pkg.manifest, pkg.state, pkg.path, pkg.scripts)

    @classmethod
    def from_state(
        cls, manifest: dict, state: dict, path: Path | None = None, scripts: list[bytes] | None = None
    ) -> Autopilot:
        """Build from a verified manifest + weights. With ``scripts`` (the package's frozen
        TorchScript stages) nothing is traced: safe while other threads run models."""
        try:
            arch = ArchSpec.from_dict(manifest["arch"])
        except (KeyError, TypeError) as e:
            raise EdgepilotError(f"{path}: manifest lacks a valid 'arch' ({e})") from None
        spec = InputSpec.from_dict(manifest.get("input", {}))
        net = build_net(arch, spec)
        exits = (manifest.get("thresholds") or {}).get("exits")
        segs = manifest.get("segments") or segments_for(exits, len(net.stages))
        if scripts:
            try:
                stages = [torch.jit.load(io.BytesIO(b), map_location="cpu") for b in scripts]
            except Exception as e:  # noqa: BLE001 - any TorchScript load failure is a bad package
                raise EdgepilotError(f"{path}: TorchScript stages do not load ({type(e).__name__})") from None
            return cls(manifest, stages, path, segs)
        if manifest.get("quant", "fp32") == "int8":
            float_logits = bool((manifest.get("quantization") or {}).get("float_logits", False))
            stages = load_int8(segment_net(net, segs), state, spec, float_logits=float_logits)
        else:
            try:
                net.load_state_dict(state)
            except RuntimeError as e:
                raise EdgepilotError(
                    f"{path}: weights do not fit {arch.name}: {str(e).splitlines()[0]}"
                ) from None
            stages = float_stages(segment_net(net, segs))
        return cls(manifest, freeze(stages, spec, int8=manifest.get("quant") == "int8"), path, segs)

    # -- inference ---------------------------------------------------------------------
    def _input(self, frame_bgr: np.ndarray) -> torch.Tensor:
        if self.int8:
            return quantized_input(torch.from_numpy(preprocess_u8(frame_bgr, self.spec)).unsqueeze(0))
        return torch.from_numpy(preprocess(frame_bgr, self.spec)).unsqueeze(0)

    def _inputs(self, frames: list[np.ndarray]) -> torch.Tensor:
        if self.int8:
            return quantized_input(torch.from_numpy(np.stack([preprocess_u8(f, self.spec) for f in frames])))
        return torch.from_numpy(np.stack([preprocess(f, self.spec) for f in frames]))

    def infer(self, frame_bgr: np.ndarray, *, force_final: bool = False) -> Decision:
        """One frame (BGR uint8), batch 1, with early exit unless ``force_final``."""
        t0 = time.perf_counter()
        x = self._input(frame_bgr)
        ms = {"preprocess": (time.perf_counter() - t0) * 1e3}
        return self._run(x, 0, ms, force_final)

    def continue_from(self, features: torch.Tensor, stage: int, *, force_final: bool = True) -> Decision:
        """Split mode: ``features`` came out of stage ``stage`` (a ``Decision.exit`` of this
        model, i.e. a segment end); run the stages after it."""
        ends = [seg[-1] for seg in self.segments]
        if stage not in ends[:-1]:
            raise EdgepilotError(
                f"stage {stage} is not a split point of this model (split points: {ends[:-1]})"
            )
        j = ends.index(stage)
        q = self._feat_qparams[j]
        if q is not None and not features.is_quantized:
            features = torch.quantize_per_tensor(features.float(), q[0], q[1], torch.quint8)
        return self._run(features, j + 1, {}, force_final)

    def _run(self, x: torch.Tensor, first: int, ms: dict[str, float], force_final: bool) -> Decision:
        last = len(self.segments) - 1
        outs: dict[int, torch.Tensor] = {}
        with torch.inference_mode():
            for j in range(first, len(self.segments)):
                seg = self.segments[j]
                k = seg[-1]
                t = time.perf_counter()
                x, out = self.stages[j](x)
                outs[k] = x
                s, th, c = decode_np(out.numpy())
                ms[self._names[j]] = (time.perf_counter() - t) * 1e3
                for i in seg:
                    self.stage_calls[i] += 1
                conf = float(c[0])
                if j == last or (not force_final and conf >= self.exit_thresholds[k]):
                    hard = not conf >= self.offload_thresholds[k]  # a NaN answer is hard
                    return Decision(float(s[0]), float(th[0]), k, conf, hard, ms, outs)
        raise AssertionError("unreachable")

    def infer_batch(self, frames: list[np.ndarray], *, force_final: bool = False) -> list[Decision]:
        """Many frames at once (the edge node): every frame runs stage 0 together, the
        unsure ones go on to stage 1 together, and so on. ``stage_ms`` is the batch's
        time per stage divided by the frames that ran it; ``stage_calls`` counts frames."""
        if not frames:
            return []
        t0 = time.perf_counter()
        x = self._inputs(frames)
        pre = (time.perf_counter() - t0) * 1e3 / len(frames)
        result: list[Decision | None] = [None] * len(frames)
        idx = np.arange(len(frames))
        ms: list[dict[str, float]] = [{"preprocess": pre} for _ in frames]
        last = len(self.segments) - 1
        with torch.inference_mode():
            for j, seg in enumerate(self.segments):
                k = seg[-1]
                t = time.perf_counter()
                x, out = self.stages[j](x)
                s, th, c = decode_np(out.numpy())
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
                        result[i] = Decision(
                            float(s[jj]),
                            float(th[jj]),
                            k,
                            float(c[jj]),
                            hard,
                            ms[i],
                            {k: x[jj : jj + 1].clone()},
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
