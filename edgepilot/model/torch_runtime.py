"""The torch runtime of ``Autopilot``: fp32 packages and torch int8 (TorchScript) packages.

Training, the edge node and the cloud run torch packages; the car runs ONNX packages
(``onnx_runtime``) and never imports this module. int8 segments take and hand on quint8
tensors (no dequantise/quantise at a boundary); their static boundary scales are kept so
that split mode can re-quantise float features that came over the wire.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, build_net, segment_net, segments_for
from edgepilot.model.preprocess import InputSpec, quantized_input
from edgepilot.model.quantize import float_stages, freeze, load_int8


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for this process (None leaves them alone)."""
    if threads is not None:
        torch.set_num_threads(threads)


class TorchSegments:
    """One torch module per segment; ``run`` returns (features, exit output as numpy)."""

    runtime = "torch"

    def __init__(self, stages: list[torch.nn.Module], *, int8: bool, spec: InputSpec | None = None) -> None:
        self.stages = stages
        self.int8 = int8
        spec = spec or InputSpec()
        # int8 segments pass quint8 features on; their (static) scales, for split mode
        self._feat_qparams: list[tuple[float, int] | None] = []
        with torch.inference_mode():
            dtype = np.uint8 if int8 else np.float32
            x = self.inputs(np.zeros((1, 3, spec.height, spec.width), dtype))
            for st in stages:
                x, _ = st(x)
                self._feat_qparams.append((x.q_scale(), x.q_zero_point()) if x.is_quantized else None)

    def inputs(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch))
        return quantized_input(x) if self.int8 else x

    def run(self, j: int, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        with torch.inference_mode():
            f, out = self.stages[j](x)
        return f, out.numpy()

    def features_in(self, j: int, features: Any) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
        q = self._feat_qparams[j - 1]
        if q is not None and not x.is_quantized:
            x = torch.quantize_per_tensor(x.float(), q[0], q[1], torch.quint8)
        return x

    def rows(self, x: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
        return x[torch.from_numpy(keep)]  # advanced indexing copies: rows outlive the batch


def build_torch(
    cls: Any, manifest: dict, state: dict, path: Path | None = None, scripts: list[bytes] | None = None
) -> Any:
    """An ``Autopilot`` (``cls``) of a torch package from its verified manifest + weights.
    With ``scripts`` (the package's frozen TorchScript segments) nothing is traced: safe
    while other threads run models."""
    try:
        arch = ArchSpec.from_dict(manifest["arch"])
    except (KeyError, TypeError) as e:
        raise EdgepilotError(f"{path}: manifest lacks a valid 'arch' ({e})") from None
    spec = InputSpec.from_dict(manifest.get("input", {}))
    net = build_net(arch, spec)
    exits = (manifest.get("thresholds") or {}).get("exits")
    segs = manifest.get("segments") or segments_for(exits, len(net.stages))
    int8 = manifest.get("quant", "fp32") == "int8"
    if scripts:
        try:
            stages = [torch.jit.load(io.BytesIO(b), map_location="cpu") for b in scripts]
        except Exception as e:  # noqa: BLE001 - any TorchScript load failure is a bad package
            raise EdgepilotError(f"{path}: TorchScript stages do not load ({type(e).__name__})") from None
        return cls(manifest, TorchSegments(stages, int8=int8, spec=spec), path, segs)
    if int8:
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
    return cls(manifest, TorchSegments(freeze(stages, spec, int8=int8), int8=int8, spec=spec), path, segs)
