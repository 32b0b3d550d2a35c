"""Data-parallel training under ``torchrun``: DDP over gloo (CPU), same model, same package.

    .venv/bin/torchrun --standalone --nproc_per_node 2 -m cloud_trainer.distributed \\
        LOG... --out car.eppkg --epochs 8

Each worker trains on its shard of the frames (``DistributedSampler``); DDP all-reduces
the gradients every step, so the workers hold identical weights and rank 0 alone
validates, calibrates and writes the signed package — the same manifest, thresholds and
format as ``edgepilot train`` (it reuses that module's loss, calibration and manifest).
With one process (no ``torchrun``) it runs as plain training. The global batch is kept
equal to the single-process batch (per-worker batch = batch / world size), so 1 and N
workers follow the same optimisation and should reach the same quality
(docs/benchmarks.md compares them). On several machines, ``torchrun --nnodes``
with a rendezvous endpoint runs the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from edgepilot.model.data import FrameDataset, evenly, load_samples, split_by_session
from edgepilot.model.nets import StagedNet, build_net
from edgepilot.model.package import load_private_key
from edgepilot.model.preprocess import spec_for
from edgepilot.model.train import (
    TrainConfig,
    arch_of,
    joint_loss,
    save_calibrated,
    soft_targets,
    stage_weights,
)


def train_ddp(
    logs: list[str],
    out: str,
    *,
    arch: str = "early-exit",
    epochs: int = 8,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    max_frames: int | None = None,
    key: str | None = None,
) -> dict | None:
    """Train on every rank; rank 0 returns the result dict (others None). The network and
    its loss are ``edgepilot train``'s defaults (``TrainConfig``: exit heads, self- and
    mutual distillation shares, exit weights)."""
    cfg = TrainConfig(arch=arch, epochs=epochs, batch=batch, lr=lr, seed=seed, max_frames=max_frames)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.time()
    signing_key = load_private_key(key, create=True) if rank == 0 else None
    samples = evenly(load_samples(logs, cfg.labels).samples, max_frames)
    train_s, val_s = split_by_session(samples, cfg.val_fraction, seed)
    spec = spec_for(arch)
    net = build_net(arch_of(cfg), spec)  # same seed -> same initial weights on every rank
    ds = FrameDataset(train_s, spec, cfg.augment, seed)
    _fit(net, ds, world, rank, cfg)
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    path, manifest, cal = save_calibrated(
        net,
        spec,
        val_s,
        out,
        signing_key,
        parent=None,
        metrics={"epochs": epochs, "samples": len(samples)},
        training={
            "logs": [str(p) for p in logs],
            "seed": seed,
            "workers": world,
            "backend": "gloo",
            "self_distill": cfg.self_distill,
            "mutual": cfg.mutual,
        },
        train_samples=train_s,
    )
    return {
        "package": str(path),
        "version": manifest["version"],
        "workers": world,
        "val_steering_mae": cal["val_steering_mae_final"],
        "samples": len(samples),
        "elapsed_s": round(time.time() - t0, 1),
    }


def _fit(net: StagedNet, ds: FrameDataset, world: int, rank: int, cfg: TrainConfig) -> None:
    """The training epochs on this rank's shard; DDP (with ``world`` > 1) all-reduces the
    gradients every step, so every rank ends with the same weights."""
    model = DistributedDataParallel(net) if world > 1 else net
    sampler = (
        DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed) if world > 1 else None
    )
    loader = DataLoader(
        ds,
        batch_size=max(1, cfg.batch // world),
        sampler=sampler,
        shuffle=sampler is None,
        generator=torch.Generator().manual_seed(cfg.seed),
        drop_last=True,
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.epochs, 1))
    weights = stage_weights(cfg.exit_weights, len(net.stages))
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        for x, s, th in loader:
            s, th = s.float(), th.float()
            target = soft_targets(s, net.arch.bins, cfg.label_sigma_bins)
            loss = joint_loss(model(x), target, s, th, weights, cfg.self_distill, net.arch.learned, cfg.mutual)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", default="early-exit", choices=["early-exit", "pilotnet", "edge"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64, help="global batch (split over the workers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--key")
    a = ap.parse_args(argv)
    res = train_ddp(
        a.logs,
        a.out,
        arch=a.arch,
        epochs=a.epochs,
        batch=a.batch,
        seed=a.seed,
        max_frames=a.max_frames,
        key=a.key,
    )
    if res is not None:
        print(json.dumps(res), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(None))
