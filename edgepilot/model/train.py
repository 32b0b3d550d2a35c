"""Training: joint loss over every exit, early stopping on a by-session validation split,
optional distillation from a teacher, threshold calibration, a signed package and a
training-curve PNG next to it.

Loss of one exit: cross-entropy against a *soft* steering target (a Gaussian of one bin
width around the label, so neighbouring bins are nearly right: steering is ordinal), plus
the L1 error of the expected steering (what is actually driven, and what MAE measures),
plus the throttle's squared error. The joint loss weights the exits by ``EXIT_WEIGHTS``: exit 1
four times the final head, so the shared stages 0-1 serve exit 1 first and it answers nearly as
well as the full network (what lets calibration send most frames out early); exit 0 not at
all: it never earned its place (docs/benchmarks.md#model), so it is not trained and
calibration keeps it off (``untrained_exits``), and the runtime merges its stage away.

Self-distillation (``self_distill``, on by default): each early exit's target distribution
is ``(1 - beta) * soft label + beta * the final head's distribution`` (detached, so the
final head learns from the labels only), the throttle likewise. An exit then learns to
answer like the network it stands in for on the frames where it can, and its confidence
drops where it cannot: what calibration needs to let it answer often within the error
budget (docs/benchmarks.md#model has the runs that chose this).

Mutual distillation (``mutual``, gamma 0.5): the final head's target is likewise ``(1 -
gamma) * soft label + gamma * exit 1's distribution`` (detached). Without it the two heads
drift apart on unseen frames (in demo warm runs their disagreement grew to ~0.5x the final
head's MAE), and calibration's test, which pays for every block where they differ, then
certified as little as 4% of frames early; learning from each other kept them within ~0.3x
(docs/benchmarks.md#demo, tenth round). In cold runs it also regularises the final head:
on eight unseen tracks the newcomer's package MAE fell by 12% on the mean of four seeds
(docs/benchmarks.md#model, eleventh round).

Distillation (``teacher``): the target distribution becomes ``(1 - alpha) * soft label +
alpha * teacher's distribution`` and the throttle target mixes likewise. The teacher sees
the same augmented batch, so it also teaches on shifted, flipped and shadowed frames (made
into its own input when it takes another one: ``preprocess.adapt_input``).

Determinism: torch, numpy and every augmentation draw are seeded, the loader runs in the
main process, so one seed gives the same weights on the same machine and thread count.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch.utils.data import DataLoader

from edgepilot import EdgepilotError, __version__
from edgepilot.model.augment import AugmentConfig
from edgepilot.model.calibrate import CalibrationTarget, calibrate
from edgepilot.model.data import (
    FrameDataset,
    Loaded,
    Sample,
    evenly,
    load_samples,
    split_by_ids,
    split_by_session,
)
from edgepilot.model.nets import ArchSpec, StagedNet, build_net, decode, split_out, stage_macs
from edgepilot.model.package import load_package, load_private_key, save_package, verify_package
from edgepilot.model.preprocess import InputSpec, adapt_input, check_adaptable, spec_for
from edgepilot.progress import bar
from edgepilot.schema.log import TRAINING_LABELS

log = logging.getLogger(__name__)

EXIT_WEIGHTS = (0.0, 4.0, 1.0)


def stage_weights(weights: list[float] | tuple[float, ...], n_stages: int) -> list[float]:
    """The loss weight of each exit of a net of ``n_stages`` (a single-exit net: [1.0])."""
    return list(weights[:n_stages]) if n_stages > 1 else [1.0]


def untrained_exits(weights: list[float] | tuple[float, ...]) -> tuple[int, ...]:
    """Early exits whose loss weight is zero: their heads learned nothing, so they never answer."""
    return tuple(k for k, w in enumerate(weights[:-1]) if w == 0)


@dataclass
class TrainConfig:
    arch: str = "early-exit"
    widths: list[int] = field(default_factory=list)  # empty: the architecture's defaults
    head0: list[int] = field(default_factory=list)  # early-exit: exit 0's head (nets.ArchSpec)
    # early-exit: exit 1's head, finer than the first design's [2, 6, 32] (docs/benchmarks.md#model)
    head1: list[int] = field(default_factory=lambda: [3, 7, 64])
    epochs: int = 20
    patience: int = 4
    # run every epoch and keep the last (no early stop, no pick of the best epoch). None:
    # yes for a net with early exits, whose calibration tests its thresholds on the
    # validation frames: weights picked by those frames would weaken that test, and the
    # cosine schedule ends where it should stop anyway; no for single-exit nets
    keep_last: bool | None = None
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.2
    threads: int = 1  # shared cores: OpenMP threads that spin-wait under load cost more than they give
    label_sigma_bins: float = 1.0
    distill_alpha: float = 0.5
    self_distill: float = 0.5  # beta: early exits learn this share from the final head
    mutual: float = 0.5  # gamma: the final head learns this share from exit 1 (module docstring)
    # early-exit: "entropy" of each exit's distribution, or "learned" (nets.ArchSpec)
    confidence: str = "entropy"
    exit_weights: list[float] = field(default_factory=lambda: list(EXIT_WEIGHTS))
    max_frames: int | None = None  # cap on training frames (evenly subsampled) for quick runs and tests
    labels: tuple[str, ...] = TRAINING_LABELS  # label sources to learn from (schema.log)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    target: CalibrationTarget = field(default_factory=CalibrationTarget)

    def __post_init__(self) -> None:
        for name in ("self_distill", "mutual", "distill_alpha"):
            check_share(name, getattr(self, name))


def check_share(name: str, value: float) -> float:
    """``value``, refused with a clear error unless it is a share in [0, 1] (NaN is not)."""
    if not 0.0 <= value <= 1.0:
        raise EdgepilotError(f"{name} is a share in [0, 1], got {value!r}")
    return value


def soft_targets(steering: torch.Tensor, bins: int, sigma_bins: float) -> torch.Tensor:
    centers = torch.linspace(-1.0, 1.0, bins)
    width = 2.0 / (bins - 1)
    d = (steering[:, None] - centers[None]) / (sigma_bins * width)
    p = torch.exp(-0.5 * d * d)
    return p / p.sum(1, keepdim=True)


def exit_loss(
    out: torch.Tensor,
    target_p: torch.Tensor,
    steer: torch.Tensor,
    thr: torch.Tensor,
    label: torch.Tensor | None = None,
    learned: bool = False,
) -> torch.Tensor:
    """One exit's loss. ``learned``: its last output also learns to predict the exit's own
    steering error against ``label`` (default ``steer``), what calibration bounds."""
    logits, throttle, err = split_out(out, learned)
    ce = -(target_p * F.log_softmax(logits, 1)).sum(1).mean()
    centers = torch.linspace(-1.0, 1.0, logits.shape[1])
    expected = (torch.softmax(logits, 1) * centers).sum(1)
    loss = ce + 2.0 * F.l1_loss(expected, steer) + F.mse_loss(throttle, thr)
    if err is not None:
        truth = (expected.detach() - (steer if label is None else label)).abs()
        loss = loss + F.l1_loss(err, truth)
    return loss


def joint_loss(
    outs: list[torch.Tensor],
    target: torch.Tensor,
    steer: torch.Tensor,
    thr: torch.Tensor,
    weights: list[float],
    beta: float,
    learned: bool = False,
    gamma: float = 0.0,
) -> torch.Tensor:
    """Weighted sum of every exit's loss; early exits also learn from the final head: its
    distribution, its expected steering (the L1 term) and its throttle, by share ``beta``;
    the final head from exit 1 by share ``gamma`` (a learned confidence still predicts the
    error against the label)."""
    label = (target, steer, thr)
    last_early = outs[-2] if len(outs) > 1 else None
    loss = weights[-1] * exit_loss(outs[-1], *_mixed(label, last_early, gamma, learned), steer, learned)
    early = _mixed(label, outs[-1], beta, learned)
    for w, o in zip(weights[:-1], outs[:-1], strict=False):
        loss = loss + w * exit_loss(o, *early, steer, learned)
    return loss


def _mixed(
    label: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    teacher: torch.Tensor | None,
    share: float,
    learned: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (distribution, steering, throttle) targets: the label's, mixed with another
    head's detached output by ``share``."""
    if not share or teacher is None:
        return label
    logits, t_thr, _ = split_out(teacher.detach(), learned)
    p = torch.softmax(logits, 1)
    t_steer = (p * torch.linspace(-1.0, 1.0, p.shape[1])).sum(1)
    target, steer, thr = label
    return (1 - share) * target + share * p, (1 - share) * steer + share * t_steer, (1 - share) * thr + share * t_thr


PATH_FRAMES = 3000


def path_frames(
    net: StagedNet, samples: list, spec: InputSpec
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray] | None:
    """Every exit's answers on (up to PATH_FRAMES, evenly spaced, unaugmented) training
    frames: calibration builds its threshold path on them, so that every validation frame
    is left to test it (calibrate.choose_exits)."""
    if len(net.stages) < 2 or not samples:
        return None
    pick = samples[:: max(1, len(samples) // PATH_FRAMES)]
    return predict_exits(net, DataLoader(FrameDataset(pick, spec, None), batch_size=256))


@torch.no_grad()
def predict_exits(
    net: StagedNet, loader: DataLoader
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Every exit's steering and confidence on every frame, and the labels."""
    net.eval()
    steer: list[list[np.ndarray]] = [[] for _ in net.stages]
    conf: list[list[np.ndarray]] = [[] for _ in net.stages]
    labels = []
    for x, s, _ in loader:
        for k, o in enumerate(net(x)):
            st, _, c = decode(o, net.arch.learned)
            steer[k].append(st.numpy())
            conf[k].append(c.numpy())
        labels.append(s.numpy())
    return [np.concatenate(a) for a in steer], [np.concatenate(a) for a in conf], np.concatenate(labels)


def load_teacher(path: str | Path, bins: int, trusted: list[str] | None = None) -> StagedNet:
    pkg = load_package(path, trusted)
    if pkg.manifest.get("quant", "fp32") != "fp32":
        raise EdgepilotError(f"{path}: a teacher must be an fp32 package")
    arch = ArchSpec.from_dict(pkg.manifest["arch"])
    if arch.bins != bins:
        raise EdgepilotError(f"{path}: teacher has {arch.bins} steering bins, the student {bins}")
    spec = InputSpec.from_dict(pkg.manifest.get("input", {}))
    net = build_net(arch, spec)
    net.load_state_dict(pkg.state)
    net.teacher_version = pkg.manifest.get("version")  # type: ignore[attr-defined]
    net.input_spec = spec  # type: ignore[attr-defined]
    return net.eval()


def _input_of(path: str | Path, trusted: list[str] | None) -> InputSpec:
    return InputSpec.from_dict(verify_package(path, trusted).manifest.get("input", {}))


@dataclass(frozen=True)
class Start:
    """The package a warm start began from, and every session its weights learned from."""

    version: str | None
    seen: frozenset[str]


def load_init(path: str | Path, net: StagedNet, spec: InputSpec, trusted: list[str] | None = None) -> Start:
    """Load ``path``'s weights into ``net`` (same architecture and input, fp32)."""
    pkg = load_package(path, trusted)
    m = pkg.manifest
    if m.get("quant", "fp32") != "fp32":
        raise EdgepilotError(f"{path}: a warm start needs an fp32 package (an int8 one's source)")
    if ArchSpec.from_dict(m["arch"]) != net.arch or InputSpec.from_dict(m.get("input", {})) != spec:
        raise EdgepilotError(f"{path}: a warm start needs the same architecture and input as the new model")
    net.load_state_dict(pkg.state)
    t = m.get("training") or {}
    # its training sessions (validation ones excluded) and what its own start had seen
    seen = set(t.get("sessions") or ()) - set(t.get("val_sessions") or ())
    seen |= set((t.get("init") or {}).get("seen_sessions") or ())
    if "val_sessions" not in t:  # older packages did not record their split: all seen
        seen |= set(t.get("sessions") or ())
    return Start(m.get("version"), frozenset(seen))


def arch_of(cfg: TrainConfig) -> ArchSpec:
    """The net a training config builds (a learned confidence only where there are exits)."""
    confidence = cfg.confidence if cfg.arch == "early-exit" else "entropy"
    return ArchSpec(cfg.arch, list(cfg.widths), head0=list(cfg.head0), head1=list(cfg.head1), confidence=confidence)


def train(
    logs: list[str],
    out: str | Path,
    cfg: TrainConfig,
    *,
    teacher: str | Path | None = None,
    init: str | Path | None = None,
    key: str | None = None,
    spec: InputSpec | None = None,
    trusted: list[str] | None = None,
    val_logs: list[str] | None = None,
) -> dict:
    """Train, calibrate, sign and write a package. Returns the CLI's result dict.

    ``init``: an fp32 package of the same architecture to start from (a warm start, as the
    cloud's retraining does with its current models): the sessions it learned from stay out
    of validation. Both are verified against ``trusted`` (default: keys/*.pub).
    ``spec``: the input; default: ``init``'s, else ``spec_for(cfg.arch)``.
    ``val_logs``: validate and calibrate on these sessions, and train on every session of
    ``logs`` (the cloud: its held-out sessions); default: a seeded pick of ``logs``'."""
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    signing_key = load_private_key(key, create=True)  # fail before an hour of training
    arch = arch_of(cfg)
    if spec is None:  # a warm start keeps its model's input (a package from before CAR_SPEC too)
        spec = _input_of(init, trusted) if init else spec_for(arch.name)
    net = build_net(arch, spec)
    start = load_init(init, net, spec, trusted) if init else None
    data = _load_data(logs, cfg, start.seen if start else (), val_logs or [])
    teacher_net = load_teacher(teacher, arch.bins, trusted) if teacher else None
    if teacher_net is not None:
        check_adaptable(spec, teacher_net.input_spec)  # type: ignore[arg-type]
    ds = FrameDataset(data.train, spec, cfg.augment, cfg.seed)
    val_loader = DataLoader(FrameDataset(data.val, spec, None), batch_size=256)
    history, best_epoch = _fit(net, ds, val_loader, cfg, teacher_net)
    steer, conf, labels = predict_exits(net, val_loader)
    off = untrained_exits(stage_weights(cfg.exit_weights, len(net.stages)))
    cal = calibrate(steer, conf, labels, cfg.target, path_frames(net, data.train, spec), off)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    manifest = base_manifest(net, spec, state, stage_macs(net, spec))
    manifest.update(_trained_manifest(cal, data, history, best_epoch, logs, cfg, teacher_net, start, val_logs))
    out = save_package(out, manifest, state, signing_key)
    curve = plot_curve(history, out.with_suffix(".png"), arch.name, off)
    return {
        "package": str(out),
        "version": manifest["version"],
        "arch": arch.name,
        "val_steering_mae": cal["val_steering_mae_final"],
        "val_steering_mae_exits": cal["val_steering_mae_exits"],
        "epochs": len(history),
        "samples": len(data.samples),
        "skipped": data.loaded.skipped,
        "unlabelled": data.loaded.unlabelled,
        "labels": list(cfg.labels),
        "exit_rate": cal["val_exit_rate"],
        "offload_rate": cal["val_offload_rate"],
        "thresholds": manifest["thresholds"],
        # what calibration's test had to go on: few blocks can certify little (docs/training.md)
        "train_frames": len(data.train),
        "val_frames": len(data.val),
        "calibration_test": cal["test"],
        "curve": str(curve),
        "elapsed_s": round(time.time() - t_start, 1),
    }


@dataclass
class _Data:
    """The frames one run learns from: what the logs gave, the (capped) samples and their
    by-session split into training and validation frames."""

    loaded: Loaded
    samples: list[Sample]
    train: list[Sample]
    val: list[Sample]


def _load_data(
    logs: list[str], cfg: TrainConfig, seen: Collection[str] = (), val_logs: Collection[str] = ()
) -> _Data:
    """Load the labelled frames, split them by session (``seen`` ones train only; with
    ``val_logs``, theirs validate and every other one trains) and cap the *training* frames
    at ``cfg.max_frames`` (evenly spaced, so a quick run still sees every session). The
    cap bounds the training time; validation frames cost one forward pass each and
    calibration's test needs every block of them, so they are all kept."""
    loaded, val_ids = load_samples(logs, cfg.labels), set[str]()
    if val_logs:
        loaded, val_ids = _with_validation(loaded, load_samples(val_logs, cfg.labels), seen)
    if val_ids:
        train_s, val_s = split_by_ids(loaded.samples, val_ids)
    else:
        train_s, val_s = split_by_session(loaded.samples, cfg.val_fraction, cfg.seed, seen=seen)
    train_s = evenly(train_s, cfg.max_frames)
    return _Data(loaded, train_s + val_s, train_s, val_s)


def _with_validation(loaded: Loaded, held: Loaded, seen: Collection[str]) -> tuple[Loaded, set[str]]:
    """The training frames and the given validation ones together, and the validation
    sessions; refused when one of those also trains or was learned by the starting weights."""
    if overlap := set(held.sessions) & (set(seen) | set(loaded.sessions)):
        raise EdgepilotError(
            f"validation session(s) {', '.join(sorted(overlap))} also train or were learned by the "
            "starting weights: calibration's test needs frames new to the model"
        )
    both = Loaded(
        loaded.samples + held.samples,
        loaded.sessions + held.sessions,
        loaded.skipped + held.skipped,
        loaded.unlabelled + held.unlabelled,
    )
    return both, set(held.sessions)


def _fit(
    net: StagedNet,
    ds: FrameDataset,
    val_loader: DataLoader,
    cfg: TrainConfig,
    teacher_net: StagedNet | None,
) -> tuple[list[dict], int]:
    """The epochs, stopped early after ``cfg.patience`` epochs without a better final-head
    validation MAE; leaves ``net`` with the best epoch's weights (``keep_last``: every
    epoch, the last one's weights). The per-epoch history and
    the best epoch (0: none was better than infinity, the net keeps its last weights)."""
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        ds, batch_size=cfg.batch, shuffle=True, generator=g, drop_last=len(ds.samples) > cfg.batch
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.epochs, 1))
    weights = stage_weights(cfg.exit_weights, len(net.stages))
    keep_last = cfg.keep_last if cfg.keep_last is not None else len(net.stages) > 1
    history: list[dict] = []
    best = (float("inf"), None, 0)
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        train_loss = _train_epoch(net, loader, opt, cfg, teacher_net, weights, desc)
        sched.step()
        steer, _, labels = predict_exits(net, val_loader)
        maes = [float(np.abs(st - labels).mean()) for st in steer]
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mae": maes})
        log.info("epoch %d: loss %.4f, val MAE per exit %s", epoch + 1, train_loss, maes)
        if keep_last:
            best = (maes[-1], None, epoch + 1)
        elif maes[-1] < best[0]:
            best = (maes[-1], {k: v.clone() for k, v in net.state_dict().items()}, epoch + 1)
        elif epoch + 1 - best[2] >= cfg.patience:
            log.info("early stop: no better validation MAE for %d epochs", cfg.patience)
            break
    if best[1] is not None:
        net.load_state_dict(best[1])
    return history, best[2]


def _train_epoch(
    net: StagedNet,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    teacher_net: StagedNet | None,
    weights: list[float],
    desc: str,
) -> float:
    """One pass over the training frames; the mean joint loss per frame."""
    net.train()
    total, n = 0.0, 0
    for x, s, th in bar(loader, desc=desc, unit="batch"):
        s, th = s.float(), th.float()
        target = soft_targets(s, net.arch.bins, cfg.label_sigma_bins)
        if teacher_net is not None:
            xt = adapt_input(x, loader.dataset.spec, teacher_net.input_spec)  # type: ignore[attr-defined]
            target, th = _distill(teacher_net, xt, target, th, cfg.distill_alpha)
        loss = joint_loss(net(x), target, s, th, weights, cfg.self_distill, net.arch.learned, cfg.mutual)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(x)
        n += len(x)
    return total / max(n, 1)


def _distill(
    teacher_net: StagedNet, x: torch.Tensor, target: torch.Tensor, th: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's steering distribution and throttle targets mixed with the teacher's final
    head by share ``alpha`` (the teacher sees the same augmented frames, ``x`` in its own
    input: ``preprocess.adapt_input``)."""
    with torch.no_grad():
        t_logits, t_thr, _ = split_out(teacher_net(x)[-1], teacher_net.arch.learned)
    target = (1 - alpha) * target + alpha * torch.softmax(t_logits, 1)
    th = (1 - alpha) * th + alpha * t_thr
    return target, th


def _trained_manifest(
    cal: dict,
    data: _Data,
    history: list[dict],
    best_epoch: int,
    logs: list[str],
    cfg: TrainConfig,
    teacher_net: StagedNet | None,
    start: Start | None = None,
    val_logs: list[str] | None = None,
) -> dict:
    """What a trained fp32 package's manifest adds to ``base_manifest``: its calibrated
    thresholds, validation metrics and how it was trained (in the manifest's key order)."""
    return {
        "parent": None,
        "quant": "fp32",
        "thresholds": {"exits": cal["exits"], "offload": cal["offload"]},
        "calibration": cal,
        "metrics": {
            "val_steering_mae": cal["val_steering_mae_final"],
            "val_steering_mae_exits": cal["val_steering_mae_exits"],
            "val_exit_rate": cal["val_exit_rate"],
            "epochs": len(history),
            "best_epoch": best_epoch,
            "samples": len(data.samples),
            "train_frames": len(data.train),
            "val_frames": len(data.val),
        },
        "training": {
            "sessions": data.loaded.sessions,
            # sessions wholly in validation (a single session cut in blocks trained too)
            "val_sessions": sorted({s.session for s in data.val} - {s.session for s in data.train}),
            "init": start and {"version": start.version, "seen_sessions": sorted(start.seen)},
            "logs": [str(p) for p in logs],
            "val_logs": [str(p) for p in val_logs or []],
            "seed": cfg.seed,
            "exit_weights": list(cfg.exit_weights),
            "self_distill": cfg.self_distill,
            "mutual": cfg.mutual,
            "teacher": getattr(teacher_net, "teacher_version", None),
            "history": history,
        },
    }


def base_manifest(net: StagedNet, spec: InputSpec, state: dict, macs: list[int]) -> dict:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().numpy().tobytes())
    feats, x = [], torch.zeros(1, 3, spec.height, spec.width)
    net.eval()
    with torch.no_grad():
        for s in net.stages:
            x, _ = s(x)
            feats.append(list(x.shape[1:]))
    return {
        "version": f"{net.arch.name}-{time.strftime('%Y%m%d-%H%M%S')}-{h.hexdigest()[:8]}",
        "created": time.time(),
        "edgepilot": __version__,
        "arch": net.arch.to_dict(),
        "input": spec.to_dict(),
        "stage_macs": macs,
        "stage_features": feats,
    }


def plot_curve(history: list[dict], path: Path, title: str, skip: tuple[int, ...] = ()) -> Path:
    """Training loss and validation MAE per exit (not of the ``skip`` exits: untrained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [h["epoch"] for h in history]
    ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel="joint training loss", title=f"{title}: training loss")
    n_exits = len(history[0]["val_mae"]) if history else 0
    for k in (k for k in range(n_exits) if k not in skip):
        label = "final head" if k == n_exits - 1 else f"exit {k}"
        ax[1].plot(ep, [h["val_mae"][k] for h in history], marker="o", label=label)
    ax[1].set(xlabel="epoch", ylabel="steering MAE", title="validation (held-out sessions)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_calibrated(
    net: StagedNet,
    spec: InputSpec,
    samples: list[Sample],
    out: str | Path,
    signing_key: Ed25519PrivateKey,
    *,
    parent: str | None,
    metrics: dict,
    training: dict,
    target: CalibrationTarget | None = None,
    train_samples: list[Sample] | None = None,
) -> tuple[Path, dict, dict]:
    """An fp32 package of trained weights that did not come out of ``train`` (distributed,
    federated): exits calibrated on ``samples`` (for ``target``, default
    ``CalibrationTarget()``), signed; (path, manifest, calibration). ``train_samples``:
    frames it trained on, to build the threshold path on as ``train`` does, so that every
    validation block tests it (without them, half the blocks build it)."""
    steer, conf, labels = predict_exits(net, DataLoader(FrameDataset(samples, spec, None), batch_size=256))
    off = untrained_exits(stage_weights(EXIT_WEIGHTS, len(net.stages)))
    path = path_frames(net, train_samples, spec) if train_samples else None
    cal = calibrate(steer, conf, labels, target or CalibrationTarget(), path, off)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    manifest = base_manifest(net, spec, state, stage_macs(net, spec))
    manifest.update(
        parent=parent,
        quant="fp32",
        thresholds={"exits": cal["exits"], "offload": cal["offload"]},
        calibration=cal,
        metrics={"val_steering_mae": cal["val_steering_mae_final"], **metrics},
        training=training,
    )
    return save_package(out, manifest, state, signing_key), manifest, cal
