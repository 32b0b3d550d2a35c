"""Stand-in for libcamera's Python bindings (apt's python3-libcamera; only on a Raspberry Pi).

Only ``Transform`` is modelled, with the real constructor's keywords: picamera2 configurations
carry one, and the stand-in camera (``tests/standins/picamera2``) reads its flips. A rotation
of 180 is a horizontal plus a vertical flip, as in libcamera; quarter turns need a transpose,
which the Pi's ISP cannot do, so the stand-in refuses them.
"""

from __future__ import annotations


class Transform:
    def __init__(self, rotation: int = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False):
        if rotation not in (0, 180):
            raise NotImplementedError("the stand-in models rotation 0 and 180 only")
        half = rotation == 180
        self.hflip = bool(hflip) != half
        self.vflip = bool(vflip) != half
        self.transpose = bool(transpose)

    def __eq__(self, other: object) -> bool:
        mine = (self.hflip, self.vflip, self.transpose)
        return isinstance(other, Transform) and mine == (other.hflip, other.vflip, other.transpose)

    def __repr__(self) -> str:
        return f"<libcamera.Transform hflip={int(self.hflip)} vflip={int(self.vflip)} transpose={int(self.transpose)}>"
