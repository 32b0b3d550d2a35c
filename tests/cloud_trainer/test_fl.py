"""The federated server's strategy, fed Flower's own result objects: refusals, the minimum
number of cars, the weighted average; and where the federated run starts from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.fl.codec import CodecConfig, Encoder

pytest.importorskip("flwr")


@dataclass
class _Proxy:
    cid: str


class _Cars:
    """Flower's client manager as the strategy uses it: who is connected."""

    def __init__(self, n: int) -> None:
        self.cars = {f"p{i}": _Proxy(f"p{i}") for i in range(n)}
        self.waited: list[int] = []

    def wait_for(self, num_clients: int, timeout: int) -> bool:
        self.waited.append(num_clients)
        return len(self.cars) >= num_clients

    def all(self) -> dict:
        return self.cars


def _strategy(min_cars: int, cars: int = 3):
    from cloud_trainer.fl import FlConfig, _strategy_class
    from edgepilot.fl.weights import template_of
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.preprocess import DEFAULT_SPEC

    net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
    tpl = template_of(net, DEFAULT_SPEC)
    start = [np.zeros(s, np.float32) for s in tpl.shapes]
    return _strategy_class()(FlConfig(cars=cars, min_cars=min_cars, wait_s=1), tpl, start), tpl


def _result(car: str, update: list[np.ndarray], samples: int, mode: str = "none"):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    blob = Encoder(CodecConfig(mode)).encode(update)
    params = ndarrays_to_parameters([np.frombuffer(blob, np.uint8)])
    return _Proxy(car), FitRes(Status(Code.OK, ""), params, samples, {"car": car})


def _round(strategy, cars: _Cars, results: list, failures: list | None = None):
    from flwr.common import ndarrays_to_parameters

    ins = strategy.configure_fit(1, ndarrays_to_parameters(strategy.global_arrays), cars)
    assert len(ins) == len(cars.cars)
    cfg = ins[0][1].config
    assert cfg["round"] == 1 and cfg["compress"] == "topk-int8" and "early-exit" in cfg["arch"]
    return strategy.aggregate_fit(1, results, failures or [])


def test_a_round_averages_the_good_updates_and_refuses_the_rest():
    strategy, tpl = _strategy(min_cars=2)
    ones = [np.ones(s, np.float32) * 0.01 for s in tpl.shapes]
    threes = [np.ones(s, np.float32) * 0.03 for s in tpl.shapes]
    wrong = [np.ones((3, 3), np.float32)]
    params, metrics = _round(
        strategy,
        _Cars(4),
        [_result("a", ones, 30), _result("b", threes, 10), _result("c", wrong, 10, "int8")],
        [TimeoutError("car d: no answer before the round's deadline")],
    )
    assert params is not None and metrics == {"accepted": 2, "refused": 1, "failures": 1}
    for g in strategy.global_arrays:  # (30 * 0.01 + 10 * 0.03) / 40
        assert np.allclose(g, 0.015)
    r = strategy.rounds[-1]
    assert r.accepted == ["a", "b"] and "tensors" in r.refused["c"] and "deadline" in r.failures[0]
    assert r.bytes_up > 0 and r.applied


def test_too_few_usable_updates_leave_the_global_model_as_it_was():
    strategy, tpl = _strategy(min_cars=3)
    ones = [np.ones(s, np.float32) for s in tpl.shapes]
    nan = [np.full(s, np.nan, np.float32) for s in tpl.shapes]
    params, metrics = _round(
        strategy, _Cars(3), [_result("a", ones, 5), _result("b", ones, 5), _result("c", nan, 5)]
    )
    assert params is None and metrics["accepted"] == 2 and not strategy.rounds[-1].applied
    assert all(not g.any() for g in strategy.global_arrays)


def test_a_round_without_enough_cars_sends_nothing():
    from flwr.common import ndarrays_to_parameters

    strategy, _ = _strategy(min_cars=2, cars=3)
    cars = _Cars(1)
    assert strategy.configure_fit(1, ndarrays_to_parameters(strategy.global_arrays), cars) == []
    assert cars.waited == [3]  # round 1 waits for the whole fleet it expects ...
    strategy.configure_fit(2, ndarrays_to_parameters(strategy.global_arrays), cars)
    assert cars.waited == [3, 2]  # ... later rounds only for the minimum


def test_the_run_starts_from_the_current_models_fp32_source(tmp_path, tiny_model, tiny_int8):
    from cloud_trainer.fl import start_package
    from cloud_trainer.registry import Registry
    from cloud_trainer.store import open_store

    reg = Registry(open_store(str(tmp_path / "store")))
    with pytest.raises(EdgepilotError, match="no current car model"):
        start_package(reg, None)
    v = reg.add("car", tiny_int8)["version"]
    reg.promote("car", v)
    with pytest.raises(EdgepilotError, match="int8 and the registry kept no fp32 source"):
        start_package(reg, None)
    reg.add_source(v, tiny_model)
    raw = Path(tiny_model).read_bytes()
    assert start_package(reg, None).read_bytes() == raw
    assert reg.get("car", v)["source"]["size"] == len(raw)


def test_a_car_without_torch_is_told_to_use_an_edge_node(capsys, monkeypatch):
    import importlib.util

    from edgepilot.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert main(["fl", "client", "--car", "c1"]) == 1
    err = capsys.readouterr().err
    assert "no torch" in err and "edgepilot fl proxy" in err


def test_a_round_is_trained_with_the_servers_distillation_shares(monkeypatch, sample_logs):
    """The server tells the cars its loss shares (``edgepilot train``'s, the mutual one
    from the profile's ``[cloud] warm_mutual``: the cars fine-tune the current model); a car
    trains with ``joint_loss`` at the shares it is told, and at the same defaults when an
    older server sends none; a share outside [0, 1] is refused on either side before a car
    trains."""
    import edgepilot.fl.local as local
    from cloud_trainer.fl import FlConfig
    from edgepilot.config import RetrainConfig
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.preprocess import DEFAULT_SPEC
    from edgepilot.model.train import TrainConfig

    seen, real = set(), local.joint_loss

    def spy(outs, target, s, th, weights, beta, learned=False, gamma=0.0):
        seen.add((beta, gamma))
        return real(outs, target, s, th, weights, beta, learned, gamma)

    monkeypatch.setattr(local, "joint_loss", spy)
    sent = FlConfig().fit_config(1, "early-exit", "default")
    warm = (TrainConfig().self_distill, RetrainConfig().warm_mutual)
    assert (sent["self_distill"], sent["mutual"]) == warm and warm[1] > 0
    samples = local.car_samples(sample_logs[:1])
    for told, want in ((sent, warm), ({**sent, "self_distill": 0.2, "mutual": 0.0}, (0.2, 0.0)), ({}, warm)):
        seen.clear()
        net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
        local.local_train(net, DEFAULT_SPEC, samples, local.LocalConfig.from_config({**told, "epochs": 1}))
        assert seen == {want}, (told, seen)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(EdgepilotError, match="mutual is a share"):
            local.LocalConfig.from_config({"mutual": bad})
        with pytest.raises(EdgepilotError, match="self_distill is a share"):
            FlConfig(self_distill=bad)


def test_the_federated_model_is_calibrated_to_the_profiles_offload_tolerance(tmp_path, sample_logs):
    """The server calibrates the averaged model for the profile's ``offload_tol`` as a
    central run does: a tolerance no answer meets offloads more frames than one every
    answer meets, up to what calibration allows (``max_offload``)."""
    import torch

    from edgepilot.fl.weights import save_federated
    from edgepilot.model.calibrate import CalibrationTarget
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.package import make_keys, read_manifest
    from edgepilot.model.preprocess import DEFAULT_SPEC

    priv, _ = make_keys(tmp_path / "keys")
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
    rates = {}
    for tol in (10.0, 1e-4):
        res = save_federated(net, DEFAULT_SPEC, tmp_path / f"{tol}.eppkg", sample_logs, key=str(priv),
                             parent=None, training={}, ok_tol=tol)
        cal = read_manifest(res["package"])["calibration"]
        assert cal["target"]["ok_tol"] == tol
        rates[tol] = cal["val_offload_rate"]
    assert rates[10.0] < rates[1e-4] <= CalibrationTarget().max_offload + 1e-9, rates


def test_the_federated_model_is_calibrated_on_the_held_out_reference_sessions(tmp_path, sample_logs):
    """As a central run: exits are tested on the server's held-out reference sessions, every
    block of them, against a threshold path built on its other sessions; with one reference
    log (nothing else to build it on) half of its blocks build the path, none test twice."""
    import torch

    from cloud_trainer.fl import FlConfig, _save_global
    from edgepilot.fl.weights import template_of
    from edgepilot.model.data import load_samples
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.package import make_keys, read_manifest
    from edgepilot.model.preprocess import DEFAULT_SPEC

    priv, _ = make_keys(tmp_path / "keys")
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
    tpl = template_of(net, DEFAULT_SPEC)
    held, others = sample_logs[:1], sample_logs[1:]
    assert others, "the sample logs have more than one session"
    n_held = len(load_samples(held).samples)
    for name, logs, path_from, tested in (
        ("split", (held, others), "training frames", n_held),
        ("one", (held, held), "validation half A", None),
    ):
        res = _save_global(net, tpl, tmp_path / name, logs, str(priv), None, ["car0"], FlConfig(), 0.05)
        m = read_manifest(res["package"])
        test = m["calibration"]["test"]
        assert test["path_from"] == path_from, test
        assert m["training"]["calib_logs"] == held
        assert m["training"]["path_logs"] == ([] if logs[1] == held else others)
        if tested is not None:  # whole blocks of the held-out frames, none kept back to build the path
            assert n_held - test["block"] < test["test_frames"] <= n_held, (test, n_held)
        else:
            assert test["test_frames"] <= n_held // 2 + test["block"], (test, n_held)


def test_the_early_exits_heads_get_their_own_top_k_share(sample_logs):
    """The server tells the cars a top-k share for the heads of the early exits the loss
    trains (exit 1's; exit 0 is not trained); every other tensor, the final head
    included, keeps the round's share; a server that does not send it gets one share."""
    import json

    import edgepilot.fl.local as local
    from cloud_trainer.fl import FlConfig
    from edgepilot.fl.client import CarTrainer
    from edgepilot.fl.codec import UpdateError, decode
    from edgepilot.fl.options import ClientOptions
    from edgepilot.fl.weights import template_of
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.preprocess import DEFAULT_SPEC

    cfg = FlConfig(compress="topk", ratio=0.04, exit_ratio=0.5)  # float values: none rounds to 0
    arch = ArchSpec("early-exit", [8, 8, 16, 16, 16, 16])
    sent = cfg.fit_config(1, json.dumps(arch.to_dict()), json.dumps(DEFAULT_SPEC.to_dict()))
    assert (sent["ratio"], sent["exit_ratio"]) == (0.04, 0.5)
    net = build_net(arch, DEFAULT_SPEC)
    tpl = template_of(net, DEFAULT_SPEC)
    start = [v.detach().numpy().copy() for v in net.state_dict().values() if v.is_floating_point()]
    samples = local.car_samples(sample_logs[:1], 32)
    for told, exit_share in ((sent, 0.5), ({k: v for k, v in sent.items() if k != "exit_ratio"}, 0.04)):
        car = CarTrainer(ClientOptions("car-a", sample_logs[:1]), samples)
        blob, _, _ = car.fit(start, {**told, "epochs": 1, "nonce": "n"})
        _, update = decode(blob, tpl.shapes)
        for key, u in zip(tpl.keys, update, strict=True):
            if u.size <= 256:
                continue  # sent whole whatever the share
            want = exit_share if key.startswith("stages.1.head.") else 0.04
            assert np.count_nonzero(u) == math.ceil(want * u.size), (key, told.get("exit_ratio"))
    assert local.tensor_ratios(tpl.keys, 3, 0.04, 0.04) == ()
    with pytest.raises(EdgepilotError, match="ratio"):
        FlConfig(exit_ratio=0.0)
    # the fault a test fleet injects still reaches the server as a wrong-shaped update
    bad = CarTrainer(ClientOptions("car-b", sample_logs[:1], fault="shape", fault_round=0), samples)
    blob, _, _ = bad.fit(start, {**sent, "epochs": 1, "nonce": "n"})
    with pytest.raises(UpdateError, match="tensors"):
        decode(blob, tpl.shapes)
