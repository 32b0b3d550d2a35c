"""Per-exit thresholds and the offload threshold, chosen on validation frames.

The stated targets (defaults; stored in the manifest next to the thresholds):

- exit k answers a frame when its confidence >= ``t_k``; ``t_k`` is the *lowest*
  threshold at which, among the validation frames that reach exit k and pass it, at
  least ``agree_share`` (95%) have a steering within ``agree_tol`` (0.02) of the final
  head's. Agreement with the final head, not with the label, because the exit replaces
  the final head: that is the error it adds. Exits are screened in order, each on the
  frames the earlier exits left (BranchyNet's screening). An exit that would take fewer
  than ``min_exit_share`` (2%) of the frames is switched off (``None``): its head would
  cost every frame more than it saves the few (the runtime then merges its stage into the
  next one, ``nets.segments_for``).
- the offload thresholds, one per exit: a frame is hard when the confidence of the exit
  that answered it is below that exit's offload threshold. Each is the lowest threshold at
  which ``ok_share`` (95%) of that exit's frames kept local have a steering error <=
  ``ok_tol`` (0.05) against the label, capped so that at most ``max_offload`` (15%) of that
  exit's validation frames are hard. (Per exit, because confidences of different exits are
  not on one scale, and because with good exits few frames reach the final head at all.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_SUPPORT = 20  # an exit threshold resting on fewer frames than this is not trusted


@dataclass
class CalibrationTarget:
    agree_tol: float = 0.02
    agree_share: float = 0.95
    ok_tol: float = 0.05
    ok_share: float = 0.95
    max_offload: float = 0.15
    min_exit_share: float = 0.02  # an exit taking fewer frames than this is switched off

    def to_dict(self) -> dict:
        return asdict(self)


def lowest_threshold(conf: np.ndarray, good: np.ndarray, share: float) -> float:
    """The lowest t such that frames with conf >= t are ``good`` at least ``share`` of the
    time (and there are at least MIN_SUPPORT of them); inf when no t qualifies."""
    if len(conf) < MIN_SUPPORT:
        return math.inf
    order = np.argsort(-conf, kind="stable")
    c, g = conf[order], good[order].astype(np.float64)
    prec = np.cumsum(g) / np.arange(1, len(g) + 1)
    ok = np.flatnonzero((prec >= share) & (np.arange(1, len(g) + 1) >= MIN_SUPPORT))
    # candidate cut after position i means threshold c[i]; ties: move to the last equal conf
    for i in ok[::-1]:
        if i + 1 == len(c) or c[i + 1] < c[i]:
            return float(c[i])
    return math.inf


def calibrate(
    steer: list[np.ndarray], conf: list[np.ndarray], labels: np.ndarray, target: CalibrationTarget
) -> dict:
    """``steer[k]``, ``conf[k]``: exit k's answers on every validation frame (all stages
    run). Returns the thresholds and what they do on these frames."""
    n_exits = len(steer)
    final_s = steer[-1]
    remaining = np.ones(len(labels), bool)
    exits: list[float] = []
    taken = np.full(len(labels), n_exits - 1)
    for k in range(n_exits - 1):
        idx = np.flatnonzero(remaining)
        good = np.abs(steer[k][idx] - final_s[idx]) <= target.agree_tol
        t = lowest_threshold(conf[k][idx], good, target.agree_share)
        out = idx[conf[k][idx] >= t]
        if len(out) < target.min_exit_share * len(labels):
            t, out = math.inf, idx[:0]  # computing its head for every frame would cost more
        exits.append(t)
        taken[out] = k
        remaining[out] = False
    chosen = np.array([steer[k][i] for i, k in enumerate(taken)]) if len(labels) else np.zeros(0)
    chosen_c = np.array([conf[k][i] for i, k in enumerate(taken)]) if len(labels) else np.zeros(0)
    ok = np.abs(chosen - labels) <= target.ok_tol
    offload: list[float | None] = []
    hard = np.zeros(len(labels), bool)
    for k in range(n_exits):
        sel = np.flatnonzero(taken == k)
        if not len(sel):
            offload.append(None)
            continue
        t_ok = lowest_threshold(chosen_c[sel], ok[sel], target.ok_share)
        t_cap = float(np.quantile(chosen_c[sel], target.max_offload))
        t = min(t_ok, t_cap) if math.isfinite(t_ok) else t_cap
        offload.append(round(float(t), 6))
        hard[sel] = chosen_c[sel] < t
    return {
        "exits": [round(x, 6) if math.isfinite(x) else None for x in exits],  # None: never exits
        "offload": offload,  # per exit: the answering exit's confidence below this -> hard
        "target": target.to_dict(),
        "val_exit_rate": {str(k): float(np.mean(taken == k)) for k in range(n_exits)},
        "val_offload_rate": float(hard.mean()) if len(labels) else 0.0,
        "val_steering_mae_exits": float(np.abs(chosen - labels).mean()) if len(labels) else 0.0,
        "val_steering_mae_final": float(np.abs(final_s - labels).mean()) if len(labels) else 0.0,
    }
