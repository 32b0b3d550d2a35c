"""One car's local training step: a few epochs on its own frames, from the global model.

The loss is the model's own (``edgepilot.model.train.joint_loss``: soft steering
targets, every exit weighted, the exits learning from the final head and it from exit 1),
so a federated model learns what ``edgepilot train`` teaches: without the mutual share a
round's fine-tune pulls the heads apart and calibration sends fewer frames out early
(docs/model.md, "Mutual distillation"). FedProx (``mu > 0``) adds ``mu / 2 * ||w - w_global||^2``: it keeps a car whose
frames all come from one track from walking the shared model too far towards that track.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from edgepilot.model.augment import AugmentConfig
from edgepilot.model.data import FrameDataset, Sample, evenly, load_samples
from edgepilot.model.nets import StagedNet
from edgepilot.model.preprocess import InputSpec
from edgepilot.model.train import (
    EXIT_WEIGHTS,
    TrainConfig,
    check_share,
    joint_loss,
    soft_targets,
    stage_weights,
    untrained_exits,
)
from edgepilot.schema.log import TRAINING_LABELS


@dataclass
class LocalConfig:
    """What the server asks of a car for one round (``FitIns.config``)."""

    epochs: int = 2
    batch: int = 32
    lr: float = 1e-3
    mu: float = 0.0  # FedProx proximal strength; 0 is FedAvg
    seed: int = 0
    label_sigma_bins: float = 1.0
    # a server that sends neither (older than these keys) gets edgepilot train's loss
    self_distill: float = TrainConfig.self_distill
    mutual: float = TrainConfig.mutual

    def __post_init__(self) -> None:
        check_share("self_distill", self.self_distill)
        check_share("mutual", self.mutual)

    @classmethod
    def from_config(cls, cfg: dict) -> LocalConfig:
        return cls(
            epochs=max(1, int(cfg.get("epochs", cls.epochs))),
            batch=max(1, int(cfg.get("batch", cls.batch))),
            lr=float(cfg.get("lr", cls.lr)),
            mu=max(0.0, float(cfg.get("mu", cls.mu))),
            seed=int(cfg.get("seed", cls.seed)),
            self_distill=float(cfg.get("self_distill", cls.self_distill)),
            mutual=float(cfg.get("mutual", cls.mutual)),
        )


@dataclass
class LocalResult:
    samples: int
    loss: float
    seconds: float


def tensor_ratios(keys: list[str], n_stages: int, ratio: float, exit_ratio: float) -> tuple[float, ...]:
    """Each tensor's top-k share (``codec.CodecConfig.ratios``): ``exit_ratio`` for the
    heads of the early exits the loss trains, ``ratio`` for every other tensor. At one
    share for all, exit 1's head learnt too little of each round (most of its update
    waited in the residual) and exit 1 fell 6-11% behind the final head, so few frames
    could leave there (docs/benchmarks.md#federated-fine-tuning-issue-17); () when the two
    shares are the same."""
    if exit_ratio == ratio:
        return ()
    off = untrained_exits(stage_weights(EXIT_WEIGHTS, n_stages))
    heads = tuple(f"stages.{k}.head." for k in range(n_stages - 1) if k not in off)
    return tuple(exit_ratio if key.startswith(heads) else ratio for key in keys)


def car_samples(logs: list[str], max_frames: int | None = None) -> list[Sample]:
    """A car's training frames: human or expert labels only (``schema.log.TRAINING_LABELS``),
    evenly subsampled to ``max_frames``."""
    return evenly(load_samples(logs, TRAINING_LABELS).samples, max_frames)


def local_train(
    net: StagedNet, spec: InputSpec, samples: list[Sample], cfg: LocalConfig, rnd: int = 0
) -> LocalResult:
    """Train ``net`` in place (it holds the global weights) on ``samples``."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed + rnd)
    ds = FrameDataset(samples, spec, AugmentConfig(), cfg.seed + 7919 * rnd)
    loader = DataLoader(
        ds,
        batch_size=cfg.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed + rnd),
        drop_last=len(samples) > cfg.batch,
    )
    params = [p for p in net.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if cfg.mu > 0 else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    weights = stage_weights(EXIT_WEIGHTS, len(net.stages))
    total, n = 0.0, 0
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        net.train()
        for x, s, th in loader:
            s, th = s.float(), th.float()
            target = soft_targets(s, net.arch.bins, cfg.label_sigma_bins)
            loss = joint_loss(net(x), target, s, th, weights, cfg.self_distill, net.arch.learned, cfg.mutual)
            if anchor:
                loss = loss + 0.5 * cfg.mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True)
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.item()) * len(x)
            n += len(x)
    net.eval()
    return LocalResult(len(samples), total / max(n, 1), time.perf_counter() - t0)
