"""Split-mode tails for a car model the cloud is about to push.

An edge node can answer a car's features (split mode) only with tails trained on exactly
that car model's stages, so the cloud trains them in the same run as the car model, on
the same training logs (``edgepilot.model.tail.train_tails``: the car's frozen, possibly
int8 stages after the 8-bit wire round trip, one tail per split point), and keeps them in
the registry next to the package (``Registry.add_tails``); ``cloud_trainer.push`` pushes
them with the car model. Training them is allowed to fail: the car model is still
pushed (cars then offload JPEG frames, the fallback), and the run's report says why.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def train_for_package(
    package: str | Path,
    logs: list[str],
    out: str | Path,
    *,
    epochs: int,
    width: int,
    max_frames: int | None,
    trusted_keys: list[str] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the tails of ``package`` on ``logs`` into ``out``. Never raises: returns
    ``{"path", "version", "stages": {k: val_mae}, "train_s", ...}`` or ``{"error": why}``."""
    t0 = time.perf_counter()
    try:
        from edgepilot.model.runtime import Autopilot
        from edgepilot.model.tail import train_tails

        car = Autopilot.load(package, trusted_keys)
        ts = train_tails(car, logs, epochs=epochs, width=width, seed=seed, max_frames=max_frames)
        path = ts.save(out)
    except Exception as e:  # noqa: BLE001 - any failure here must leave the car model's push alone
        log.exception("training split-mode tails for %s failed; the car model is pushed without", package)
        return {"error": f"{type(e).__name__}: {e}"[:500], "train_s": round(time.perf_counter() - t0, 2)}
    info = {
        "path": str(path),
        "version": ts.car_version,
        "stages": {str(k): t.val_mae for k, t in sorted(ts.tails.items())},
        "hard_mae": {str(k): t.hard_mae for k, t in sorted(ts.tails.items())},
        "epochs": epochs,
        "width": width,
        "train_s": round(time.perf_counter() - t0, 2),
    }
    log.info("tails for %s: split points %s in %.1f s", ts.car_version, sorted(ts.tails), info["train_s"])
    return info
