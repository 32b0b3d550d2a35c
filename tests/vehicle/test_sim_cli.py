"""`edgepilot sim drive / sim tracks / bench sim` end to end, in process."""

from __future__ import annotations

import numpy as np
import pytest

from edgepilot.cli import main
from edgepilot.drivelog import LogReader
from edgepilot.sim.tracks import load_track
from tests.helpers import SIM_DRIVE_KEYS, run_json


def test_expert_drive_records_a_valid_log_and_a_plot(tmp_path, capsys):
    log = tmp_path / "log"
    rc, res = run_json(
        capsys,
        [
            "sim",
            "drive",
            "--track",
            "switchback",
            "--pilot",
            "expert",
            "--record",
            str(log),
            "--randomize",
            "--perturb",
            "0.3",
            "--headless",
            "--max-seconds",
            "4",
            "--json",
        ],
    )
    assert rc == 0
    assert res.keys() >= SIM_DRIVE_KEYS
    assert res["exit_rate"] == {} and res["offload_rate"] == 0.0
    assert res["frames"] == 80 and res["elapsed_s"] == pytest.approx(4.0)
    r = LogReader(log)
    assert r.meta.source == "sim" and r.meta.track == "switchback"
    assert r.meta.camera["width"] == 160 and r.meta.camera["height"] == 120
    recs = r.records()
    assert len(recs) == 80 and r.skipped == 0
    frames = list(r.frames())
    assert len(frames) == 80 and frames[0][1].shape == (120, 160, 3)
    assert all(rec.mode == "local" and rec.applied_steering is not None for rec in recs)
    assert {"x", "y", "yaw", "v", "cte", "lap", "progress"} <= recs[10].sim.keys()
    assert recs[-1].t == pytest.approx(3.95)
    assert any(abs(rec.applied_steering - rec.steering) > 0.01 for rec in recs)  # perturbed
    png = (log / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and res["plot"].endswith("trajectory.png")


def test_scored_drive_with_scene_and_latency(capsys, tmp_path):
    plot = tmp_path / "p.png"
    rc, res = run_json(
        capsys,
        [
            "sim",
            "drive",
            "--track",
            "oval",
            "--pilot",
            "expert",
            "--laps",
            "1",
            "--scene-seed",
            "3",
            "--latency-ms",
            "100",
            "--headless",
            "--plot",
            str(plot),
            "--json",
        ],
    )
    assert rc == 0 and res["laps"] == 1 and res["autonomy"] == 1.0
    assert res["scene_seed"] == 3 and res["actuator_latency_ms"] == 100
    assert plot.stat().st_size > 10_000


def test_keyboard_drive_under_dummy_sdl_writes_a_valid_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    log = tmp_path / "kb"
    rc, res = run_json(
        capsys,
        [
            "sim",
            "drive",
            "--track",
            "oval",
            "--pilot",
            "keyboard",
            "--record",
            str(log),
            "--rate",
            "max",
            "--max-seconds",
            "1",
            "--json",
        ],
    )
    assert rc == 0 and res["frames"] == 20
    recs = LogReader(log).records()
    assert len(recs) == 20 and all(r.mode == "user" and r.steering == 0 for r in recs)


def test_model_pilot_without_a_package_is_a_clear_error(capsys, tmp_path):
    prof = tmp_path / "nomodel.toml"
    prof.write_text('[sim]\ntrack = "oval"\n')  # a profile without model.package
    rc = main(["sim", "drive", "--pilot", "model", "--headless", "--profile", str(prof)])
    err = capsys.readouterr().err
    assert rc == 1 and "--model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--track", "nope"], "no track"),
        (["--laps", "0"], "--laps"),
        (["--latency-ms", "-5"], "--latency-ms"),
        (["--perturb", "2"], "--perturb"),
        (["--pilot", "keyboard", "--headless"], "window"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, argv, needle):
    rc = main(["sim", "drive", "--headless", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and needle in err and "Traceback" not in err


def test_tracks_list_and_generate(tmp_path, capsys):
    rc, res = run_json(capsys, ["sim", "tracks", "--json"])
    assert rc == 0 and res["count"] >= 8
    assert {t["name"] for t in res["tracks"]} >= {"oval", "switchback"}
    out = tmp_path / "g.json"
    rc, res = run_json(capsys, ["sim", "tracks", "--generate", "9", "--out", str(out), "--json"])
    assert rc == 0 and res["min_radius_m"] >= 1.9
    t = load_track(str(out))
    assert t.length == pytest.approx(res["length_m"], rel=1e-3)


def test_bench_sim_reports_fps(capsys):
    rc, res = run_json(capsys, ["bench", "sim", "--steps", "100", "--json"])
    assert rc == 0
    for k in ("fps", "fps_physics_only", "fps_render_only", "fps_scene_seed_1", "fps_randomize"):
        assert res[k] > 0
    # side by side in one run: physics alone must be faster than physics + render
    assert res["fps_physics_only"] > res["fps"]
    assert np.isfinite(res["render_share"])


def test_an_unwritable_plot_path_does_not_lose_the_drive(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, res = run_json(
        capsys,
        [
            "sim",
            "drive",
            "--track",
            "oval",
            "--headless",
            "--max-seconds",
            "1",
            "--plot",
            str(blocker / "p.png"),
            "--json",
        ],
    )
    assert rc == 0 and res["frames"] == 20 and res["plot"] is None
