"""Preprocessing, defined once: every model, trainer and runtime calls ``preprocess``.

A camera frame (BGR uint8, HxWx3, any size; 160x120 by default) becomes a float32
3x66x200 tensor: the top of the frame (sky, horizon: no steering information, lots of
lighting noise) is cropped, the rest resized to PilotNet's 66x200, converted to YUV
(PilotNet's colour space: brightness in one channel, which brightness augmentation and
scene lighting mostly move) and scaled to about [-1, 1].

The spec is stored in every model package's manifest, so a package trained with another
crop still preprocesses correctly; ``InputSpec()`` is the default.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgepilot import EdgepilotError
from edgepilot.imaging import resize_planar

if TYPE_CHECKING:  # torch is imported where a torch tensor is made: a car install has none
    import torch


@dataclass(frozen=True)
class InputSpec:
    """What a model expects. ``crop_top`` is the fraction of rows dropped from the top."""

    height: int = 66
    width: int = 200
    crop_top: float = 0.3
    colour: str = "yuv"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(**{k: d[k] for k in ("height", "width", "crop_top", "colour") if k in d})


DEFAULT_SPEC = InputSpec()

# torch 2.13 warns once that quantised tensor creation is deprecated; docs/model.md says
# what replaces it. The warning says nothing a user of edgepilot can act on.
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)


U8_SCALE = 1.0 / 127.5
U8_ZERO = 128
"""An int8 model takes the resized uint8 pixels as a quantised tensor with this scale and
zero point: ``(u8 - 128) / 127.5``, within half a grey level of ``preprocess``'s
``u8 / 127.5 - 1``, without converting 40k pixels to float and back."""


def preprocess_u8(frame_bgr: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """BGR uint8 HxWx3 -> uint8 3xHxW (cropped, resized, colour-converted; not normalised).

    Raises EdgepilotError on a frame that is not an HxWx3 uint8 image, because a
    wrong-shaped frame reaching the network would give a confident nonsense answer.
    """
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        shape = getattr(frame_bgr, "shape", None)
        raise EdgepilotError(f"preprocess: expected a BGR HxWx3 frame, got shape {shape}")
    if frame_bgr.dtype != np.uint8:
        raise EdgepilotError(f"preprocess: expected uint8 pixels, got {frame_bgr.dtype}")
    h = frame_bgr.shape[0]
    top = int(round(h * spec.crop_top))
    if h - top < 2:
        raise EdgepilotError(f"preprocess: frame of height {h} is too small")
    return resize_planar(frame_bgr[top:], spec.width, spec.height, spec.colour == "yuv")


def preprocess(frame_bgr: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 3xHxW in [-1, 1]: the model's input."""
    out = preprocess_u8(frame_bgr, spec).astype(np.float32)
    out *= U8_SCALE
    out -= 1.0
    return out


def to_tensor(frames: list[np.ndarray], spec: InputSpec = DEFAULT_SPEC) -> torch.Tensor:
    """A batch of BGR frames as the model's float input tensor (N x 3 x H x W)."""
    import torch

    return torch.from_numpy(np.stack([preprocess(f, spec) for f in frames]))


def quantized_input(x: torch.Tensor) -> torch.Tensor:
    """The int8 models' input: uint8 pixels (from ``preprocess_u8``) or float inputs
    (from ``preprocess``) as a quint8 tensor with the fixed scale and zero point."""
    import torch

    if x.dtype != torch.uint8:
        x = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return torch._make_per_tensor_quantized_tensor(x, U8_SCALE, U8_ZERO)
