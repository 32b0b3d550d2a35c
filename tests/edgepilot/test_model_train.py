"""Training end to end: a tiny run on the sample logs (< 1 minute), learning on synthetic
logs, determinism under a seed, the by-session split and the augmentations."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.model.augment import AugmentConfig, flip, lateral_shift, light, noise, shadow
from edgepilot.model.data import Sample, load_samples, split_by_session
from edgepilot.model.evaluate import evaluate, load_frames
from edgepilot.model.package import load_package, make_keys, read_manifest
from edgepilot.model.preprocess import CAR_SPEC, DEFAULT_SPEC
from edgepilot.model.runtime import Autopilot
from edgepilot.model.synthetic import road_frame, write_synthetic_log
from edgepilot.model.train import TrainConfig, train

SAMPLES = Path(__file__).resolve().parents[2] / "datasets" / "samples"
SIM_SAMPLES = [str(SAMPLES / "sim-oval"), str(SAMPLES / "sim-s_bends")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return make_keys(d)


@pytest.fixture(scope="module")
def synthetic_logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    return [str(write_synthetic_log(d / f"s{i}", frames=80, seed=i)) for i in range(4)]


def test_tiny_end_to_end_on_the_sample_logs(tmp_path, keys):
    priv, pub = keys
    out = tmp_path / "tiny.eppkg"
    r = train(SIM_SAMPLES, out, TrainConfig(epochs=2, batch=16), key=str(priv))
    assert r["samples"] == 60 and r["epochs"] == 2
    assert np.isfinite(r["val_steering_mae"])
    assert Path(r["curve"]).stat().st_size > 1000  # the training-curve PNG
    m = read_manifest(out)
    assert m["arch"]["name"] == "early-exit" and m["quant"] == "fp32"
    assert sorted(m["training"]["sessions"]) == sorted(load_samples(SIM_SAMPLES).sessions)
    assert len(m["thresholds"]["exits"]) == 2
    assert r["calibration_test"] == m["calibration"]["test"] and r["val_frames"] == m["metrics"]["val_frames"]
    assert r["calibration_test"]["test_frames"] == r["val_frames"] > 0 and r["calibration_test"]["test_blocks"] >= 2
    ap = Autopilot.load(out, [str(pub)])
    frames, labels = load_frames(SIM_SAMPLES)
    ev = evaluate(ap, frames, labels)
    assert ev["frames"] == 60 and abs(sum(ev["exit_rate"].values()) - 1) < 1e-9


def test_training_learns_the_road(tmp_path, keys, synthetic_logs):
    priv, pub = keys
    r = train(synthetic_logs, tmp_path / "m.eppkg", TrainConfig(epochs=6, batch=16), key=str(priv))
    labels = np.array([s.steering for s in load_samples(synthetic_logs).samples])
    spread = np.abs(labels - labels.mean()).mean()  # MAE of always answering the mean
    assert r["val_steering_mae"] < 0.25 * spread
    ap = Autopilot.load(tmp_path / "m.eppkg", [str(pub)])
    rng = np.random.default_rng(7)
    left, right = (
        ap.infer(road_frame(-0.6, rng), force_final=True),
        ap.infer(road_frame(0.6, rng), force_final=True),
    )
    assert left.steering < -0.3 and right.steering > 0.3


def test_deterministic_under_a_seed(tmp_path, keys, synthetic_logs):
    priv, _ = keys
    cfg = TrainConfig(epochs=1, batch=32, max_frames=100, seed=3)
    shas = []
    for n in range(2):
        out = tmp_path / f"d{n}.eppkg"
        train(synthetic_logs, out, cfg, key=str(priv))
        shas.append(read_manifest(out)["weights_sha256"])
    assert shas[0] == shas[1]
    train(
        synthetic_logs,
        tmp_path / "other.eppkg",
        TrainConfig(epochs=1, batch=32, max_frames=100, seed=4),
        key=str(priv),
    )
    assert read_manifest(tmp_path / "other.eppkg")["weights_sha256"] != shas[0]


def test_the_frame_cap_thins_the_training_frames_and_keeps_every_validation_frame(tmp_path, keys, synthetic_logs):
    """``max_frames`` bounds the training time; calibration's test needs every validation
    block, so the cap never thins them (given apart, as the cloud does, or picked by seed)."""
    priv, _ = keys
    cfg = TrainConfig(epochs=1, batch=32, max_frames=100)
    given = train(synthetic_logs[:3], tmp_path / "g.eppkg", cfg, key=str(priv), val_logs=synthetic_logs[3:])
    picked = train(synthetic_logs, tmp_path / "p.eppkg", cfg, key=str(priv))
    for r in (given, picked):
        m = read_manifest(r["package"])
        assert r["train_frames"] == m["metrics"]["train_frames"] == 100  # 240 training frames, capped
        assert len(m["training"]["val_sessions"]) == 1 and r["val_frames"] == 80  # one whole session
    assert read_manifest(given["package"])["training"]["val_logs"] == synthetic_logs[3:]


def test_distillation_from_a_teacher(tmp_path, keys, synthetic_logs):
    priv, pub = keys
    teacher = tmp_path / "teacher.eppkg"
    train(
        synthetic_logs, teacher, TrainConfig(arch="edge", epochs=1, batch=32, max_frames=100), key=str(priv)
    )
    # a trusted-key lookup: the teacher is verified like any package (keys/ of the repo or cwd)
    import edgepilot.model.train as tr

    orig = tr.load_package
    tr.load_package = lambda p, keys=None: orig(p, [str(pub)])
    try:
        r = train(
            synthetic_logs,
            tmp_path / "student.eppkg",
            TrainConfig(epochs=1, batch=32, max_frames=100),
            teacher=teacher,
            key=str(priv),
        )
    finally:
        tr.load_package = orig
    m = read_manifest(tmp_path / "student.eppkg")
    assert m["training"]["teacher"] == read_manifest(teacher)["version"]
    assert np.isfinite(r["val_steering_mae"])
    # the teacher took PilotNet's 66x200 YUV, the student the car's 160x84
    assert read_manifest(teacher)["input"] == DEFAULT_SPEC.to_dict() and m["input"] == CAR_SPEC.to_dict()


def test_a_new_car_model_takes_the_cars_input_a_warm_start_keeps_its_own(tmp_path, keys, synthetic_logs):
    priv, pub = keys
    cfg = TrainConfig(epochs=1, batch=32, max_frames=100)
    new = train(synthetic_logs, tmp_path / "new.eppkg", cfg, key=str(priv))
    assert read_manifest(new["package"])["input"] == CAR_SPEC.to_dict()
    # a car model from before CAR_SPEC (PilotNet's input) retrains on PilotNet's input
    old = train(synthetic_logs[:3], tmp_path / "old.eppkg", cfg, key=str(priv), spec=DEFAULT_SPEC)
    warm = train(synthetic_logs, tmp_path / "warm.eppkg", cfg, init=old["package"], key=str(priv), trusted=[str(pub)])
    assert read_manifest(warm["package"])["input"] == DEFAULT_SPEC.to_dict()
    ap = Autopilot.load(warm["package"], [str(pub)])
    assert ap.spec == DEFAULT_SPEC and np.isfinite(ap.infer(road_frame(0.3, np.random.default_rng(0))).steering)


def test_a_warm_start_keeps_what_its_start_learned_out_of_validation(tmp_path, keys, synthetic_logs):
    priv, pub = keys
    first = train(synthetic_logs[:3], tmp_path / "a.eppkg", TrainConfig(epochs=1, batch=32), key=str(priv))
    a = read_manifest(first["package"])["training"]
    learned = set(a["sessions"]) - set(a["val_sessions"])
    assert a["val_sessions"] and len(learned) == 2 and a["init"] is None
    # a zero learning rate leaves the weights where the warm start put them
    warm = TrainConfig(epochs=1, batch=32, lr=0.0)
    second = train(
        synthetic_logs, tmp_path / "b.eppkg", warm, init=first["package"], key=str(priv), trusted=[str(pub)]
    )
    b = read_manifest(second["package"])["training"]
    assert b["init"] == {"version": first["version"], "seen_sessions": sorted(learned)}
    assert b["val_sessions"] and not set(b["val_sessions"]) & learned
    sa, sb = (load_package(r["package"], [str(pub)]).state for r in (first, second))
    params = [k for k in sa if k.endswith(("weight", "bias")) and "running" not in k]
    assert params and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in params)
    # what the start's own start learned is carried on; nothing new to validate on is refused
    third = train(synthetic_logs, tmp_path / "c.eppkg", warm, init=second["package"], key=str(priv), trusted=[str(pub)])
    c = read_manifest(third["package"])["training"]
    assert learned | (set(b["sessions"]) - set(b["val_sessions"])) == set(c["init"]["seen_sessions"])
    known = [g for g in synthetic_logs if load_samples([g]).sessions[0] in c["init"]["seen_sessions"]]
    with pytest.raises(EdgepilotError, match="needs a new session"):
        train(known, tmp_path / "d.eppkg", warm, init=second["package"], key=str(priv), trusted=[str(pub)])
    with pytest.raises(EdgepilotError, match="same architecture"):
        train(
            synthetic_logs,
            tmp_path / "e.eppkg",
            TrainConfig(arch="edge", epochs=1),
            init=first["package"],
            key=str(priv),
            trusted=[str(pub)],
        )


def test_validation_logs_given_apart_validate_and_every_other_session_trains(tmp_path, keys, synthetic_logs):
    """The cloud's way: its held-out sessions validate (and calibrate), all the others
    train. A validation session that also trains, or that the starting weights learned, is
    refused. Recalibration finds the recorded validation session again in the same logs."""
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.recalibrate import recalibrate

    priv, pub = keys
    sid = {g: load_samples([g]).sessions[0] for g in synthetic_logs}
    cfg = TrainConfig(epochs=1, batch=32)
    r = train(synthetic_logs[:3], tmp_path / "a.eppkg", cfg, key=str(priv), val_logs=synthetic_logs[3:])
    m = read_manifest(r["package"])
    t = m["training"]
    assert t["val_sessions"] == [sid[synthetic_logs[3]]] and t["val_logs"] == synthetic_logs[3:]
    assert sorted(t["sessions"]) == sorted(sid.values())  # every session: three train, one validates
    assert m["metrics"]["train_frames"] == 240 and m["metrics"]["val_frames"] == 80
    assert r["calibration_test"]["test_frames"] == 80
    with pytest.raises(EdgepilotError, match="also train"):
        train(synthetic_logs, tmp_path / "b.eppkg", cfg, key=str(priv), val_logs=synthetic_logs[3:])
    # by seed, these logs would validate on another session than the one the cloud gave
    by_seed = split_by_session(load_samples(synthetic_logs).samples, cfg.val_fraction, cfg.seed)[1]
    assert {s.session for s in by_seed} != {sid[synthetic_logs[3]]}
    out = recalibrate(
        r["package"], tmp_path / "c.eppkg", synthetic_logs, CalibrationTarget(), key=str(priv), trusted=[str(pub)]
    )
    again = read_manifest(out["package"])["calibration"]
    assert again["val_steering_mae_final"] == m["calibration"]["val_steering_mae_final"]  # the same frames
    assert again["exits"] == m["calibration"]["exits"]
    # a warm start validates again on what its start only validated on (the cloud's held-out sessions)
    warm = train(
        synthetic_logs[:3], tmp_path / "d.eppkg", cfg, key=str(priv), init=r["package"], trusted=[str(pub)],
        val_logs=synthetic_logs[3:],
    )
    assert read_manifest(warm["package"])["training"]["val_sessions"] == [sid[synthetic_logs[3]]]
    with pytest.raises(EdgepilotError, match="learned by the starting weights"):
        train(
            synthetic_logs[3:], tmp_path / "e.eppkg", cfg, key=str(priv), init=r["package"], trusted=[str(pub)],
            val_logs=synthetic_logs[:1],
        )


def test_split_is_by_session_never_by_frame():
    samples = [Sample(b"", 0.0, 0.0, f"sess{i % 5}") for i in range(500)]
    train_s, val_s = split_by_session(samples, 0.2, seed=1)
    assert {s.session for s in train_s}.isdisjoint({s.session for s in val_s})
    assert len(train_s) + len(val_s) == 500 and len(val_s) >= 100
    one = [Sample(b"", 0.0, 0.0, "only") for _ in range(1000)]
    t, v = split_by_session(one, 0.2, block=100)
    assert len(v) == 200 and len(t) == 800
    with pytest.raises(EdgepilotError):
        split_by_session(one[:50], 0.2, block=100)
    # sessions a warm start's weights learned from stay in training
    for seed in range(5):
        t, v = split_by_session(samples, 0.2, seed=seed, seen={"sess0", "sess1", "sess2", "sess3"})
        assert {s.session for s in v} == {"sess4"} and len(t) == 400
    with pytest.raises(EdgepilotError, match="needs a new session"):
        split_by_session(samples, 0.2, seen={f"sess{i}" for i in range(5)})


def test_flip_and_shift_correct_the_steering():
    rng = np.random.default_rng(0)
    f = road_frame(0.3, rng)
    g, s = flip(f, 0.3)
    assert s == -0.3 and np.array_equal(g[:, 0], f[:, -1])
    cfg = AugmentConfig()
    shifted, s2 = lateral_shift(f, 0.0, 16.0, cfg)
    assert s2 > 0  # the road moved right in the image: steer right to get back
    assert np.array_equal(shifted[:30], f[:30])  # above the horizon nothing moves
    assert not np.array_equal(shifted[-1], f[-1])  # the bottom row moved
    _, s3 = lateral_shift(f, 0.0, -16.0, cfg)
    assert s3 == pytest.approx(-s2)


def test_light_and_shadow_by_lookup_give_the_bytes_of_their_float_arithmetic():
    """The lookup tables are a speed-up only: the same draws give the bytes the formulas give."""
    cfg, f = AugmentConfig(), road_frame(0.2, np.random.default_rng(1))
    for seed in range(20):
        r = np.random.default_rng(seed)
        gain, cast = r.uniform(*cfg.brightness), r.uniform(-cfg.cast, cfg.cast, size=3)
        want = np.clip(f.astype(np.float32) * gain + cast, 0, 255).astype(np.uint8)
        assert np.array_equal(light(f, np.random.default_rng(seed), cfg), want)
        dark = shadow(f, np.random.default_rng(seed), cfg)
        changed = (dark != f).any(2)
        r = np.random.default_rng(seed)
        r.uniform(size=2), r.uniform(), r.uniform(size=4)  # the quadrilateral's draws
        factor = r.uniform(*cfg.shadow)
        assert changed.any()
        assert np.array_equal(dark[changed], (f[changed].astype(np.float32) * factor).astype(np.uint8))


def test_noise_draws_its_sigma_on_every_channel_and_repeats_under_a_seed():
    cfg, flat = AugmentConfig(), np.full((120, 160, 3), 128, np.uint8)
    for seed in range(10):
        sigma = np.random.default_rng(seed).uniform(0, cfg.noise_sigma)
        n = noise(flat, np.random.default_rng(seed), cfg).astype(np.float64) - 128
        assert np.array_equal(n, noise(flat, np.random.default_rng(seed), cfg).astype(np.float64) - 128)
        if sigma > 2:  # truncation to uint8 biases the mean by about -0.5
            for c in range(3):
                assert n[..., c].std() == pytest.approx(sigma, rel=0.06)
                assert abs(n[..., c].mean() + 0.5) < 0.1
    a, b = (noise(flat, np.random.default_rng(s), cfg) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_damaged_log_is_counted_not_fatal(tmp_path):
    log = write_synthetic_log(tmp_path / "log", frames=20)
    (log / "images" / "000003.jpg").write_bytes(b"")
    with open(log / "records.jsonl", "a") as f:
        f.write('{"i": 99, "t": 1.0, "steering": 7}\n')
    loaded = load_samples([str(log)])
    assert len(loaded.samples) == 19 and loaded.skipped == 2


def test_packages_are_zip_with_three_members(tmp_path, keys, synthetic_logs):
    priv, _ = keys
    out = tmp_path / "p.eppkg"
    train(synthetic_logs[:2], out, TrainConfig(arch="pilotnet", epochs=1, max_frames=100), key=str(priv))
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["manifest.json", "signature.json", "weights.pt"]
        assert json.loads(z.read("signature.json"))["alg"] == "ed25519"


@pytest.mark.parametrize("arch", ["early-exit", "pilotnet"])
def test_early_exit_nets_keep_the_last_epoch_single_exit_nets_the_best(
    tmp_path, keys, synthetic_logs, monkeypatch, arch
):
    """Validation that only gets worse: a net with early exits still runs every epoch and
    keeps the last (its validation frames are left to test the exit thresholds); a
    single-exit net stops after ``patience`` epochs and keeps the first."""
    import edgepilot.model.train as tr

    real, calls = tr.predict_exits, [0]

    def worse_each_time(net, loader):
        steer, conf, labels = real(net, loader)
        calls[0] += 1
        return steer[:-1] + [steer[-1] + 0.1 * calls[0]], conf, labels

    monkeypatch.setattr(tr, "predict_exits", worse_each_time)
    priv, _ = keys
    cfg = TrainConfig(arch=arch, epochs=3, patience=1, batch=32, max_frames=100)
    r = train(synthetic_logs, tmp_path / "m.eppkg", cfg, key=str(priv))
    m = read_manifest(tmp_path / "m.eppkg")["metrics"]
    if arch == "early-exit":
        assert r["epochs"] == 3 and m["best_epoch"] == 3
    else:
        assert r["epochs"] == 2 and m["best_epoch"] == 1


def test_a_learned_confidence_predicts_each_exits_own_error(tmp_path, keys, synthetic_logs):
    """``confidence="learned"``: every head has one more output, trained to predict that
    exit's steering error against the label; the runtime's confidence is 1 minus it, in
    the fp32 package and in the ONNX Runtime int8 one the car runs."""
    from edgepilot.model.compress import compress_package

    priv, pub = keys
    out = tmp_path / "learned.eppkg"
    r = train(synthetic_logs, out, TrainConfig(epochs=6, batch=16, confidence="learned"), key=str(priv))
    m = read_manifest(out)
    assert m["arch"]["confidence"] == "learned" and r["thresholds"]["exits"][0] is None
    pkg = load_package(out, [str(pub)])
    assert pkg.state["stages.2.head.fc2.bias"].shape[0] == 23  # 21 bins, throttle, error
    ap = Autopilot.load(out, [str(pub)])
    frames, labels = load_frames(synthetic_logs)
    decs = [ap.infer(f, force_final=True) for f in frames]
    conf = np.array([d.confidence for d in decs])
    err = np.abs(np.array([d.steering for d in decs]) - labels)
    assert ((conf >= 0) & (conf <= 1)).all()
    # it learned the scale of the error it makes (predicted 1 - conf against the real one)
    assert 0.2 < (1 - conf).mean() / err.mean() < 5.0, ((1 - conf).mean(), err.mean())
    int8 = compress_package(str(out), str(tmp_path / "learned-onnx.eppkg"), synthetic_logs, key=str(priv),
                            trusted=[str(pub)], runtime="onnx")
    car = Autopilot.load(int8["package"], [str(pub)])
    conf8 = np.array([car.infer(f, force_final=True).confidence for f in frames])
    assert np.abs(conf8 - conf).mean() < 0.05


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_the_final_head_learns_from_exit_1_by_the_mutual_share(gamma):
    """``mutual`` (gamma): the final head's target is the label's mixed with exit 1's
    detached answer. Fitting the final head's outputs alone, they go to the label at 0 and
    to exit 1's answer at 1, and no gradient reaches exit 1 through the final head's loss."""
    import torch

    from edgepilot.model.nets import decode
    from edgepilot.model.train import joint_loss, soft_targets

    torch.manual_seed(0)
    steer, thr = torch.rand(16) * 1.6 - 0.8, torch.rand(16)
    exit1 = torch.randn(16, 22, requires_grad=True)  # 21 steering bins and the throttle
    final = torch.zeros(16, 22, requires_grad=True)
    opt = torch.optim.Adam([final], lr=0.05)
    for _ in range(400):
        loss = joint_loss([torch.zeros(16, 22), exit1, final], soft_targets(steer, 21, 1.0), steer, thr,
                          [0.0, 0.0, 1.0], 0.5, gamma=gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert exit1.grad is None or not exit1.grad.any()
    got, want_exit1 = decode(final.detach())[0], decode(exit1.detach())[0]
    towards, away = (steer, want_exit1) if gamma == 0 else (want_exit1, steer)
    assert (got - towards).abs().mean() < 0.02 < (got - away).abs().mean(), ((got - towards).abs().mean(), (got - away).abs().mean())


def test_edgepilot_train_learns_mutually_as_the_cloud_does(tmp_path, synthetic_logs):
    """``edgepilot train``, cold or warm (``--init``), trains with the cloud's warm mutual
    share unless told otherwise (the cloud's cold runs learn more from exit 1: its small
    first fleets); the manifest says which; a share outside [0, 1] is refused."""
    from edgepilot.cli import main
    from edgepilot.config import RetrainConfig
    from edgepilot.model.train import TrainConfig

    cold, warm, plain = tmp_path / "cold.eppkg", tmp_path / "warm.eppkg", tmp_path / "plain.eppkg"
    base = [*synthetic_logs, "--epochs", "1"]  # the repo's key, which --init trusts
    assert main(["train", *base, "--out", str(cold)]) == 0
    assert main(["train", *base, "--out", str(warm), "--init", str(cold)]) == 0
    assert main(["train", *base, "--out", str(plain), "--mutual", "0"]) == 0
    for pkg in (cold, warm):
        assert read_manifest(pkg)["training"]["mutual"] == TrainConfig().mutual == RetrainConfig().warm_mutual > 0
    assert read_manifest(plain)["training"]["mutual"] == 0.0
    assert main(["train", *base, "--out", str(tmp_path / "x.eppkg"), "--mutual", "1.5"]) != 0


def test_edgepilot_train_builds_the_exit_heads_it_is_given(tmp_path, synthetic_logs, capsys):
    """``--head0``/``--head1`` set the early exits' heads (the manifest keeps them, so the
    runtime rebuilds the same net); without them exit 1 keeps TrainConfig's head; a head
    that is not three positive integers is refused with the flag's name."""
    from edgepilot.cli import main

    base = [*synthetic_logs, "--epochs", "1"]
    wide, plain = tmp_path / "wide.eppkg", tmp_path / "plain.eppkg"
    assert main(["train", *base, "--out", str(wide), "--head0", "2,4,16", "--head1", "3,7,128"]) == 0
    assert main(["train", *base, "--out", str(plain)]) == 0
    assert (read_manifest(wide)["arch"]["head0"], read_manifest(wide)["arch"]["head1"]) == ([2, 4, 16], [3, 7, 128])
    assert read_manifest(plain)["arch"]["head1"] == TrainConfig().head1
    capsys.readouterr()
    assert main(["train", *base, "--out", str(tmp_path / "x.eppkg"), "--head1", "3,7"]) != 0
    assert "--head1 must be 3 positive integers" in capsys.readouterr().err
