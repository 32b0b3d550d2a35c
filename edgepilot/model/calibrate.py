"""Exit and offload thresholds, chosen on validation frames, with a stated guarantee.

**Exits: risk control against the label.** The car's error is what matters, so the rule
bounds the steering error the early exits add against the *label*, relative to what the
full network (every frame at the final head) makes on the same frames:

    package MAE <= budget x final head's MAE   (default budget 1.03)

held with confidence ``1 - delta`` (default 95%) over the draw of the validation frames,
for frames like them (exchangeable with the validation sessions). The procedure is
Learn-Then-Test with Pareto testing (Angelopoulos et al. 2021; Laufer-Goldshtein et al.
2023, who calibrate early-exit networks this way):

1. a path of threshold vectors is built greedily from "every exit off" on frames the test
   will not see (the training frames; without them, half A of the validation blocks):
   each step lowers one exit's threshold by one grid step (grid: the confidences at which
   that exit would take 2%, 4%, ..., 96% of those frames: ``MAX_SHARE``), the one that adds
   the least error per frame it moves early;
2. the validation frames are cut into blocks of ``block`` consecutive frames (1 s at
   20 fps: neighbouring frames are nearly the same picture, so single frames are not
   independent samples, blocks nearly are); all of them test (or half B, odd blocks);
3. the points of the path are tested in order (fixed-sequence testing, so no correction
   for their number): point t is accepted when a one-sided t-test on the block
   means of ``z_i = |e_package,i(t)| - budget * |e_final,i|`` rejects "mean z >= 0" at
   level ``delta``. The first point not accepted ends the walk (none accepted: every exit
   off, the safe default). Every accepted point is covered at once, so the one chosen is
   the accepted point that sends the most frames early while every exit that is on takes
   >= 2% of the frames (a head computed for every frame but rarely answering costs more
   than it saves; the runtime merges the stage of an exit that is off into the next one,
   ``nets.segments_for``).

Building the path on frames the test does not see is what keeps the test valid (Pareto
testing); building it on the training frames rather than half the validation frames lets
every validation block test (twice the blocks: a tighter bound, more frames leave early).
The test is asymptotically valid (the t statistic of ~100 block means for a newcomer's
validation split), not exact: a stated assumption, like exchangeability.

**Offload**, one threshold per exit: a frame is hard when the confidence of the exit that
answered it is below that exit's offload threshold. Each is the lowest threshold at which
``ok_share`` (95%) of that exit's frames kept local have a steering error <= ``ok_tol``
(0.05) against the label, capped so that at most ``max_offload`` (15%) of that exit's
validation frames are hard. (Per exit, because confidences of different exits are not on
one scale.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_SUPPORT = 20  # an offload threshold resting on fewer frames than this is not trusted
GRID_STEP = 0.02  # exit thresholds move in steps of 2% of the frames (also the least share)
# the path stops where an exit takes 96% of the frames it is built on: frames less sure than
# the 4% least sure of those always go on to the final head. Confidence that low is rare
# where calibration looked; on unseen tracks it marks the frames where exit 1 falls behind
# (omega: a fifth of its frames, and most of exit 1's excess error; docs/benchmarks.md#model)
MAX_SHARE = 0.96

GUARANTEE = (
    "with probability >= {conf:.0%} over the validation frames, on frames like them the "
    "package's steering MAE against the label is <= {budget:g}x the full network's (every "
    "frame at the final head); Learn-Then-Test, one-sided t-test on {block}-frame blocks"
)


@dataclass
class CalibrationTarget:
    budget: float = 1.03  # package MAE <= budget x the final head's, against the label
    delta: float = 0.05  # the guarantee holds with probability >= 1 - delta
    block: int = 20  # consecutive frames per test unit (1 s of driving)
    ok_tol: float = 0.05
    ok_share: float = 0.95
    max_offload: float = 0.15

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


def answering_exit(conf: list[np.ndarray], thresholds: list[float]) -> np.ndarray:
    """Which exit answers each frame (the runtime's rule: the first exit whose confidence
    reaches its threshold, else the final head)."""
    n_exits = len(conf)
    taken = np.full(len(conf[0]), n_exits - 1)
    open_ = np.ones(len(conf[0]), bool)
    for k, t in enumerate(thresholds):
        hit = open_ & (conf[k] >= t)
        taken[hit] = k
        open_ &= ~hit
    return taken


def t_critical(delta: float, dof: int) -> float:
    """One-sided Student t quantile (Cornish-Fisher expansion around the normal one:
    within 1% of the exact value for dof >= 10)."""
    z = _normal_quantile(1.0 - delta)
    v = max(dof, 1)
    return z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v * v)


def _normal_quantile(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(100):  # bisection on the normal CDF: exact enough, no scipy
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def block_means(z: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """The mean of ``z`` over each block's frames, one per block id present."""
    _, inv = np.unique(blocks, return_inverse=True)
    return np.bincount(inv, weights=z) / np.bincount(inv)


def ratio_interval(
    num: np.ndarray, den: np.ndarray, block: int, level: float = 0.95, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A block-bootstrap ``level`` interval of ``sum(num) / sum(den)`` over frames in
    order: blocks of ``block`` consecutive frames are redrawn with replacement, because
    neighbouring frames are nearly the same picture (the test's unit, above)."""
    ids = np.arange(len(num)) // max(block, 1)
    n_num, n_den = np.bincount(ids, weights=num), np.bincount(ids, weights=den)
    pick = np.random.default_rng(seed).integers(0, len(n_num), (draws, len(n_num)))
    ratios = n_num[pick].sum(1) / np.maximum(n_den[pick].sum(1), 1e-12)
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def block_ucb(z: np.ndarray, blocks: np.ndarray, delta: float) -> tuple[float, int]:
    """One-sided (1 - delta) upper confidence bound of the mean of ``z`` per frame, from
    its block means (t statistic), and the number of blocks."""
    means = block_means(z, blocks)
    n = len(means)
    if n < 2:
        return math.inf, n
    sd = float(means.std(ddof=1))
    return float(means.mean()) + t_critical(delta, n - 1) * sd / math.sqrt(n), n


def pareto_path(
    steer: list[np.ndarray], conf: list[np.ndarray], labels: np.ndarray, off: tuple[int, ...] = ()
) -> list[list[float]]:
    """Threshold vectors from "every exit off" down to "every exit takes MAX_SHARE of the
    frames", each one exit one grid step lower than the last, greedily by least added error
    per frame moved early (on the frames given). Exits in ``off`` stay off."""
    n_early = len(steer) - 1
    err = [np.abs(s - labels) for s in steer]
    shares = np.arange(GRID_STEP, MAX_SHARE + 1e-9, GRID_STEP)
    grids = [np.quantile(conf[k], 1.0 - shares, method="higher") for k in range(n_early)]
    pos = [len(shares) - 1 if k in off else -1 for k in range(n_early)]
    cur = [math.inf] * n_early

    def cost(th: list[float]) -> tuple[float, int]:
        taken = answering_exit(conf, th)
        e = np.choose(taken, err)
        return float(e.sum()), int((taken < n_early).sum())

    base = cost(cur)
    path: list[list[float]] = []
    while any(p < len(shares) - 1 for p in pos):
        best: tuple[float, int, list[float], tuple[float, int]] | None = None
        for k in range(n_early):
            if pos[k] >= len(shares) - 1:
                continue
            th = list(cur)
            th[k] = float(grids[k][pos[k] + 1])
            c = cost(th)
            moved = c[1] - base[1]
            rate = (c[0] - base[0]) / moved if moved > 0 else -math.inf
            if best is None or rate < best[0]:
                best = (rate, k, th, c)
        assert best is not None
        _, k, cur, base = best
        pos[k] += 1
        path.append(list(cur))
    return path


def choose_exits(
    steer: list[np.ndarray],
    conf: list[np.ndarray],
    labels: np.ndarray,
    target: CalibrationTarget,
    path_frames: tuple[list[np.ndarray], list[np.ndarray], np.ndarray] | None = None,
    off: tuple[int, ...] = (),
) -> tuple[list[float], dict]:
    """Exit thresholds by Learn-Then-Test (module docstring); and what the test saw.
    ``path_frames``: (steer, conf, labels) of other frames (training frames) to build the
    path on; then every validation frame tests it. None: validation half A builds it.
    ``off``: exits that never answer (not trained: ``train.untrained_exits``)."""
    n_early = len(steer) - 1
    none_on = [math.inf] * n_early
    # a validation split too small for 40 blocks (tiny logs) is tested in shorter blocks,
    # down to single frames, rather than not at all; the manifest says which
    block = int(np.clip(len(labels) // 40, 1, max(target.block, 1)))
    blocks = np.arange(len(labels)) // block
    if path_frames is None:
        test = blocks % 2 == 1
        path = pareto_path([s[~test] for s in steer], [c[~test] for c in conf], labels[~test], off)
    else:
        test = np.ones(len(labels), bool)
        path = pareto_path(*path_frames, off)
    info: dict = {
        "path_from": "validation half A" if path_frames is None else "training frames",
        "off": list(off),
        "test_frames": int(test.sum()),
        "block": block,
        "tested": 0,
        "ucb_excess": None,
    }
    if n_early == 0 or not test.any() or not path:
        return none_on, info
    err = [np.abs(s[test] - labels[test]) for s in steer]
    chosen, best_share = none_on, 0.0
    for th in path:
        taken = answering_exit([c[test] for c in conf], th)
        z = np.choose(taken, err) - target.budget * err[-1]
        ucb, n_blocks = block_ucb(z, blocks[test], target.delta)
        info["test_blocks"] = n_blocks
        if not ucb < 0:
            break
        info["tested"] += 1
        # every accepted point is covered by the guarantee at once (fixed-sequence testing
        # controls the family-wise error), so any may be chosen: the one that sends the
        # most frames early among those where every exit that is on takes >= 2% of them
        rates = np.bincount(answering_exit(conf, th), minlength=n_early + 1)[:n_early] / len(labels)
        share = float(rates.sum())
        admissible = all(r >= GRID_STEP - 1e-9 or not math.isfinite(t) for r, t in zip(rates, th, strict=True))
        if admissible and share > best_share:
            chosen, best_share = th, share
            info["ucb_excess"] = ucb / max(float(err[-1].mean()), 1e-12)  # in units of the final MAE
    return [t if math.isfinite(t) else math.inf for t in chosen], info


def calibrate(
    steer: list[np.ndarray],
    conf: list[np.ndarray],
    labels: np.ndarray,
    target: CalibrationTarget,
    path_frames: tuple[list[np.ndarray], list[np.ndarray], np.ndarray] | None = None,
    off: tuple[int, ...] = (),
) -> dict:
    """``steer[k]``, ``conf[k]``: exit k's answers on every validation frame (all stages
    run), in recorded order; ``path_frames``: the same of training frames, to build the
    path on; ``off``: exits kept off (``choose_exits``). Returns the thresholds and what
    they do on these frames."""
    n_exits = len(steer)
    if not len(labels):
        return _result([None] * (n_exits - 1), [None] * n_exits, target, {}, np.zeros(0), steer, labels)
    exits, info = choose_exits(steer, conf, labels, target, path_frames, off)
    taken = answering_exit(conf, exits)
    idx = np.arange(len(labels))
    chosen, chosen_c = np.stack(steer)[taken, idx], np.stack(conf)[taken, idx]
    ok = np.abs(chosen - labels) <= target.ok_tol
    offload: list[float | None] = []
    hard = np.zeros(len(labels), bool)
    for k in range(n_exits):
        sel = np.flatnonzero(taken == k)
        if not len(sel):
            offload.append(None)
            continue
        t_ok = lowest_threshold(chosen_c[sel], ok[sel], target.ok_share)
        # the k-th lowest confidence: at most k frames lie below it (an interpolated
        # quantile let one frame more than max_offload through on a small split)
        ranked = np.sort(chosen_c[sel])
        t_cap = float(ranked[min(math.floor(target.max_offload * len(ranked)), len(ranked) - 1)])
        t = min(t_ok, t_cap) if math.isfinite(t_ok) else t_cap
        offload.append(round(float(t), 6))
        hard[sel] = chosen_c[sel] < t
    ex = [round(x, 6) if math.isfinite(x) else None for x in exits]
    out = _result(ex, offload, target, info, taken, steer, labels)
    out["val_offload_rate"] = float(hard.mean())
    out["val_steering_mae_exits"] = float(np.abs(chosen - labels).mean())
    return out


def _result(
    exits: list, offload: list, target: CalibrationTarget, info: dict, taken: np.ndarray, steer: list, labels
) -> dict:
    n_exits = len(steer)
    final = float(np.abs(steer[-1] - labels).mean()) if len(labels) else 0.0
    return {
        "exits": exits,  # None: never exits
        "offload": offload,  # per exit: the answering exit's confidence below this -> hard
        "rule": "learn-then-test",
        "guarantee": GUARANTEE.format(conf=1 - target.delta, budget=target.budget, block=target.block),
        "target": target.to_dict(),
        "test": info,
        "val_exit_rate": {str(k): float(np.mean(taken == k)) if len(taken) else 0.0 for k in range(n_exits)},
        "val_offload_rate": 0.0,
        "val_steering_mae_exits": final,
        "val_steering_mae_final": final,
    }
