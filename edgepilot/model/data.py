"""Driving logs as a torch Dataset, and the train/validation split *by session*.

Neighbouring frames of one drive are near-duplicates; a split by frame would put the
twin of every validation frame into training and report a fiction. So whole sessions
go to validation. A single session is cut into contiguous blocks of ``block`` frames
instead (with a warning), which keeps most neighbours on one side.

Frames stay in memory as JPEG bytes (~5 kB each; 10 simulated minutes fit in ~60 MB)
and are decoded per item, so augmentation always starts from the recorded pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgepilot import EdgepilotError
from edgepilot.drivelog import LogReader, find_logs
from edgepilot.imaging import decode_jpeg
from edgepilot.model.augment import AugmentConfig, augment
from edgepilot.model.preprocess import DEFAULT_SPEC, InputSpec, preprocess
from edgepilot.schema.log import TRAINING_LABELS, training_label

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sample:
    jpeg: bytes
    steering: float
    throttle: float
    session: str


@dataclass
class Loaded:
    samples: list[Sample]
    sessions: list[str]
    skipped: int
    unlabelled: int = 0  # frames whose label source is not accepted (autopilot, no human)


def load_samples(paths: Iterable[str | Path], labels: tuple[str, ...] = TRAINING_LABELS) -> Loaded:
    """Every labelled frame of the logs (or folders of logs): labels from ``labels`` only
    (``edgepilot.schema.log.training_label``). Damaged records are skipped and counted
    (LogReader warns), unlabelled ones counted with one warning; a log set without a usable
    frame is an error."""
    out = Loaded([], [], 0)
    for p in find_logs(paths):
        r = LogReader(p)
        n0 = len(out.samples)
        for rec in r.records():
            label = training_label(rec, r.meta.source, labels)
            if label is None:
                out.unlabelled += 1
                continue
            data = r.jpeg(rec)
            if data is not None:
                out.samples.append(Sample(data, float(label[0]), float(label[1]), r.meta.session))
        out.skipped += r.skipped
        if len(out.samples) == n0:
            log.warning("%s: no usable frames", p)
        else:
            out.sessions.append(r.meta.session)
    if out.unlabelled:
        log.warning(
            "skipped %d frames without a %s label (autopilot frames nobody labelled)",
            out.unlabelled,
            " or ".join(labels),
        )
    if not out.samples:
        raise EdgepilotError(f"no frames with a {' or '.join(labels)} label in the given logs")
    return out


def evenly(items: list, n: int | None) -> list:
    """At most ``n`` of ``items``, evenly spaced (first and last kept), so a capped run
    still sees every session; all of them when ``n`` is None or 0 or not smaller."""
    if not n or len(items) <= n:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).astype(int)]


def split_by_ids(samples: list[Sample], val_ids: Collection[str]) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the frames of the sessions ``val_ids`` validate, every other one trains."""
    ids = set(val_ids)
    return [s for s in samples if s.session not in ids], [s for s in samples if s.session in ids]


def split_by_session(
    samples: list[Sample],
    val_fraction: float = 0.2,
    seed: int = 0,
    block: int = 200,
    seen: Collection[str] = (),
) -> tuple[list[Sample], list[Sample]]:
    """(train, val): whole sessions to validation until it holds ``val_fraction`` of frames.

    ``seen``: sessions the starting weights already learned from (a warm start); they stay
    in training, because validation frames must be new to the model for calibration's test
    to mean anything."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.session, []).append(s)
    if len(groups) < 2 and not seen:
        log.warning("one session only: validating on contiguous blocks of %d frames instead", block)
        groups = {f"block{i // block}": samples[i : i + block] for i in range(0, len(samples), block)}
    if len(groups) < 2:
        raise EdgepilotError(f"too few frames ({len(samples)}) to hold any out for validation")
    names = sorted(n for n in groups if n not in seen)
    if not names:
        raise EdgepilotError(
            "every session was already learned by the starting weights: a warm start needs a new session to validate on"
        )
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    val: list[Sample] = []
    val_names = set()
    for n in names:
        if len(val) >= val_fraction * len(samples) or len(val_names) == len(groups) - 1:
            break
        val.extend(groups[n])
        val_names.add(n)
    train = [s for n in sorted(groups) if n not in val_names for s in groups[n]]
    return train, val


def decode(jpeg: bytes) -> np.ndarray:
    """A training frame's pixels: the car's own decoder (``edgepilot.imaging``), which gives
    the bytes OpenCV's gave here before (4:2:0, 4:2:2, 4:4:4, progressive and grey JPEGs;
    tests/edgepilot/test_imaging.py)."""
    img = decode_jpeg(jpeg)
    if img is None:
        raise EdgepilotError("a frame is not a decodable JPEG")
    return img


class FrameDataset(Dataset):
    """Items: (input 3xHxW float32, steering, throttle). With ``aug``, every item is a
    fresh draw seeded by (seed, epoch, index): reproducible, yet new each epoch."""

    def __init__(
        self,
        samples: list[Sample],
        spec: InputSpec = DEFAULT_SPEC,
        aug: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.spec = spec
        self.aug = aug
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float, float]:
        s = self.samples[i]
        frame = decode(s.jpeg)
        steering = s.steering
        if self.aug is not None:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            frame, steering = augment(frame, steering, rng, self.aug)
        return torch.from_numpy(preprocess(frame, self.spec)), steering, s.throttle
