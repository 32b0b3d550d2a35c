"""What a smaller install leaves out, and the extra that brings it back.

The car's install (docs/model.md#the-cars-install) has no torch, OpenCV or pygame. Code that
needs one imports it through ``require`` (or the CLI catches the import error), so a user
reads one line naming the extra to install instead of a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgepilot import EdgepilotError

EXTRA_FOR = {
    "torch": "train",
    "onnx": "train",
    "matplotlib": "train",
    "cv2": "opencv",
    "pygame": "gamepad",
    "flwr": "fl",
}


def missing(module: str, what: str, install: str = "", hint: str = "") -> str:
    """The one-line message for ``what`` needing ``module``; ``install``: extras to name
    with it (``"car,"`` on the car), ``hint``: another way out."""
    extra = EXTRA_FOR[module.partition(".")[0]]
    msg = f'{what} needs {module}, which this install leaves out: pip install "edgepilot[{install}{extra}]"'
    return f"{msg} ({hint})" if hint else f"{msg} (docs/model.md#the-cars-install)"


def require(module: str, what: str, hint: str = "") -> ModuleType:
    """``module``, or an EdgepilotError naming the car extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgepilotError(missing(module, what, "car,", hint)) from None
