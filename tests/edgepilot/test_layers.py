"""The house holds: import-linter's contracts (layers, independence, no circles) over
every import, deferred ones inside functions included, and no ``"pkg.mod:func"`` string
in the library that names a deployable (what a lazy loader would import is an import)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = ("vehicle", "edge_node", "cloud_trainer", "testbed")


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and re.search(r"Contracts: \d+ kept, 0 broken", r.stdout)


def test_the_library_names_no_deployable_in_strings():
    names = "|".join(DEPLOYABLES)
    pattern = re.compile(rf"""["']({names})\.[A-Za-z_.]+(:[A-Za-z_]+)?["']""")
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in sorted((ROOT / "edgepilot").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_a_deliberate_violation_is_caught(tmp_path):
    """The contracts can fail: a library module that imports the car (inside a function)
    breaks the layers contract."""
    bad = ROOT / "edgepilot" / "_layer_probe.py"
    bad.write_text("def f():\n    import vehicle.car  # noqa: F401\n")
    try:
        lint = Path(sys.executable).with_name("lint-imports")
        r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        bad.unlink()
    assert r.returncode != 0 and "edgepilot._layer_probe -> vehicle.car" in r.stdout
