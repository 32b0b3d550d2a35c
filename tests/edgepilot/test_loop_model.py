"""The onboard loop with a real trained package: sim drive through the loop, replay,
hot-swap under load, early-exit accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepilot.drive.loop import DriveLoop, LoopOptions
from edgepilot.drive.parts import NullActuator
from edgepilot.drive.replay import ReplaySource
from edgepilot.drive.slot import ModelSlot, load_autopilot
from edgepilot.drivelog import LogReader, LogWriter
from tests.helpers import SIM_DRIVE_KEYS, run_json


def model_drive(capsys, model: str, rec, seconds: float) -> dict:
    """`sim drive --pilot model` on the oval for ``seconds`` of simulated time, recorded."""
    argv = ["sim", "drive", "--track", "oval", "--pilot", "model", "--model", model]
    rc, res = run_json(
        capsys, [*argv, "--max-seconds", str(seconds), "--headless", "--record", str(rec), "--json"]
    )
    assert rc == 0 and res is not None
    return res


def test_sim_drive_with_model_goes_through_the_loop(capsys, tmp_path, tiny_model):
    rec = tmp_path / "drive"
    res = model_drive(capsys, tiny_model, rec, 4)
    assert res.keys() >= SIM_DRIVE_KEYS
    assert res["frames"] == 80  # 4 simulated seconds at 20 Hz
    assert sum(res["exit_rate"].values()) == pytest.approx(1.0, abs=1e-3)
    recs = LogReader(rec).records()
    assert len(recs) == 80
    r = recs[10]
    assert r.mode == "local" and r.pilot_steering is not None and r.exit is not None
    assert r.applied_steering == pytest.approx(r.pilot_steering, abs=1e-6)  # the model drove
    assert "x" in r.sim and r.model_version == res["model_version"]
    # per-segment timings: "stage0", or "stage0-1" when calibration merged stage 0 into 1
    assert any(k.startswith("stage0") for k in res["stages_ms"])


def test_replay_reproduces_the_recorded_pilot(capsys, tmp_path, tiny_model):
    rec = tmp_path / "drive"
    model_drive(capsys, tiny_model, rec, 3)
    rc, res = run_json(capsys, ["replay", str(rec), "--model", tiny_model, "--json"])
    assert rc == 0 and res is not None
    assert res["frames"] == 60
    # replayed through the same loop and model, the answers match what drove (JPEG round trip only)
    model = load_autopilot(tiny_model)
    src = ReplaySource(rec)
    diffs = []
    for r in LogReader(rec).records():
        f = src.read()
        diffs.append(abs(model.infer(f.image).steering - r.pilot_steering))
    assert max(diffs) < 0.15 and sum(diffs) / len(diffs) < 0.03


def test_hot_swap_under_load_misses_no_frame(tmp_path, tiny_model, sample_logs):
    a = load_autopilot(tiny_model)
    b = load_autopilot(tiny_model)
    b.version = "v-new"
    slot = ModelSlot(a)
    out = LogWriter(tmp_path / "out", block=True)
    src = ReplaySource(sample_logs[0])
    n_src = len(src.records)
    swapped_at = {}

    def on_frame(frame, info):
        if loop.stats.frames == 10:
            slot.load_async(tiny_model)  # a real background load + verify + warm-up...
            slot.wait()
            slot.offer(b)  # ...then a different version, swapped between two frames
            swapped_at["frame"] = loop.stats.frames

    loop = DriveLoop(
        src,
        NullActuator(),
        model=slot,
        recorder=out,
        options=LoopOptions(mode="local", record=True),
        on_frame=on_frame,
    )
    st = loop.run()
    out.close()
    assert st.frames == n_src and st.model_frames == n_src  # every frame answered by a model
    versions = [r.model_version for r in LogReader(tmp_path / "out").records()]
    assert len(versions) == n_src
    assert versions[:10] == [a.version] * 10 and versions[-1] == "v-new"
    assert slot.swaps >= 1 and slot.last_error is None


def test_tampered_package_is_refused_by_the_slot(tmp_path, tiny_model):
    data = bytearray(Path(tiny_model).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.eppkg"
    bad.write_bytes(bytes(data))
    a = load_autopilot(tiny_model)
    slot = ModelSlot(a)
    done = {}
    slot.load_async(bad, on_done=lambda ok, msg: done.update(ok=ok, msg=msg))
    slot.wait()
    assert done["ok"] is False and slot.last_error
    assert not slot.maybe_swap() and slot.current is a


def test_loading_an_int8_package_never_breaks_inference_on_other_threads(tiny_int8):
    """Regression: int8 loading used torch.fx tracing, which patches nn.Module.__call__
    process-wide; a car hot-swapping an int8 model crashed its own loop thread
    ("module is not installed as a submodule"). Packages now carry TorchScript stages."""
    import threading

    import numpy as np

    running = load_autopilot(tiny_int8)
    frame = np.zeros((120, 160, 3), np.uint8)
    errors: list[str] = []
    stop = threading.Event()
    calls = [0]

    def infer() -> None:
        while not stop.is_set():
            try:
                running.infer(frame)
                calls[0] += 1
            except Exception as e:  # noqa: BLE001 - the test reports whatever broke
                errors.append(repr(e))
                return

    th = threading.Thread(target=infer)
    th.start()
    try:
        for _ in range(5):
            load_autopilot(tiny_int8).warmup(2)
    finally:
        stop.set()
        th.join()
    assert errors == [] and calls[0] > 0


class _AllHard:
    """The tiny package, but every frame is hard (offloaded): the edge answers them all."""

    def __init__(self, ap) -> None:
        self.ap, self.version = ap, ap.version

    def infer(self, image):
        dec = self.ap.infer(image)
        dec.hard = True
        return dec

    def warmup(self) -> None:
        pass


class _SteerLeft:
    """An edge model that is wrong everywhere: full left."""

    version = "left"

    def infer(self, image):
        from edgepilot.model.runtime import Decision

        assert image.shape == (120, 160, 3)  # the JPEG the loop sent, decoded
        return Decision(-1.0, 0.3, 0, 1.0, False)


def test_an_edge_model_in_process_answers_the_hard_frames_of_a_scored_drive(tiny_model):
    """``scored_drives(edge=...)`` (the cloud's car-and-edge check): each hard frame goes as
    a JPEG to the edge model through ``LocalEdge`` and its answer steers the car."""
    from edgepilot.sim.drive import scored_drives

    car = _AllHard(load_autopilot(tiny_model))
    alone = scored_drives(car, ["oval"], 4.0)
    same = scored_drives(car, ["oval"], 4.0, edge=load_autopilot(tiny_model))
    left = scored_drives(car, ["oval"], 4.0, edge=_SteerLeft())
    assert "edge_used" not in alone["tracks"]["oval"]
    assert same["tracks"]["oval"]["edge_used"] == 1.0 == left["tracks"]["oval"]["edge_used"]
    # the same model at the edge drives as the car alone (up to the JPEG round trip); a
    # wrong one takes the car off the track
    assert abs(same["mean_abs_cte_m"] - alone["mean_abs_cte_m"]) < 0.05
    assert left["mean_abs_cte_m"] > alone["mean_abs_cte_m"] + 0.05 or left["interventions"] > alone["interventions"]
