"""Import what edgepilot's programs import, writing their bytecode (run by launch/setup).

Why: with PYTHONDONTWRITEBYTECODE set, as on the machines here, a module without bytecode
on disk is compiled again by every process that imports it (torch's imports: seconds per
process). Compiling the whole venv takes ~40 s on 2 cores for ~10,700 files; the stack
imports ~2,100 of them, which this writes in ~15 s. A module imported only later, and
lazily, is compiled by the process that needs it. Exit 1, naming the module, when one
does not import: the install is broken.
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python launch/warm-imports.py [MODULE ...]
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

PACKAGES = ("edgepilot", "vehicle", "edge_node", "cloud_trainer", "testbed")
# imported inside functions, so walking the packages does not reach them
LAZY = (
    "torch.ao.quantization.quantize_fx",
    "onnxruntime.quantization",
    "matplotlib.pyplot",
    "flwr.server",
    "flwr.compat.client.app",
    "cv2",
    "serial",
    "pygame",
)


def modules(extra: list[str]) -> list[str]:
    names: list[str] = []
    for top in PACKAGES:
        names.append(top)
        path = importlib.import_module(top).__path__
        names += [m.name for m in pkgutil.walk_packages(path, top + ".") if not m.name.endswith("__main__")]
    return names + list(LAZY) + extra


def main() -> int:
    sys.dont_write_bytecode = False
    try:
        for name in modules(sys.argv[1:]):
            importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure to import is a broken install
        print(f"[setup] the install is broken: {e!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
