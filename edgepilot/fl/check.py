"""Update validation and aggregation: the server's side of an update, without Flower.

A fleet has cars with broken storage, half-flashed firmware and, some day, someone who
wants to steer the shared model. So every update is checked before it is averaged:

- it decodes against the model's template (``codec.decode``: count, shapes, lengths);
- every value is finite (no NaN, no inf);
- its L2 norm is below ``max_norm``, and, when the round has at least three updates,
  below ``norm_factor`` times the round's median norm (one car cannot outvote the rest
  by sending a 1000x larger step);
- the sample count it claims (its weight in the average) is an integer in
  ``[1, max_samples]``.

An update that fails is refused with its reason, the round goes on with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepilot.fl.codec import UpdateError, decode


@dataclass
class UpdateLimits:
    max_norm: float = 1000.0
    norm_factor: float = 10.0
    max_samples: int = 10_000_000


@dataclass
class Update:
    """One car's update as the server received it."""

    car: str
    payload: bytes
    samples: int
    arrays: list[np.ndarray] | None = None
    mode: str = ""
    norm: float = 0.0
    error: str | None = None


def check_one(u: Update, shapes: list[tuple[int, ...]], limits: UpdateLimits) -> None:
    """Decode and check ``u`` in place (``u.arrays`` or ``u.error``)."""
    try:
        if not isinstance(u.samples, int | np.integer) or not 1 <= int(u.samples) <= limits.max_samples:
            raise UpdateError(f"claims {u.samples!r} samples (allowed 1..{limits.max_samples})")
        mode, arrays = decode(u.payload, shapes)
        bad = [i for i, a in enumerate(arrays) if not np.all(np.isfinite(a))]
        if bad:
            raise UpdateError(f"non-finite values in tensor(s) {bad[:5]}")
        norm = float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays)))
        if not norm <= limits.max_norm:
            raise UpdateError(f"update norm {norm:.4g} exceeds the limit {limits.max_norm:g}")
    except UpdateError as e:
        u.error = str(e)
        return
    u.arrays, u.mode, u.norm = arrays, mode, norm


def screen(updates: list[Update], shapes: list[tuple[int, ...]], limits: UpdateLimits) -> list[Update]:
    """Check every update; returns those accepted (the others carry ``error``)."""
    for u in updates:
        check_one(u, shapes, limits)
    ok = [u for u in updates if u.error is None]
    if len(ok) >= 3:
        med = float(np.median([u.norm for u in ok]))
        for u in ok:
            if med > 0 and u.norm > limits.norm_factor * med:
                u.error = (
                    f"update norm {u.norm:.4g} is over {limits.norm_factor:g}x the round's median {med:.4g}"
                )
                u.arrays = None
        ok = [u for u in ok if u.error is None]
    return ok


def weighted_mean(updates: list[Update]) -> list[np.ndarray]:
    """The sample-weighted mean of accepted updates (FedAvg's aggregate)."""
    total = float(sum(int(u.samples) for u in updates))
    assert updates and all(u.arrays is not None for u in updates), "aggregate accepted updates only"
    out = [np.zeros_like(a) for a in updates[0].arrays]  # type: ignore[index]
    for u in updates:
        w = np.float32(int(u.samples) / total)
        for acc, a in zip(out, u.arrays, strict=True):  # type: ignore[arg-type]
            acc += w * a
    return out
