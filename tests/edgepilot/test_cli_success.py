"""Every CLI command runs at least once on its success path, through argparse (``main``),
and says what it did. ``SUCCESS_RUNS`` is the ledger: for each command, the test that runs
it; a command added to the tree without one fails ``test_every_command_has_a_success_run``."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from edgepilot.config import REPO_ROOT
from edgepilot.drivelog import LogReader
from tests.edgepilot.test_cli import LEAVES
from tests.helpers import run_json

SUCCESS_RUNS = {
    "bench loop": "tests/edgepilot/test_cli_success.py::test_bench_loop_and_bench_model",
    "bench model": "tests/edgepilot/test_cli_success.py::test_bench_loop_and_bench_model",
    "bench dashboard": "tests/system/test_dashboard.py::test_bench_dashboard_serves_the_page_from_the_cloud_trainer",
    "bench fl": "tests/system/test_fl.py::test_bench_fl_compares_with_central_retraining",
    "bench offload": "tests/edgepilot/test_cli_success.py::test_bench_offload_fleet_and_saturate",
    "bench web": "tests/edgepilot/test_cli_success.py::test_bench_web",
    "bench record": "tests/edgepilot/test_cli.py::test_json_is_one_object_on_the_last_stdout_line",
    "bench sim": "tests/vehicle/test_sim_cli.py::test_bench_sim_reports_fps",
    "calibrate": "tests/edgepilot/test_cli_success.py::test_eval_calibrate_and_keys",
    "cloud": "tests/system/test_fault_cloud.py::test_cloud_killed_mid_upload_restarted_the_upload_resumes_and_no_acked_chunk_is_lost",
    "collect": "tests/vehicle/test_car_drive.py::test_collect_drives_the_car_by_keyboard_and_records",
    "compress": "tests/conftest.py::tiny_int8",
    "dashboard": "tests/system/test_dashboard.py::test_the_dashboard_follows_a_live_fleet_in_a_browser",
    "data export-donkey": "tests/edgepilot/test_cli.py::test_json_is_one_object_on_the_last_stdout_line",
    "data import-donkey": "tests/edgepilot/test_cli.py::test_json_is_one_object_on_the_last_stdout_line",
    "data info": "tests/edgepilot/test_cli.py::test_data_info_counts_match_the_tub",
    "data migrate": "tests/edgepilot/test_cli_success.py::test_data_migrate_labels_an_old_log",
    "demo": "tests/system/test_demo.py::test_demo_runs_the_whole_loop",
    "drive": "tests/system/test_car_commands.py::test_drive_sends_the_models_answers_to_the_motor_controller",
    "edge": "tests/system/test_edge_processes.py::test_two_edge_processes_split_the_requests",
    "eval": "tests/edgepilot/test_cli_success.py::test_eval_calibrate_and_keys",
    "fl client": "tests/system/test_fl.py::test_federation_survives_a_dropout_and_a_garbage_update",
    "fl proxy": "tests/system/test_fl.py::test_federation_survives_a_dropout_and_a_garbage_update",
    "fl server": "tests/system/test_fl.py::test_federation_survives_a_dropout_and_a_garbage_update",
    "keys": "tests/edgepilot/test_cli_success.py::test_eval_calibrate_and_keys",
    "models list": "tests/edgepilot/test_cli_success.py::test_models_list_promote_rollback",
    "models promote": "tests/edgepilot/test_cli_success.py::test_models_list_promote_rollback",
    "models rollback": "tests/edgepilot/test_cli_success.py::test_models_list_promote_rollback",
    "profile from-donkey": "tests/edgepilot/test_cli_success.py::test_profile_from_donkey",
    "replay": "tests/edgepilot/test_loop_model.py::test_replay_reproduces_the_recorded_pilot",
    "sim drive": "tests/edgepilot/test_cli.py::test_json_is_one_object_on_the_last_stdout_line",
    "sim tracks": "tests/vehicle/test_sim_cli.py::test_tracks_list_and_generate",
    "train": "tests/conftest.py::tiny_model",
    "upload": "tests/vehicle/test_upload.py::test_cli_upload_json_and_error_without_cloud",
}


def test_every_command_has_a_success_run():
    """The ledger covers every command, and each test it names exists."""
    missing = sorted(set(LEAVES) - set(SUCCESS_RUNS))
    assert missing == [], f"commands with no success-path test: {missing}"
    for cmd, node in SUCCESS_RUNS.items():
        path, _, name = node.partition("::")
        text = (REPO_ROOT / path).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", text, re.M), f"{cmd}: {node} does not exist"


def test_eval_calibrate_and_keys(capsys, tmp_path, tiny_model, sample_logs):
    rc, res = run_json(capsys, ["eval", tiny_model, *sample_logs, "--json"])
    assert rc == 0 and res["frames"] == 60 and 0 <= res["steering_mae"] < 1
    assert abs(sum(res["exit_rate"].values()) - 1) < 1e-9 and res["mean_macs"] > 0
    ci = res["mae_vs_final_head_ci95"]  # 60 frames are 3 blocks: a wide interval around the ratio
    assert ci["low"] <= res["mae_vs_final_head"] <= ci["high"] and ci["low"] < ci["high"]
    out = tmp_path / "cal.eppkg"
    rc, res = run_json(capsys, ["calibrate", tiny_model, *sample_logs, "--out", str(out), "--json"])
    assert rc == 0 and out.exists() and "thresholds" in res
    rc, res = run_json(capsys, ["keys", "--out", str(tmp_path / "k"), "--json"])
    assert rc == 0 and Path(res["private"]).name == "signing.key" and Path(res["announce"]["private"]).name == "announce.key"
    for key in (res["private"], res["announce"]["private"]):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600
    assert res["key_id"] != res["announce"]["key_id"]  # two pairs, not one
    rc, _ = run_json(capsys, ["keys", "--out", str(tmp_path / "k"), "--json"])
    assert rc == 1  # no silent overwrite


def test_bench_loop_and_bench_model(capsys, tiny_model, tiny_int8, sample_logs):
    rc, res = run_json(capsys, ["bench", "loop", "--model", tiny_model, "--data", sample_logs[0], "--json"])
    assert rc == 0 and res["fps"] > 0 and res["latency_ms"]["p99"] >= res["latency_ms"]["p50"] > 0
    assert res["recorded"] == res["frames"] and res["record_dropped"] == 0
    rc, res = run_json(
        capsys, ["bench", "model", "--model", tiny_int8, "--baseline", tiny_model, "--data", *sample_logs, "--json"]
    )
    assert rc == 0 and res["model_ms"] > 0 and res["baseline_ms"] > 0
    assert res["speedup"] == pytest.approx(res["baseline_ms"] / res["model_ms"], rel=0.02)
    assert 0 <= res["model_mae"] < 1 and 0 <= res["baseline_mae"] < 1
    # of each model's time per frame, what preprocessing took, and the input it made
    assert 0 < res["model_preprocess_ms"] < res["model_ms"] and 0 < res["baseline_preprocess_ms"] < res["baseline_ms"]
    assert res["model_input"] == res["baseline_input"] == "160x84 yuv"  # both car nets, CAR_SPEC
    assert res["preprocess_backend"] == "opencv"  # this venv has OpenCV; a car's install: numpy


def test_models_list_promote_rollback(broker, capsys, tmp_path):
    from cloud_trainer.registry import Registry
    from cloud_trainer.store import DirStore
    from edgepilot.keys import ANNOUNCEMENTS, load_private_key, make_keys
    from tests.cloud_trainer.test_registry import make_package

    priv, pub = make_keys(tmp_path / "keys")
    ann, _ = make_keys(tmp_path / "keys", role=ANNOUNCEMENTS)
    key = load_private_key(priv)
    store = tmp_path / "store"
    reg = Registry(DirStore(store), trusted_keys=[str(pub)])
    for n in (1, 2):
        reg.add("car", make_package(tmp_path / f"m{n}.eppkg", f"cli-v{n}", key, seed=n))
    prof = tmp_path / "cloud.toml"
    prof.write_text(f'[model]\ntrusted_keys = ["{pub}"]\n')
    base = ["--store", str(store), "--profile", str(prof), "--json"]
    env = pytest.MonkeyPatch()
    env.setenv("EDGEPILOT_ANNOUNCE_KEY", str(ann))
    try:
        rc, res = run_json(capsys, ["models", "list", *base])
        assert rc == 0 and [v["version"] for v in res["versions"]] == ["cli-v1", "cli-v2"] and res["current"] is None
        for v in ("cli-v1", "cli-v2"):
            rc, res = run_json(capsys, ["models", "promote", v, *base, "--broker", broker.url])
            assert rc == 0 and res["current"] == v and res["pushed"]
        rc, res = run_json(capsys, ["models", "rollback", *base, "--broker", broker.url])
        assert rc == 0 and res["current"] == "cli-v1" and res["rolled_back"] == "cli-v2" and res["pushed"]
        assert Registry(DirStore(store)).current("car") == "cli-v1"
    finally:
        env.undo()


def test_data_migrate_labels_an_old_log(capsys, tmp_path, sample_logs):
    """A version-1 car log (no label sources): user-mode frames become human labels,
    autopilot frames unlabelled, and training then skips the latter."""
    import json

    log = tmp_path / "old"
    shutil.copytree(sample_logs[0], log)
    meta = json.loads((log / "meta.json").read_text())
    meta.update(schema=1, source="car")
    (log / "meta.json").write_text(json.dumps(meta))
    lines = [json.loads(x) for x in (log / "records.jsonl").read_text().splitlines()]
    for n, rec in enumerate(lines):
        rec.pop("label_source", None)
        rec["mode"] = "user" if n % 2 else "local"
    (log / "records.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    rc, res = run_json(capsys, ["data", "migrate", str(log), "--json"])
    assert rc == 0 and res["records"] == len(lines)
    assert res["logs"][0]["labels"] == {"human": len(lines) // 2, "none": len(lines) - len(lines) // 2}
    recs = LogReader(log).records()
    assert LogReader(log).meta.schema == 2 and {r.label_source for r in recs} == {"human", "none"}
    rc, res = run_json(capsys, ["data", "migrate", str(log), "--json"])
    assert rc == 0 and res["records"] == 0  # already migrated: nothing changes


def test_profile_from_donkey(capsys, tmp_path):
    cfg = tmp_path / "myconfig.py"
    cfg.write_text(
        "DRIVE_TRAIN_TYPE = 'PWM_STEERING_THROTTLE'\n"
        "PWM_STEERING_THROTTLE = {'PWM_STEERING_PIN': 'PCA9685.1:40.1', 'PWM_STEERING_SCALE': 1.0,"
        " 'PWM_STEERING_INVERTED': False, 'PWM_THROTTLE_PIN': 'PCA9685.1:40.0', 'PWM_THROTTLE_SCALE': 1.0,"
        " 'PWM_THROTTLE_INVERTED': False, 'STEERING_LEFT_PWM': 460, 'STEERING_RIGHT_PWM': 290,"
        " 'THROTTLE_FORWARD_PWM': 500, 'THROTTLE_STOPPED_PWM': 370, 'THROTTLE_REVERSE_PWM': 220}\n"
        "CAMERA_TYPE = 'PICAM'\nIMAGE_W = 160\nIMAGE_H = 120\n"
    )
    out = tmp_path / "car.toml"
    rc, res = run_json(capsys, ["profile", "from-donkey", str(cfg), "--out", str(out), "--base", str(cfg), "--json"])
    assert rc == 0 and res["profile"] == str(out) and out.exists()
    from edgepilot.config import load_profile

    prof = load_profile(str(out))
    assert prof.actuator.kind == "pca9685" and prof.camera.width == 160


@pytest.mark.slow  # starts edge node processes for three set-ups, one round each
@pytest.mark.processes
def test_bench_offload_fleet_and_saturate(broker, capsys):
    from tests.helpers import spawn_edge

    edge = spawn_edge(broker.url, "edge-bench-cli")
    try:
        rc, res = run_json(
            capsys,
            ["bench", "offload", "--broker", broker.url, "--vehicles", "2", "--rate", "10", "--duration", "1", "--json"],
        )
    finally:
        edge.terminate()
        edge.wait(10)
    assert rc == 0 and res["sent"] == 20 and res["rtt_ms"]["p50"] > 0 and res["tcp_floor_ms"]["p50"] > 0
    assert 0 <= res["deadline_miss_rate"] <= 1 and res["edge_compute_ms"]["p50"] > 0
    args = ["bench", "offload", "--saturate", "--broker", broker.url, "--rounds", "1", "--duration", "1"]
    rc, res = run_json(capsys, [*args, "--window", "8", "--json"])
    assert rc == 0 and set(res["median_per_s"]) == {"batch1", "batched", "two_nodes"}
    assert all(v > 0 for v in res["median_per_s"].values()) and res["batching_gain"] > 0


@pytest.mark.slow  # headless Chromium against the bench car, a few seconds per phase
def test_bench_web(capsys):
    rc, res = run_json(capsys, ["bench", "web", "--presses", "10", "--seconds", "1", "--json"])
    assert rc == 0 and res["key_to_motor_ms"]["n"] == 10
    assert 0 < res["key_to_motor_ms"]["p50"] <= res["key_to_motor_ms"]["p99"]
    assert res["no_page"]["loop_fps"] > 0 and res["ws_page"]["view_fps"] > 0
