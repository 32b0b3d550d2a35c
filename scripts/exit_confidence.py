"""How well does exit 1's confidence rank its own errors? On a model's validation frames.

For models trained by ``scripts/demo_recipe_closed_loop.py train NAME ...`` (work in
var/exp/), recomputes the validation split training used and, per candidate confidence
measure, the largest share of frames exit 1 could answer (most confident first) with the
package's MAE still <= 1.03x the final head's, in sample (no statistical test: an upper
bound on what calibration can accept), next to the oracle that sends the frames where exit
1 beats the final head first::

    python scripts/exit_confidence.py w48s0 w48s1 w48s2

docs/benchmarks.md#model ("What exit 1's confidence ranks") has the figures.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgepilot.model.data import FrameDataset, evenly, load_samples, split_by_session
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import load_package
from edgepilot.model.preprocess import InputSpec

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from demo_recipe_closed_loop import TRACKS, WORK  # noqa: E402

BUDGET = 1.03
MAX_FRAMES = 8000  # the recipe's cap


def share(conf: np.ndarray, e1: np.ndarray, ef: np.ndarray) -> float:
    """The largest most-confident-first share within the budget."""
    gain = np.cumsum((e1 - ef)[np.argsort(-conf)])
    ok = np.nonzero(gain <= (BUDGET - 1) * ef.sum())[0]
    return float((ok.max() + 1) / len(conf)) if len(ok) else 0.0


def outputs(name: str, samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Exit 1's and the final head's steering distributions, the labels, exit 1's
    predicted error (a learned confidence; else None) and exit 0's distribution (when
    exit 0 was trained; else None)."""
    pkg = load_package(WORK / f"{name}-fp32.eppkg")
    spec = InputSpec.from_dict(pkg.manifest["input"])
    net = build_net(ArchSpec.from_dict(pkg.manifest["arch"]), spec)
    net.load_state_dict(pkg.state)
    net.eval()
    _, val = split_by_session(samples, 0.2, int(pkg.manifest["training"]["seed"]))
    bins, learned = net.arch.bins, net.arch.learned
    p0, p1, pf, labels, err = [], [], [], [], []
    with torch.no_grad():
        for x, s, _ in DataLoader(FrameDataset(val, spec, None), batch_size=256):
            outs = net(x)
            p0.append(torch.softmax(outs[0][:, :bins], 1).numpy())
            p1.append(torch.softmax(outs[1][:, :bins], 1).numpy())
            pf.append(torch.softmax(outs[-1][:, :bins], 1).numpy())
            err.append(outs[1][:, -1].numpy())
            labels.append(s.numpy())
    trained0 = ((pkg.manifest.get("training") or {}).get("exit_weights") or [0])[0] > 0
    return (
        np.concatenate(p1),
        np.concatenate(pf),
        np.concatenate(labels),
        np.concatenate(err) if learned else None,
        np.concatenate(p0) if trained0 else None,
    )


def fitted_shares(p1: np.ndarray, e1: np.ndarray, ef: np.ndarray) -> dict[str, list[float]]:
    """A confidence fitted on held-out frames: ridge regressions from exit 1's distribution
    (its 21 bins, steering, |steering|, entropy, maximum, spread) to exit 1's excess error
    over the final head, or to its own error; fitted on one contiguous half of the frames
    and scored on the other (frames are sequential: random halves would share neighbours),
    both ways. What calibration could use if it fitted the score on part of its frames."""
    c = np.linspace(-1.0, 1.0, p1.shape[1])
    s1 = p1 @ c
    ent = -(p1 * np.log(p1 + 1e-12)).sum(1)
    std = np.sqrt(np.maximum(p1 @ c**2 - s1**2, 0.0))
    x = np.column_stack([p1, s1, np.abs(s1), s1**2, ent, p1.max(1), std, np.ones(len(p1))])
    half = len(e1) // 2
    folds = [np.arange(half), np.arange(half, len(e1))]
    out: dict[str, list[float]] = {"entropy": [], "fitted to excess error": [], "fitted to own error": []}
    for a, b in (folds, folds[::-1]):
        for label, target in (("fitted to excess error", e1 - ef), ("fitted to own error", e1)):
            w = np.linalg.solve(x[a].T @ x[a] + 1e-2 * np.eye(x.shape[1]), x[a].T @ target[a])
            out[label].append(share(-(x[b] @ w), e1[b], ef[b]))
        out["entropy"].append(share(-ent[b], e1[b], ef[b]))
    return out


def main(names: list[str]) -> None:
    samples = evenly(load_samples([WORK / "logs" / f"expert-{t}" for t in TRACKS]).samples, MAX_FRAMES)
    for name in names:
        p1, pf, labels, err, p0 = outputs(name, samples)
        centers = np.linspace(-1.0, 1.0, p1.shape[1])
        s1, sf = p1 @ centers, pf @ centers
        e1, ef = np.abs(s1 - labels), np.abs(sf - labels)
        std = np.sqrt(np.maximum(p1 @ centers**2 - s1**2, 0.0))
        measures = {
            "entropy": (p1 * np.log(p1 + 1e-12)).sum(1),
            "max probability": p1.max(1),
            "-std": -std,
            "-|steering|": -np.abs(s1),
            "oracle": ef - e1,
        }
        if err is not None:
            measures = {"learned (predicted error)": -err, **measures}
        if p0 is not None:  # a second opinion: exits 0 and 1 disagreeing
            gap = -np.abs(p0 @ centers - s1)
            rank = np.argsort(np.argsort(gap)) + np.argsort(np.argsort(measures["entropy"]))
            measures = {"-|exit 0 - exit 1|": gap, "entropy and agreement (ranks)": rank, **measures}
        print(f"{name}: frames {len(labels)}, exit 1 MAE / final MAE {e1.mean() / ef.mean():.3f}")
        for label, conf in measures.items():
            corr = "" if label == "oracle" else f", corr(conf, exit-1 error) {np.corrcoef(conf, e1)[0, 1]:+.2f}"
            print(f"  {label:24s} share within {BUDGET}x: {share(conf, e1, ef):.2f}{corr}")
        for label, shares in fitted_shares(p1, e1, ef).items():
            print(f"  2-fold, {label:24s} share within {BUDGET}x on the other half: {shares}")


if __name__ == "__main__":
    main(sys.argv[1:])
