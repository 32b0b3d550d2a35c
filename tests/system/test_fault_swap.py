"""SIGKILL of the car while it swaps to a pushed model (``vehicle.updates`` fetches and
caches the package, ``edgepilot.drive.slot`` loads, verifies and warms it, the loop swaps),
then the car restarted: it must come up on a valid model -- the old one it was started
with, then the new one -- and never load a half-written package.

Each car is a real process (the updater on its own MQTT connection, the hot-swap slot
ticked by an idle loop) against a real Mosquitto of the test's own (the model
announcement is retained: the session broker is shared with other tests). The kills:

1. the moment the car starts fetching (chunks in flight, nothing cached yet);
2. the moment the package file appears in the cache (the car is loading and warming it);
3. a cache file cut in half -- what a non-atomic write killed midway would leave (the
   fetch writes to a temporary file and renames it, so a kill cannot leave one; this
   checks the car would not trust one anyway);
4. a clean restart with the package cached: the swap needs no fetch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from edgepilot.config import REPO_ROOT, BrokerConfig

CAR = "car-swapkill"
CHILD = textwrap.dedent(
    """
    import sys, time
    url, v0, cache, car = sys.argv[1:5]
    import torch
    torch.set_num_threads(1)
    from edgepilot.config import BrokerConfig
    from edgepilot.mqtt import Connection
    from edgepilot.drive.slot import ModelSlot, load_autopilot
    from vehicle.updates import ModelUpdater

    slot = ModelSlot(load_autopilot(v0))  # the model the car was started with
    print("start", slot.version, flush=True)
    conn = Connection(BrokerConfig(url=url), car)
    conn.start()
    up = ModelUpdater(conn, slot, car, cache)
    up.start()
    state, t_end = None, None
    while t_end is None or time.monotonic() < t_end:  # the idle loop: swap between frames
        if slot.maybe_swap():
            print("swapped", slot.version, flush=True)
            t_end = time.monotonic() + 0.3
        st = up.status
        if st is not None and st.state != state:
            state = st.state
            print("state", state, st.offered, st.error, flush=True)
        time.sleep(0.002)
    conn.close()
    print("done", slot.version, flush=True)
    """
)


class Car:
    """One run of the car process; ``events`` are (monotonic, stdout line)."""

    def __init__(self, url: str, v0: str, cache: Path) -> None:
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, v0, str(cache), CAR],
            cwd=REPO_ROOT,  # the repository's keys/ are the trusted ones
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append((time.monotonic(), line.strip()))
                self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < end:
                for _, line in self.events:
                    if line.startswith(prefix):
                        return line
                self._cond.wait(0.05)
        self.kill()
        raise AssertionError(
            f"car never printed {prefix!r}: {self.lines()} {self.proc.stderr.read()[-2000:]}"
        )

    def lines(self) -> list[str]:
        return [line for _, line in self.events]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def cache_state(cache: Path, sha: str) -> dict[str, int]:
    """What the kill left: package files with the announced hash, others, temporaries."""
    pk = list(cache.glob("*.eppkg"))
    good = [p for p in pk if hashlib.sha256(p.read_bytes()).hexdigest() == sha]
    return {
        "packages_valid": len(good),
        "packages_bad": len(pk) - len(good),
        "tmp": len(list(cache.glob("*.tmp"))),
    }


def test_sigkill_while_swapping_a_model_the_car_restarts_on_a_valid_model(tmp_path, tiny_model, sample_logs):
    from cloud_trainer.push import announce
    from edgepilot.broker import start_broker
    from edgepilot.model.package import read_manifest
    from edgepilot.model.train import TrainConfig, train
    from edgepilot.mqtt import Connection

    v0 = read_manifest(tiny_model)["version"]
    v1_pkg = train(
        sample_logs, tmp_path / "v1.eppkg", TrainConfig(epochs=1, max_frames=60, threads=1, seed=3)
    )
    v1 = v1_pkg["version"]
    assert v1 != v0
    broker = start_broker(tmp_path / "mq")
    cache = tmp_path / "car-cache"
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-swapkill")
    cloud.start()
    figs: dict = {"old": v0, "new": v1}
    try:
        ann = announce(cloud, "car", v1_pkg["package"])  # retained: every car start sees it
        target = cache / f"{v1}.eppkg"

        # 1. killed the moment it starts fetching
        car = Car(broker.url, tiny_model, cache)
        assert car.wait_line("start") == f"start {v0}"
        car.wait_line("state fetching")
        car.kill()
        figs["kill_fetching"] = dict(
            cache_state(cache, ann.sha256), swapped=any("swapped" in x for x in car.lines())
        )

        # 2. killed the moment the package lands in the cache (loading, verifying, warming)
        car = Car(broker.url, tiny_model, cache)
        assert car.wait_line("start") == f"start {v0}"  # restarted on the old model
        end = time.monotonic() + 60
        while not target.exists() and time.monotonic() < end and car.proc.poll() is None:
            time.sleep(0.0005)
        car.kill()
        figs["kill_cached"] = dict(
            cache_state(cache, ann.sha256), swapped=any("swapped" in x for x in car.lines())
        )
        assert figs["kill_cached"]["packages_valid"] == 1 and figs["kill_cached"]["packages_bad"] == 0

        # 3. a half-written cache file: refused, fetched again, the new model runs
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        car = Car(broker.url, tiny_model, cache)
        assert car.wait_line("start") == f"start {v0}"
        t_start = time.monotonic()
        assert car.wait_line("swapped") == f"swapped {v1}"
        car.wait_line("done")
        figs["torn_cache"] = dict(
            cache_state(cache, ann.sha256), start_to_swap_s=round(time.monotonic() - t_start, 2)
        )
        assert figs["torn_cache"]["packages_valid"] == 1 and figs["torn_cache"]["packages_bad"] == 0

        # 4. a plain restart: the cached package, verified, no fetch
        car = Car(broker.url, tiny_model, cache)
        assert car.wait_line("start") == f"start {v0}"
        t_start = time.monotonic()
        assert car.wait_line("swapped") == f"swapped {v1}"
        figs["restart_cached_start_to_swap_s"] = round(time.monotonic() - t_start, 2)
        car.wait_line("done")
    finally:
        car.kill()
        cloud.close()
        broker.stop()
    print("FIGURES swap_kill", json.dumps(figs, sort_keys=True))
    out = REPO_ROOT / "var" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / "swap_kill.json").write_text(json.dumps(figs, indent=1, sort_keys=True))
    for k in ("kill_fetching", "kill_cached"):
        assert figs[k]["packages_bad"] == 0  # never a package file that is not the announced bytes
