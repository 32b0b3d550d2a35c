"""Edge tails for split mode: networks that continue from the car's intermediate features.

Split mode (co-inference by partitioning, as in Neurosurgeon/Edgent): a car whose
model is unsure sends the output of one of its stages (8-bit, zlib; ``wire.pack_features``)
instead of the JPEG. The edge runs a *tail* on it. Continuing with the car's own later
stages is pointless for a hard frame: the car already ran them and they were unsure. So
each tail here is a network larger than the car's remaining stages, trained on the frozen
car stages' outputs *after the 8-bit round trip* (it learns on what it will receive),
against the expert's steering. No raw image leaves the car, and no car stage runs twice.

One tail per split point ``k`` (after stage ``k``); all tails of one car model live in a
``TailSet``, saved as a plain ``torch.save`` of tensors and numbers (loaded with
``weights_only=True``) and bound to the car package's version: features from another
car model have another meaning, and the edge refuses them.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgepilot import EdgepilotError
from edgepilot.model.data import decode, evenly, load_samples, split_by_session
from edgepilot.model.nets import conv
from edgepilot.model.runtime import Autopilot, decode_np
from edgepilot.model.train import exit_loss, soft_targets
from edgepilot.schema import wire

log = logging.getLogger(__name__)


class TailNet(nn.Module):
    """conv-conv-conv on the car's feature map (keeping its resolution where it is small),
    then pool to a grid that keeps left/right, and two linear layers to the exit format
    (``bins`` steering logits + throttle), like every head in ``nets``."""

    def __init__(self, shape: tuple[int, int, int], width: int = 96, bins: int = 21) -> None:
        super().__init__()
        c, h, w = shape
        stride = 2 if min(h, w) >= 8 else 1
        self.body = nn.Sequential(
            conv(c, width, 3, 1), conv(width, width, 3, stride), conv(width, width, 3, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d((min(3, h), min(7, w)))
        self.fc1 = nn.Linear(width * min(3, h) * min(7, w), 128)
        self.fc2 = nn.Linear(128, bins + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.pool(self.body(x)), 1))))


@dataclass
class Tail:
    stage: int
    shape: tuple[int, int, int]
    width: int
    net: TailNet
    val_mae: float | None = None
    macs: int = 0
    # steering MAE on the validation frames the car model marks hard: the frames a car
    # offloads, where a tail reading the car's own features tends to fail with the car
    # (docs/protocol.md, split mode); None: no hard frame among them, or an older tail set
    hard_mae: float | None = None


@dataclass
class TailSet:
    """The tails for one car model version; ``infer`` serves the edge node."""

    car_version: str
    tails: dict[int, Tail] = field(default_factory=dict)
    bins: int = 21

    @property
    def version(self) -> str:
        return f"tail-{self.car_version}"

    def infer(self, stage: int, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 of split point ``stage`` -> steering, throttle, confidence."""
        tail = self.tails.get(stage)
        if tail is None:
            raise EdgepilotError(f"no tail after stage {stage} for car model {self.car_version}")
        if tuple(feats.shape[1:]) != tail.shape:
            raise EdgepilotError(
                f"features of shape {list(feats.shape[1:])}; tail {stage} takes {list(tail.shape)}"
            )
        with torch.inference_mode():
            out = tail.net(torch.from_numpy(np.ascontiguousarray(feats)))
        return decode_np(out.numpy())

    def save(self, path: str | Path) -> Path:
        blob = {
            "car_version": self.car_version,
            "bins": self.bins,
            "tails": {
                str(k): {
                    "stage": t.stage,
                    "shape": list(t.shape),
                    "width": t.width,
                    "val_mae": t.val_mae,
                    "macs": t.macs,
                    "hard_mae": t.hard_mae,
                    "state": t.net.state_dict(),
                }
                for k, t in self.tails.items()
            },
        }
        p = Path(path)
        torch.save(blob, p)
        return p

    @classmethod
    def load(cls, path: str | Path | bytes) -> TailSet:
        """From a file, or from its bytes (an edge node given pushed tails and no directory
        to keep them in)."""
        try:
            src = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
            blob = torch.load(src, weights_only=True)
            ts = cls(str(blob["car_version"]), bins=int(blob["bins"]))
            for key, d in blob["tails"].items():
                shape = tuple(int(n) for n in d["shape"])
                net = TailNet(shape, int(d["width"]), ts.bins)  # type: ignore[arg-type]
                net.load_state_dict(d["state"])
                net.eval()
                ts.tails[int(key)] = Tail(
                    int(d["stage"]),
                    shape,
                    int(d["width"]),
                    net,
                    d.get("val_mae"),
                    int(d.get("macs", 0)),  # type: ignore[arg-type]
                    d.get("hard_mae"),
                )
        except Exception as e:  # noqa: BLE001 - torch.load raises pickle's, zip's, torch's own errors
            name = f"of {len(path)} bytes" if isinstance(path, bytes) else str(path)
            raise EdgepilotError(f"tail set {name}: unreadable ({type(e).__name__}: {e})") from None
        return ts


def split_points(car: Autopilot) -> list[int]:
    """The stages whose output the car can send: the ends of the runtime's segments (an
    exit switched off by calibration merges its stage into the next one)."""
    return [seg[-1] for seg in car.segments]


def stage_outputs(car: Autopilot, frames: list[np.ndarray]) -> dict[int, torch.Tensor]:
    """Every split point's output (float32 tensors, N x C x H x W) of the car's own
    segments on ``frames``, on the package's own runtime (an int8 package's features as
    ``Decision.features`` gives them: dequantised)."""
    return {k: torch.from_numpy(v) for k, v in car.split_outputs(frames).items()}


def car_features(car: Autopilot, frames: list[np.ndarray], batch: int = 128) -> dict[int, np.ndarray]:
    """Every split point's output of the car's own (frozen, possibly int8) stages, after
    the same 8-bit wire round trip the car will apply: {stage: (N, C, H, W) float32}."""
    per_stage: dict[int, list[np.ndarray]] = {k: [] for k in split_points(car)}
    for i in range(0, len(frames), batch):
        for k, x in car.split_outputs(frames[i : i + batch]).items():
            for one in x:
                body, meta = wire.pack_features(one, k, level=0)
                per_stage[k].append(wire.unpack_features(body, meta))
    return {k: np.stack(a) for k, a in per_stage.items()}


def _macs(net: nn.Module, shape: tuple[int, ...]) -> int:
    total = [0]

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            total[0] += out.numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in hs:
        h.remove()
    return total[0]


def train_tails(
    car: Autopilot,
    logs: list[str],
    *,
    stages: list[int] | None = None,
    epochs: int = 6,
    width: int = 96,
    seed: int = 0,
    max_frames: int | None = None,
) -> TailSet:
    """Train one tail per split point on the car's features of ``logs`` (expert labels);
    by-session validation split, best epoch kept, its validation MAE recorded: over every
    validation frame, and over those the car marks hard (``Tail.hard_mae``)."""
    torch.manual_seed(seed)
    loaded = load_samples(logs)
    samples = evenly(loaded.samples, max_frames)
    train, val = split_by_session(samples, 0.2, seed)
    bins = int(car.manifest.get("arch", {}).get("bins", 21))
    ftr = car_features(car, [decode(s.jpeg) for s in train])
    val_frames = [decode(s.jpeg) for s in val]
    fva = car_features(car, val_frames)
    hard = np.array([d.hard for d in car.infer_batch(val_frames)], bool)
    ytr = torch.tensor([[s.steering, s.throttle] for s in train], dtype=torch.float32)
    yva = np.array([s.steering for s in val])
    ts = TailSet(car.version, bins=bins)
    rng = np.random.default_rng(seed)
    for k in stages if stages is not None else split_points(car):
        shape = tuple(ftr[k].shape[1:])
        net = TailNet(shape, width, bins)  # type: ignore[arg-type]
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        xs = torch.from_numpy(ftr[k])
        best: tuple[float, dict, np.ndarray] | None = None  # MAE, weights, per-frame errors
        t0 = time.perf_counter()
        for _ in range(epochs):
            net.train()
            order = rng.permutation(len(xs))
            for i in range(0, len(order), 64):
                idx = torch.from_numpy(order[i : i + 64])
                steer, thr = ytr[idx, 0], ytr[idx, 1]
                loss = exit_loss(net(xs[idx]), soft_targets(steer, bins, 1.0), steer, thr)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.inference_mode():
                s, _, _ = decode_np(net(torch.from_numpy(fva[k])).numpy())
            err = np.abs(s - yva)
            mae = float(err.mean())
            if best is None or mae < best[0]:
                best = (mae, {n: v.clone() for n, v in net.state_dict().items()}, err)
        assert best is not None
        net.load_state_dict(best[1])
        net.eval()
        hard_mae = round(float(best[2][hard].mean()), 5) if hard.any() else None
        ts.tails[k] = Tail(k, shape, width, net, round(best[0], 5), _macs(net, shape), hard_mae)  # type: ignore[arg-type]
        log.info(
            "tail after stage %d %s: val MAE %.4f, on the %d hard frames %s (%.0f s)",
            k, shape, best[0], int(hard.sum()), hard_mae, time.perf_counter() - t0,
        )  # fmt: skip
    return ts

