"""The edge node's model: a trained package, or a built-in network for transport tests.

The edge serves anything with ``infer_batch(frames_bgr) -> [decision]`` (each decision
has ``steering``, ``throttle``, ``confidence``) and a ``version``: the model runtime's
``Autopilot`` for a real package (``edgepilot.model.runtime``).

``builtin:pilotnet`` is a real PilotNet-shaped CNN (NVIDIA's five convs + MLP on a
66x200 YUV crop) with seeded, *untrained* weights. Its answers mean nothing for driving;
it exists so that the transport, batching, deadlines and fault handling can be tested
and benchmarked with real inference cost before (or without) a trained edge package.
Its version says so: ``builtin-pilotnet-untrained-s<seed>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgepilot import EdgepilotError
from edgepilot.imaging import bgr_to_yuv, resize_area

BUILTIN_PREFIX = "builtin:"


@dataclass(slots=True)
class EdgeDecision:
    steering: float
    throttle: float
    confidence: float


class BuiltinPilotNet:
    """PilotNet (Bojarski et al. 2016) with seeded random weights; batch inference on CPU."""

    H, W = 66, 200

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 24, 5, 2),
            nn.ReLU(),
            nn.Conv2d(24, 36, 5, 2),
            nn.ReLU(),
            nn.Conv2d(36, 48, 5, 2),
            nn.ReLU(),
            nn.Conv2d(48, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 1 * 18, 100),
            nn.ReLU(),
            nn.Linear(100, 50),
            nn.ReLU(),
            nn.Linear(50, 10),
            nn.ReLU(),
            nn.Linear(10, 3),  # steering, throttle, confidence logit
        )
        with torch.no_grad():
            for p in self.net.parameters():
                if p.ndim == 1:
                    p.zero_()
                else:  # He init on the fan-in, so activations neither vanish nor saturate
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        self.net.eval()
        self.version = f"builtin-pilotnet-untrained-s{seed}"

    def _prep(self, frame: np.ndarray) -> np.ndarray:
        h = frame.shape[0]
        img = bgr_to_yuv(resize_area(frame[int(h * 0.4) :], self.W, self.H))
        return img.astype(np.float32).transpose(2, 0, 1) * (1.0 / 127.5) - 1.0

    def infer_batch(self, frames: list[np.ndarray]) -> list[EdgeDecision]:
        if not frames:
            return []
        x = torch.from_numpy(np.stack([self._prep(f) for f in frames]))
        with torch.inference_mode():
            out = self.net(x)
        s = torch.tanh(out[:, 0]).tolist()
        t = torch.tanh(out[:, 1]).tolist()
        c = torch.sigmoid(out[:, 2]).tolist()
        return [EdgeDecision(a, b, cc) for a, b, cc in zip(s, t, c, strict=True)]

    def infer(self, frame: np.ndarray) -> EdgeDecision:
        return self.infer_batch([frame])[0]

    def warmup(self) -> None:
        self.infer_batch([np.zeros((120, 160, 3), np.uint8)] * 2)


def load_edge_model(spec: str | Path, trusted_keys: list[str] | None = None) -> Any:
    """``builtin:pilotnet[:SEED]`` or a model package path (verified by the model runtime)."""
    spec = str(spec)
    if spec.startswith(BUILTIN_PREFIX):
        name, _, seed = spec[len(BUILTIN_PREFIX) :].partition(":")
        if name != "pilotnet":
            raise EdgepilotError(f"unknown built-in model {spec!r}; try builtin:pilotnet")
        try:
            model = BuiltinPilotNet(int(seed or 0))
        except ValueError:
            raise EdgepilotError(f"built-in model seed must be an integer: {spec!r}") from None
    else:
        if not Path(spec).exists():
            raise EdgepilotError(f"edge model {spec}: no such package")
        try:
            from edgepilot.model.runtime import Autopilot
        except ImportError:
            raise EdgepilotError(
                "the model runtime (edgepilot.model.runtime) is not built yet; "
                "use --model builtin:pilotnet for transport tests"
            ) from None
        model = Autopilot.load(spec, trusted_keys=trusted_keys)
    model.warmup()
    return model


def model_mae(model: Any) -> float | None:
    """The model's held-out steering MAE (its package's ``metrics.val_steering_mae``), put
    in the node's health so that a car weighs frame mode's accuracy against its split
    tails' (``edgepilot.offload.healthplan``); None for a model without one (the builtin)."""
    metrics = (getattr(model, "manifest", None) or {}).get("metrics") or {}
    v = metrics.get("val_steering_mae")
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None
