"""launch/car-setup: the Pi-only set-up refuses other machines, refuses a venv that cannot see
apt's picamera2, and (dry run, on a stand-in /proc/device-tree/model) makes the venv with
--system-site-packages and puts pip's simplejpeg over apt's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgepilot.config import REPO_ROOT

SCRIPT = REPO_ROOT / "launch" / "car-setup"


def run(root: Path, model: str | None, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if model is not None:
        (root / "model").write_bytes(model.encode() + b"\0")  # as the device tree has it
        env["EDGEPILOT_PI_MODEL_FILE"] = str(root / "model")
    else:
        env["EDGEPILOT_PI_MODEL_FILE"] = str(root / "no-such-file")
    return subprocess.run(
        [str(root / "launch" / "car-setup"), *args], capture_output=True, text=True, env=env
    )


def fresh_checkout(tmp_path: Path) -> Path:
    (tmp_path / "launch").mkdir()
    shutil.copy(SCRIPT, tmp_path / "launch" / "car-setup")
    return tmp_path


def test_not_a_pi_stops_and_points_to_launch_setup(tmp_path):
    r = run(fresh_checkout(tmp_path), None)
    assert r.returncode == 2
    assert "not a Raspberry Pi" in r.stderr and "./launch/setup" in r.stderr and "line" not in r.stderr


def test_dry_run_on_a_pi_makes_a_system_site_packages_venv(tmp_path):
    r = run(fresh_checkout(tmp_path), "Raspberry Pi 5 Model B Rev 1.0", "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = r.stdout.splitlines()
    assert "+ /usr/bin/python3 -m venv --system-site-packages .venv" in cmds
    assert "+ .venv/bin/pip install -q --no-compile -e .[car]" in cmds  # the car's install: no torch
    assert not any("torch" in c for c in cmds)
    assert "+ .venv/bin/pip install -q --ignore-installed --no-deps simplejpeg" in cmds
    if any("apt-get install" in c for c in cmds):  # only what is missing on this machine
        assert "--no-install-recommends" in next(c for c in cmds if "apt-get install" in c)


def test_opencv_and_pygame_are_options_and_unknown_options_are_refused(tmp_path):
    root = fresh_checkout(tmp_path)
    r = run(root, "Raspberry Pi 5 Model B Rev 1.0", "--dry-run", "--opencv", "--gamepad")
    assert r.returncode == 0, r.stderr
    assert "+ .venv/bin/pip install -q --no-compile -e .[car,opencv,gamepad]" in r.stdout.splitlines()
    bad = run(root, "Raspberry Pi 5 Model B Rev 1.0", "--opencvv")
    assert bad.returncode == 2 and "unknown option --opencvv" in bad.stderr


def test_a_venv_without_system_site_packages_is_refused(tmp_path):
    root = fresh_checkout(tmp_path)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    r = run(root, "Raspberry Pi 4 Model B Rev 1.4", "--dry-run")
    assert r.returncode == 1
    assert "without --system-site-packages" in r.stderr and "mv .venv .venv.old" in r.stderr
