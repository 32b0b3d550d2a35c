"""Cloud trainer pieces: the store's object semantics, the gate's decisions, DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.retrain import RetrainConfig, gate, split_sessions
from cloud_trainer.store import DirStore, open_store
from edgepilot import EdgepilotError
from tests.helpers import wait_for


def test_dir_store_is_an_object_store(tmp_path):
    s = DirStore(tmp_path / "s")
    s.put("a/b/c.bin", b"xyz")
    s.put("a/d.bin", memoryview(b"12"))
    assert s.get("a/b/c.bin") == b"xyz" and s.size("a/d.bin") == 2
    assert s.list("a/") == ["a/b/c.bin", "a/d.bin"] and s.list("zz/") == []
    with pytest.raises(KeyError):
        s.get("a/none")
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b"):
        with pytest.raises(EdgepilotError, match="safe relative path"):
            s.put(bad, b"")
    s.delete_prefix("a/b")
    assert s.list("a/") == ["a/d.bin"]
    with pytest.raises(EdgepilotError, match="S3"):
        open_store("s3://bucket/fleet")


def _m(version, mae, autonomy, cte, p50):
    return {
        "version": version,
        "steering_mae": mae,
        "latency_ms": {"p50": p50},
        "closed_loop": {"autonomy": autonomy, "mean_abs_cte_m": cte},
    }


def test_gate_promotes_only_a_model_not_worse_within_margins():
    cfg = RetrainConfig(margin_mae=0.01, margin_autonomy=0.0, margin_cte_m=0.02, latency_budget_ms=2.0)
    cur = _m("cur", 0.10, 1.0, 0.05, 1.0)
    assert gate(_m("a", 0.105, 1.0, 0.06, 1.5), cur, cfg)["passed"]  # within margins
    v = gate(_m("b", 0.12, 1.0, 0.05, 1.0), cur, cfg)
    assert not v["passed"] and [c["check"] for c in v["checks"] if not c["passed"]] == [
        "heldout_steering_mae"
    ]
    v = gate(_m("c", 0.09, 0.98, 0.05, 1.0), cur, cfg)  # better open loop, worse on the road
    assert not v["passed"] and [c["check"] for c in v["checks"] if not c["passed"]] == ["sim_autonomy"]
    v = gate(_m("d", 0.09, 1.0, 0.05, 2.5), cur, cfg)  # too slow for the car
    assert not v["passed"] and [c["check"] for c in v["checks"] if not c["passed"]] == ["latency_p50_ms"]
    first = gate(_m("e", 0.5, 0.5, 0.5, 1.0), None, cfg)  # nothing to compare with: budget only
    assert first["passed"] and first["against"] is None and len(first["checks"]) == 1


def test_sessions_are_held_out_whole_and_a_training_session_stays_one():
    keys = [f"logs/c/s{i}" for i in range(40)]
    tr, held = split_sessions(keys, 5)
    assert not set(tr) & set(held) and set(tr) | set(held) == set(keys) and 3 <= len(held) <= 15
    for n in range(2, 40):  # the store grows one session at a time, in any name order
        tr_n, held_n = split_sessions(sorted(keys[:n], key=lambda k: k[::-1]), 5)
        assert held_n and tr_n
        bigger_tr, _ = split_sessions(keys[: n + 1], 5)
        # once trained on (by a current model), never held out to judge it
        assert set(tr_n) <= set(bigger_tr), n
    # a new session that sorts first does not move the others (it did with every-5th-by-index)
    tr7, held7 = split_sessions(keys[1:8], 5)
    tr8, held8 = split_sessions(keys[:8], 5)
    assert set(tr7) <= set(tr8) and set(held7) - set(held8) <= set(tr8) - set(tr7)
    with pytest.raises(EdgepilotError, match="at least 2"):
        split_sessions(keys[:1], 5)


@pytest.mark.slow  # two torchrun trainings of 6 epochs: ~1.5 min idle, 3 min loaded
def test_two_ddp_workers_reach_the_single_process_quality(tmp_path):
    from edgepilot.model.evaluate import evaluate, load_frames
    from edgepilot.model.package import make_keys
    from edgepilot.model.runtime import Autopilot
    from edgepilot.model.synthetic import write_synthetic_log

    priv, pub = make_keys(tmp_path / "keys")
    logs = [str(write_synthetic_log(tmp_path / f"s{i}", 150, seed=i)) for i in range(3)]
    held = str(write_synthetic_log(tmp_path / "held", 100, seed=9))
    common = [*logs, "--epochs", "6", "--batch", "16", "--max-frames", "450", "--key", str(priv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        out = subprocess.run(
            [*cmd, "-m", "cloud_trainer.distributed", *common, "--out", str(tmp_path / f"w{n}.eppkg")],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[2]["workers"] == 2 and runs[1]["workers"] == 1
    frames, labels = load_frames([held])
    mae = {
        n: evaluate(Autopilot.load(r["package"], [str(pub)]), frames, labels)["steering_mae"]
        for n, r in runs.items()
    }
    assert abs(mae[2] - mae[1]) <= 0.05 + 0.25 * mae[1], mae
    # ... and that quality is learned: well below the best constant answer (the median label)
    constant = float(np.mean(np.abs(labels - np.median(labels))))
    assert max(mae.values()) < 0.6 * constant, (mae, constant)


def test_ddp_trains_the_network_and_loss_of_edgepilot_train(tmp_path, sample_logs, monkeypatch):
    """DDP (here one process, as without ``torchrun``) builds ``edgepilot train``'s default
    network (exit heads included) and trains it with its loss at its shares, says so in the
    package's training record, and builds calibration's threshold path on its training
    frames, as ``train`` does, so that every validation block tests it."""
    import cloud_trainer.distributed as ddp
    from edgepilot.model.package import make_keys, read_manifest
    from edgepilot.model.train import TrainConfig, arch_of

    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    seen, real = set(), ddp.joint_loss

    def spy(outs, target, s, th, weights, beta, learned=False, gamma=0.0):
        seen.add((tuple(weights), beta, gamma))
        return real(outs, target, s, th, weights, beta, learned, gamma)

    monkeypatch.setattr(ddp, "joint_loss", spy)
    priv, _ = make_keys(tmp_path / "keys")
    res = ddp.train_ddp(sample_logs, str(tmp_path / "w1.eppkg"), epochs=1, batch=16, key=str(priv))
    want = TrainConfig()
    assert seen == {((0.0, 4.0, 1.0), want.self_distill, want.mutual)}, seen
    m = read_manifest(res["package"])
    assert m["arch"] == arch_of(want).to_dict() and m["arch"]["head1"] == want.head1
    assert (m["training"]["self_distill"], m["training"]["mutual"]) == (want.self_distill, want.mutual)
    assert m["calibration"]["test"]["path_from"] == "training frames"


@pytest.mark.parametrize("distill", [False, True])
def test_the_edge_and_car_models_train_side_by_side_or_the_car_from_the_edge(
    tmp_path, sample_logs, distill, monkeypatch
):
    """Retraining's two models (cloud_trainer.retrain.EdgeJob): side by side, the edge
    model in a spawned process while this one trains the car model, both signed with the
    same key and the car model taught by nobody; distilled, the car model names the edge
    model it learned from."""
    from cloud_trainer.retrain import EdgeJob, _train_config
    from edgepilot.config import RetrainConfig
    from edgepilot.model.package import load_package, make_keys
    from edgepilot.model.train import train

    monkeypatch.chdir(tmp_path)  # the teacher is verified with keys/*.pub of the working directory
    priv, pub = make_keys(tmp_path / "keys")
    cfg = RetrainConfig(epochs=1, edge_epochs=1, max_frames=120, edge_max_frames=20, threads=1, distill=distill)
    with EdgeJob(sample_logs, tmp_path, cfg, str(priv)) as job:
        assert (job._pool is None) == distill  # side by side: a worker process trains the edge model
        car = train(
            sample_logs,
            tmp_path / "car.eppkg",
            _train_config(cfg, "car"),
            teacher=job.teacher(),
            key=str(priv),
        )
        edge = job.result()
    assert edge is not None and edge["arch"] == "edge" and car["arch"] == "early-exit"
    assert edge["train_frames"] == 20 < car["train_frames"]  # the edge model capped by its own max_frames
    e, c = (load_package(r["package"], [str(pub)]).manifest for r in (edge, car))  # both verify
    assert c["training"]["teacher"] == (e["version"] if distill else None)
    assert c["training"]["exit_weights"] == [0.0, 4.0, 1.0] and c["thresholds"]["exits"][0] is None


def test_a_warm_retraining_starts_both_models_from_the_current_ones(tmp_path, sample_logs, tiny_model, tiny_int8):
    """``warm_start``: the car model from the fp32 source of the current int8 one, the edge
    model from the current edge model, each for its own (short) number of epochs."""
    from cloud_trainer.registry import Registry
    from cloud_trainer.retrain import EdgeJob, _train_config, warm_starts
    from cloud_trainer.store import open_store
    from edgepilot.config import RetrainConfig
    from edgepilot.model.package import read_manifest
    from edgepilot.model.train import TrainConfig, train

    reg = Registry(open_store(str(tmp_path / "store")))
    assert warm_starts(reg) == {}
    v = reg.add("car", tiny_int8)["version"]
    reg.promote("car", v)
    assert warm_starts(reg) == {}  # an int8 model without its fp32 source: nothing to train on from
    reg.add_source(v, tiny_model)
    edge0 = train(sample_logs, tmp_path / "edge0.eppkg", TrainConfig(arch="edge", epochs=1, max_frames=40))
    reg.promote("edge", reg.add("edge", edge0["package"])["version"])
    starts = warm_starts(reg)
    assert read_manifest(starts["car"])["version"] == read_manifest(tiny_model)["version"]
    assert read_manifest(starts["edge"])["version"] == edge0["version"]
    cfg = RetrainConfig(epochs=5, edge_epochs=5, warm_edge_epochs=1, max_frames=120, edge_max_frames=40, threads=1)
    with EdgeJob(sample_logs, tmp_path, cfg, None, starts["edge"]) as job:
        edge = job.result()
    assert edge is not None and edge["epochs"] == 1
    assert read_manifest(edge["package"])["training"]["init"]["version"] == edge0["version"]
    # the car model's final head learns from exit 1 (TrainConfig.mutual) at the profile's
    # shares: more in cold runs than warm ones, which start from heads already close
    assert cfg.mutual > cfg.warm_mutual == TrainConfig.mutual > 0
    for cold, warm in ((cfg.mutual, cfg.warm_mutual), (0.2, 0.9)):
        run = replace(cfg, mutual=cold, warm_mutual=warm)
        assert (_train_config(run, "car").mutual, _train_config(run, "car", warm=True).mutual) == (cold, warm)
    # and calibrates its offload threshold to the profile's tolerance (by default the same
    # as edgepilot train's: two literals, the profile's module imports no torch)
    from edgepilot.model.calibrate import CalibrationTarget

    assert RetrainConfig().offload_tol == CalibrationTarget().ok_tol
    for warm in (False, True):
        assert _train_config(replace(cfg, offload_tol=0.03), "car", warm=warm).target.ok_tol == 0.03


def test_a_failing_car_pipeline_stops_the_edge_models_training(tmp_path, sample_logs):
    """An error while the car model is built must not leave the edge worker training on."""
    from cloud_trainer.retrain import EdgeJob
    from edgepilot.config import RetrainConfig
    from edgepilot.model.package import make_keys

    priv, _ = make_keys(tmp_path / "keys")
    cfg = RetrainConfig(epochs=50, threads=1)  # far longer than this test waits
    with (
        pytest.raises(RuntimeError, match="car pipeline"),
        EdgeJob(sample_logs, tmp_path, cfg, str(priv)) as job,
    ):
        assert wait_for(lambda: job._pool._processes, 60)
        workers = list(job._pool._processes.values())
        raise RuntimeError("the car pipeline failed")
    for w in workers:
        w.join(10)
        assert not w.is_alive()
    assert not (tmp_path / "edge.eppkg").exists()


def _steers_left(src: str, out: Path) -> Path:
    """``src`` with every head's steering pushed to full left: an edge model that is
    confidently wrong on every frame it is sent."""
    from edgepilot.model.package import load_package, load_private_key, save_package

    pkg = load_package(src)
    state = dict(pkg.state)
    for k in [k for k in state if k.endswith("head.fc2.bias")]:
        state[k] = state[k].clone()
        state[k][0] += 50.0  # the first of the steering bins: full left
        state[k][-1] += 0.3  # the throttle: on, so the car moves where it is steered
    manifest = {**pkg.manifest, "version": "steers-left"}
    return save_package(out, manifest, state, load_private_key(None))


def _offloads_everything(src: str, out: Path) -> Path:
    """``src`` re-signed with every exit's offload threshold above any confidence (<= 1):
    every frame is hard."""
    from edgepilot.model.package import load_package, load_private_key, save_package

    pkg = load_package(src)
    th = {**pkg.manifest["thresholds"], "offload": [2.0] * 3}
    return save_package(out, {**pkg.manifest, "thresholds": th}, dict(pkg.state), load_private_key(None))


def test_an_edge_model_that_steers_the_car_off_fails_its_gate(tmp_path, tiny_model):
    """The car-and-edge checks (``judge_pair``): the edge candidate answers the hard frames
    of the car the fleet will run, open loop on held-out frames and in closed loop; one that
    is further off there than the car's own answers, or makes it drive worse than alone, is
    not promoted."""
    from cloud_trainer.registry import Registry
    from cloud_trainer.retrain import judge_pair, offload_check
    from cloud_trainer.store import open_store
    from edgepilot.config import RetrainConfig
    from edgepilot.drive.slot import load_autopilot
    from edgepilot.model.evaluate import load_frames
    from edgepilot.sim.drive import scored_drives

    reg = Registry(open_store(str(tmp_path / "store")))
    from edgepilot.cli import main

    cfg = RetrainConfig(eval_tracks=["oval"], eval_seconds=4.0, margin_cte_m=0.01)
    # held-out frames in a randomised look; how many of them a two-epoch model calls hard
    # is chance, so the car here offloads every frame (its offload thresholds above 1)
    rec = tmp_path / "held"
    drive = ["sim", "drive", "--track", "oval", "--pilot", "expert", "--randomize", "--perturb", "0.3"]
    assert main([*drive, "--record", str(rec), "--max-seconds", "10", "--headless"]) == 0
    held = load_frames([str(rec)], 200)
    car_pkg = _offloads_everything(tiny_model, tmp_path / "car.eppkg")
    alone = scored_drives(load_autopilot(tiny_model), ["oval"], 4.0)
    for edge, ok in ((Path(tiny_model), True), (_steers_left(tiny_model, tmp_path / "left.eppkg"), False)):
        targets = {
            "car": {"gate": {"passed": True}, "candidate": {"closed_loop": alone}, "current": None},
            "edge": {"gate": {"passed": True, "checks": []}},
        }
        judge_pair(reg, targets, car_pkg, edge, held, cfg)
        verdict = targets["edge"]["gate"]
        names = ["heldout_offload_mae_ratio", "sim_autonomy_with_car", "sim_mean_abs_cte_m_with_car"]
        assert [c["check"] for c in verdict["checks"]] == names
        assert verdict["passed"] is ok, verdict
        assert verdict["checks"][0]["passed"] is ok, verdict  # open loop catches it without a drive
        off = targets["edge"]["with_car"]["offloaded"]
        ratio = off["edge_mae"] / off["car_mae"]
        assert off["frames"] >= cfg.edge_offload_min_frames and (ratio > cfg.edge_offload_ratio) is not ok
        assert targets["edge"]["with_car"]["with_edge"]["tracks"]["oval"]["edge_used"] > 0.05
    # fewer hard frames than the minimum: measured, shown, not judged
    car, left = load_autopilot(str(car_pkg)), load_autopilot(str(edge))
    few = RetrainConfig(edge_offload_min_frames=off["frames"] + 1)
    assert offload_check(car, left, *held, few) == (None, {"frames": off["frames"], "of": len(held[0])})
