"""What one training epoch of the car's net costs, and how much of it is the frames.

Trains the demo's car net (``TrainConfig`` defaults, one thread) for one epoch on the
expert logs of a finished demo, capped at ``--max-frames`` (the by-session split then
leaves about two thirds to train), and prints the seconds of the data alone (decode,
augment, preprocess: one pass of the DataLoader) and of the whole epoch. To compare two
versions of the code, run it from each clone's venv, alternating, in one time window (the
machine's speed moves by 20% between runs)::

    for i in 1 2; do for d in /tmp/old /tmp/new; do
      (cd $d && .venv/bin/python /work/main/scripts/epoch_cost.py /tmp/demo13/var/demo/logs)
    done; done

docs/benchmarks.md#demo (ninth round) has the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import edgepilot.model.train as T
from edgepilot.model.data import FrameDataset
from edgepilot.model.nets import build_net
from edgepilot.model.preprocess import spec_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", type=Path, help="a folder of expert-* logs (a demo's var/demo/logs)")
    p.add_argument("--max-frames", type=int, default=3000)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = T.TrainConfig(max_frames=a.max_frames, epochs=1)
    data = T._load_data(sorted(str(x) for x in a.logs.glob("expert-*")), cfg)
    arch = T.arch_of(cfg)
    spec = spec_for(arch.name)
    ds = FrameDataset(data.train, spec, cfg.augment, cfg.seed)
    t0 = time.perf_counter()
    for _ in DataLoader(ds, batch_size=cfg.batch, shuffle=True):
        pass
    t1 = time.perf_counter()
    val = DataLoader(FrameDataset(data.val, spec, None), batch_size=256)
    T._fit(build_net(arch, spec), ds, val, cfg, None)
    t2 = time.perf_counter()
    code = Path(T.__file__).resolve().parents[2]
    print(json.dumps({"code": str(code), "train_frames": len(ds), "data_s": round(t1 - t0, 2), "epoch_s": round(t2 - t1, 2)}))


if __name__ == "__main__":
    main()
