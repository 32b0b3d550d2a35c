"""The motor-controller firmware (C, ATmega328P) and the helpers that build it.

``build(target, out_dir)`` runs ``make`` on this directory so the tests and tools use
exactly the Makefile CI uses. ``missing_tools(target)`` says which toolchain piece is
absent (the tests skip with that reason, and only then).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent
VECTORS = FIRMWARE_DIR / "test_vectors.json"

_NEEDS = {
    "host": [("gcc", "cc")],
    "avr": [("avr-gcc", "gcc-avr"), ("avr-objcopy", "binutils-avr")],
    "arduino": [
        ("avr-gcc", "gcc-avr"),
        ("avr-g++", "gcc-avr"),
        ("/usr/share/arduino/hardware/arduino/avr/cores/arduino/Arduino.h", "arduino-core-avr"),
    ],
    "sim": [
        ("gcc", "cc"),
        ("avr-gcc", "gcc-avr"),
        ("/usr/include/simavr/sim_avr.h", "libsimavr-dev"),
        ("/usr/include/simavr/parts/uart_pty.h", "libsimavr-dev"),
    ],
}
_OUTPUTS = {
    "host": ["host/libepcore.so"],
    "avr": ["avr/edgepilot_fw.elf", "avr/edgepilot_fw.hex"],
    "arduino": ["arduino/edgepilot_fw.elf", "arduino/edgepilot_fw.hex"],
    "sim": ["host/ep_simavr", "avr/edgepilot_fw.elf"],
}


def missing_tools(target: str) -> str | None:
    """None when ``target`` can be built here, else what is missing (with the package)."""
    if shutil.which("make") is None:
        return "make is not installed"
    for tool, pkg in _NEEDS[target]:
        present = Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None
        if not present:
            return f"{tool} is not installed (Debian package {pkg}; launch/setup installs it)"
    return None


def build(target: str, out_dir: Path) -> dict[str, Path]:
    """``make -C vehicle/firmware BUILD=out_dir target``; returns the built files by name.

    Raises ``RuntimeError`` with make's output when the build fails."""
    out_dir = Path(out_dir)
    proc = subprocess.run(
        ["make", "-C", str(FIRMWARE_DIR), f"BUILD={out_dir}", target],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make {target} failed:\n{proc.stdout}\n{proc.stderr}")
    return {Path(rel).name: out_dir / rel for rel in _OUTPUTS[target]}
