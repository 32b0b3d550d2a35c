"""The networks: the car's early-exit CNN, the PilotNet baseline, the larger edge model.

Every network here is a list of *stages*. A stage is an ``nn.Module`` that maps the
previous stage's features (the preprocessed image for stage 0) to ``(features, out)``,
where ``out`` is one exit's answer: ``BINS`` steering logits followed by one throttle
value. PilotNet and the edge model are single-stage networks with the same head, so
every runtime, metric, loss and compression path treats them alike.

The early-exit net is shaped so that exiting early saves most of the compute (PilotNet
spends 73% of its MACs in conv1-2, so exits bolted onto it save little):

    stage 0  conv 5x5 stride 4 + conv 3x3 stride 2 on the 84x160 input  -> 11x20 features
             (a cheap low-resolution look: ~1.3M MACs), exit 0
    stage 1  two 3x3 convs, more channels (~3.5M MACs)                   -> 6x10, exit 1
    stage 2  two 3x3 convs, most channels (~2.3M MACs, smaller maps)     -> 3x5,  final head

(on ``preprocess.CAR_SPEC``; a package trained on PilotNet's 66x200: 9x25, 5x13, 3x7)

Stage boundaries are the split points of split offload: the car sends the features of its last
evaluated stage and the edge continues with ``stages[k+1:]`` of the same model.

Steering is predicted as a distribution over ``BINS`` bins on [-1, 1]; the steering value
is its expectation and the confidence is ``1 - entropy / log(BINS)`` (BranchyNet exits on
entropy). A distribution, unlike a single regressed number, says when the frame is
ambiguous (a fork, a washed-out road), which is what the exit and offload decisions need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edgepilot import EdgepilotError
from edgepilot.model.preprocess import DEFAULT_SPEC, InputSpec

BINS = 21
CENTERS = torch.linspace(-1.0, 1.0, BINS)

ARCHS = ("early-exit", "pilotnet", "edge")
DEFAULT_WIDTHS = {
    # stages 0-1 1.5x wider than the first design (8, 16, 32, 32): chosen by the width x seed
    # sweep on validation MAE (docs/benchmarks.md#model); 5.2M vs 3.2M mean MACs per frame.
    # Stage 1 at 64 sent more frames early on more seeds but drove worse in the demo's
    # closed loop (same section, third round)
    "early-exit": [12, 24, 48, 48, 64, 64],
    "pilotnet": [24, 36, 48, 64, 64, 100, 50, 10],
    "edge": [32, 48, 64, 96, 128, 256, 64],
}


@dataclass
class ArchSpec:
    """Enough to rebuild a network: stored in the package manifest (pruning changes widths)."""

    name: str = "early-exit"
    widths: list[int] = field(default_factory=list)
    bins: int = BINS
    # early-exit only: exit 0's / exit 1's head as [pool rows, pool cols, hidden units];
    # empty: the first design's [2, 6, 32] (packages from before these fields load unchanged)
    head0: list[int] = field(default_factory=list)
    head1: list[int] = field(default_factory=list)
    # what an exit's confidence is: "entropy" of its steering distribution, or "learned":
    # each head has one more output, trained to predict that exit's own steering error
    confidence: str = "entropy"

    def __post_init__(self) -> None:
        if self.name not in ARCHS:
            raise EdgepilotError(f"unknown architecture {self.name!r}; one of {', '.join(ARCHS)}")
        if not self.widths:
            self.widths = list(DEFAULT_WIDTHS[self.name])
        if self.confidence not in ("entropy", "learned"):
            raise EdgepilotError(f"confidence must be 'entropy' or 'learned', got {self.confidence!r}")

    @property
    def learned(self) -> bool:
        return self.confidence == "learned"

    @property
    def outputs(self) -> int:
        """Outputs per exit: steering bins, throttle (and the predicted error)."""
        return self.bins + 1 + self.learned

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        return cls(
            name=d["name"],
            widths=list(d.get("widths") or []),
            bins=int(d.get("bins", BINS)),
            head0=[int(x) for x in d.get("head0") or []],
            head1=[int(x) for x in d.get("head1") or []],
            confidence=d.get("confidence", "entropy"),
        )


def conv(cin: int, cout: int, k: int, stride: int, pad: int | None = None) -> nn.Sequential:
    """conv + batch norm + ReLU; the norm is folded into the conv for inference."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if pad is None else pad, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Head(nn.Module):
    """Pool the features to a small grid (keeps left/right position), then two linears."""

    def __init__(self, channels: int, pool: tuple[int, int], hidden: int, outputs: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc1 = nn.Linear(channels * pool[0] * pool[1], hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.pool(x), 1))))


class MLPHead(nn.Module):
    """PilotNet's fully connected tail: flatten, then fc layers of the given widths."""

    def __init__(self, n_in: int, widths: list[int], outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(n_in, w), nn.ReLU()]
            n_in = w
        layers.append(nn.Linear(n_in, outputs))
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


class Stage(nn.Module):
    """One stage: a body (features) and an exit head. ``forward`` -> (features, out)."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.head(f)


class StagedNet(nn.Module):
    """A list of stages; ``forward`` runs all of them and returns every exit's output."""

    def __init__(self, arch: ArchSpec, stages: list[Stage]) -> None:
        super().__init__()
        self.arch = arch
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in self.stages:
            x, o = s(x)
            outs.append(o)
        return outs


def _feat_shape(body: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        was = body.training
        body.eval()
        out = body(torch.zeros(1, *shape)).shape[1:]
        body.train(was)
    return tuple(out)


def build_net(arch: ArchSpec, spec: InputSpec = DEFAULT_SPEC) -> StagedNet:
    w, outputs = arch.widths, arch.outputs
    shape: tuple[int, ...] = (3, spec.height, spec.width)
    stages: list[Stage] = []
    if arch.name == "early-exit":
        if len(w) != 6:
            raise EdgepilotError(f"early-exit needs 6 widths, got {w}")
        bodies = [
            nn.Sequential(conv(3, w[0], 5, 4), conv(w[0], w[1], 3, 2)),
            nn.Sequential(conv(w[1], w[2], 3, 1), conv(w[2], w[3], 3, 2)),
            nn.Sequential(conv(w[3], w[4], 3, 1), conv(w[4], w[5], 3, 2)),
        ]
        heads = [arch.head0 or [2, 6, 32], arch.head1 or [2, 6, 32]]
        for name, h in zip(("head0", "head1"), heads, strict=True):
            if len(h) != 3 or min(h) < 1:
                raise EdgepilotError(f"{name} must be [pool rows, pool cols, hidden], got {h}")
        for k, body in enumerate(bodies):
            shape = _feat_shape(body, shape)
            pool = (heads[k][0], heads[k][1]) if k < 2 else (shape[1], shape[2])
            hidden = heads[k][2] if k < 2 else 64
            stages.append(Stage(body, Head(shape[0], pool, hidden, outputs)))
    else:
        n_conv = 5
        if len(w) < n_conv + 1:
            raise EdgepilotError(f"{arch.name} needs at least {n_conv + 1} widths, got {w}")
        cw = w[:n_conv]
        body = nn.Sequential(
            conv(3, cw[0], 5, 2, 0),  # PilotNet's convs are unpadded ("valid")
            conv(cw[0], cw[1], 5, 2, 0),
            conv(cw[1], cw[2], 5, 2, 0),
            conv(cw[2], cw[3], 3, 1, 0),
            conv(cw[3], cw[4], 3, 1, 0),
        )
        shape = _feat_shape(body, shape)
        n_in = shape[0] * shape[1] * shape[2]
        stages.append(Stage(body, MLPHead(n_in, w[n_conv:], outputs)))
    return StagedNet(arch, stages)


def split_out(out: torch.Tensor, learned: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An exit's raw output -> (steering logits, throttle, predicted error or None)."""
    if learned:
        return out[:, :-2], out[:, -2], out[:, -1]
    return out[:, :-1], out[:, -1], None


def decode(out: torch.Tensor, learned: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An exit's raw output -> (steering, throttle, confidence), each of shape (N,)."""
    logits, thr, err = split_out(out.float(), learned)
    p = torch.softmax(logits, dim=1)
    centers = torch.linspace(-1.0, 1.0, logits.shape[1])
    steering = (p * centers).sum(1)
    if err is not None:
        conf = 1.0 - err.clamp(0.0, 1.0)
    else:
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
        conf = 1.0 - ent / torch.log(torch.tensor(float(logits.shape[1])))
    return steering, thr.clamp(-1.0, 1.0), conf


def stage_macs(net: StagedNet, spec: InputSpec = DEFAULT_SPEC) -> list[int]:
    """Multiply-accumulates of each stage (body + its exit head), counted with hooks."""
    counts: list[int] = []
    cur = [0]

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            cur[0] += out.numel() // out.shape[0] * k
        elif isinstance(m, nn.Linear):
            cur[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was = net.training
        net.eval()
        x = torch.zeros(1, 3, spec.height, spec.width)
        with torch.no_grad():
            for s in net.stages:
                cur[0] = 0
                x, _ = s(x)
                counts.append(cur[0])
        net.train(was)
    finally:
        for h in hs:
            h.remove()
    return counts


def segments_for(exits: list | None, n_stages: int) -> list[list[int]]:
    """Group stages so that an exit that is never taken costs nothing at inference.

    ``exits``: the calibrated thresholds (None: the exit is never taken). A stage whose
    exit is off is merged with the next into one *segment* that computes only the last
    head and has no stage boundary inside (measured ~15% less time for stages 0-1 of the
    int8 early-exit net). Segment ends are the split points of split mode."""
    segs: list[list[int]] = []
    cur: list[int] = []
    exits = list(exits or [])
    for k in range(n_stages):
        cur.append(k)
        if k == n_stages - 1 or (k < len(exits) and exits[k] is not None):
            segs.append(cur)
            cur = []
    return segs


def segment_net(net: StagedNet, segs: list[list[int]]) -> StagedNet:
    """The same weights regrouped: one Stage per segment (bodies in a row, the last head)."""
    if segs == [[k] for k in range(len(net.stages))]:
        return net
    stages = []
    for seg in segs:
        if len(seg) == 1:
            stages.append(net.stages[seg[0]])
        else:
            body = nn.Sequential(*[net.stages[i].body for i in seg])
            stages.append(Stage(body, net.stages[seg[-1]].head))
    return StagedNet(net.arch, stages)


def fuse_for_inference(net: StagedNet) -> StagedNet:
    """Fold every batch norm into its conv (same numbers, less work); eval mode."""
    net.eval()
    for m in list(net.modules()):
        if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[1], nn.BatchNorm2d):
            torch.ao.quantization.fuse_modules(m, [["0", "1", "2"]], inplace=True)
    return net
