"""A small federation on loopback: a real Flower server (``edgepilot fl server``) and four
client processes: a car training itself (``fl client``), an edge node training for a
car (``fl proxy``), a car whose every update carries a NaN and a car that dies mid-round.
The rounds go on without the last two, and the result goes through the gate and the
registry like a centrally trained model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from edgepilot.broker import free_port
from edgepilot.config import BrokerConfig
from edgepilot.delivery import verify_announcement
from edgepilot.model.package import load_package
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet, wire
from edgepilot.supervise import Supervisor
from tests.helpers import wait_for


def retained_announcement(url: str, target: str) -> fleet.PushAnnouncement:
    """The announcement retained on ``wire.model_topic(target)``, as a car that connects now reads it."""
    got: list[bytes] = []
    conn = Connection(BrokerConfig(url=url), "test-fl-announcement")
    conn.subscribe(wire.model_topic(target), lambda m: m.payload and got.append(m.payload), qos=1)
    conn.start()
    try:
        assert wait_for(lambda: got, 10), "no retained announcement"
    finally:
        conn.close()
    return fleet.decode_announcement(got[-1])


def _state(path):
    pkg = load_package(path)
    return pkg.manifest, {k: v.numpy() for k, v in pkg.state.items() if v.is_floating_point()}


def test_federation_survives_a_dropout_and_a_garbage_update(broker, tmp_path, tiny_model, sample_logs):
    from cloud_trainer.registry import Registry
    from cloud_trainer.store import open_store

    addr = f"127.0.0.1:{free_port()}"
    store = tmp_path / "store"
    oval, bends = sample_logs
    with Supervisor(tmp_path / "proc") as sup:
        server = sup.edgepilot(
            "server", "fl", "server", "--store", str(store), "--listen", addr, "--init", tiny_model,
            "--reference", *sample_logs, "--rounds", "2", "--cars", "4", "--min-cars", "2", "--wait", "300",
            "--local-epochs", "1", "--eval-tracks", "", "--workdir", str(tmp_path / "work"), "--broker", broker.url,
            "--json", expect_exit=True,
        )  # fmt: skip
        common = ("--server", addr, "--connect-timeout", "300", "--json")
        sup.edgepilot("car-a", "fl", "client", oval, "--car", "car-a", *common, expect_exit=True)
        sup.edgepilot("car-b", "fl", "proxy", bends, "--car", "car-b", *common, expect_exit=True)
        sup.edgepilot(
            "garbage", "fl", "client", oval, "--car", "garbage", "--fault", "nan", "--fault-round", "0",
            *common, expect_exit=True,
        )  # fmt: skip
        drop = sup.edgepilot(
            "dropout", "fl", "client", bends, "--car", "dropout", "--fault", "drop", *common, expect_exit=True
        )
        assert sup.wait("server", timeout=1200) == 0, server.tail(40)
        res = server.json_result()
        a, b = (sup.children[n] for n in ("car-a", "car-b"))
        assert sup.wait("car-a", timeout=60) == 0 and sup.wait("car-b", timeout=60) == 0
        assert drop.proc.wait(timeout=60) == 3  # it died mid-round 1, after training
        sup.stop("garbage")

    r1, r2 = res["rounds"]
    assert set(r1["cars"]) == {"car-a", "car-b", "garbage"} and len(r1["failures"]) == 1  # the dropout
    for r in (r1, r2):
        assert sorted(r["accepted"]) == ["car-a", "car-b"] and r["applied"]
        assert list(r["refused"]) == ["garbage"] and "non-finite" in r["refused"]["garbage"]
    assert "dropout" not in r2["cars"] and not r2["failures"]
    fed = res["federated"]
    assert fed["rounds_applied"] == 2 and fed["updates_refused"] == 2 and fed["failures"] == 1

    # what the cars sent: compressed updates, far below the model's own size
    ca, cb = a.json_result(), b.json_result()
    assert (ca["role"], cb["role"], ca["rounds"], cb["rounds"]) == ("car", "edge", 2, 2)
    _, init_state = _state(tiny_model)
    dense = 4 * sum(v.size for v in init_state.values())
    assert 0 < ca["bytes_sent"] < 2 * dense / 10  # two rounds, each under a tenth of fp32
    assert fed["bytes_up"] >= ca["bytes_sent"] + cb["bytes_sent"]

    # the result went through the gate into the registry, its fp32 source kept
    assert res["promoted"] == ["car"] and res["targets"]["car"]["gate"]["passed"]
    reg = Registry(open_store(str(store)))
    cur = reg.current("car")
    assert cur == res["targets"]["car"]["candidate"]["version"] and reg.get("car", cur)["quant"] == "int8"
    manifest, state = _state(reg.source_path(cur))
    init_manifest, _ = _state(tiny_model)
    assert manifest["parent"] == init_manifest["version"] and manifest["training"]["federated"]
    assert manifest["training"]["cars"] == ["car-a", "car-b"]
    moved = sum(float(np.abs(state[k] - init_state[k]).sum()) for k in state)
    assert moved > 0 and all(np.isfinite(v).all() for v in state.values())
    # and it was announced to the fleet as a central run's model is: signed, retained
    assert res["pushed"]
    ann = retained_announcement(broker.url, "car")
    assert ann.version == cur and not ann.rollback
    verify_announcement(ann, None)  # the repository's announcement key (keys/announce.pub) signed it


def test_a_federation_over_tls_with_signed_updates_aggregates_every_car(
    tmp_path, tiny_model, sample_logs, tls_ca
):
    """The secured link through the command line: the server on TLS with the test CA and
    client keys, a car signing with its own key (``fl client``) and an edge node signing as
    itself for a car it is listed for (``fl proxy``); every update is taken. The refusals
    (unsigned, another car's key, a replay, an unknown car) run in
    tests/cloud_trainer/test_fl_link.py."""
    from edgepilot.cli import main

    ca, _ = tls_ca
    keys = tmp_path / "keys"
    assert main(["keys", "--out", str(keys), "--car", "car-a"]) == 0
    assert main(["keys", "--out", str(keys), "--node", "edge-7", "--for", "car-b"]) == 0
    addr = f"127.0.0.1:{free_port()}"
    oval, bends = sample_logs
    with Supervisor(tmp_path / "proc") as sup:
        server = sup.edgepilot(
            "server", "fl", "server", "--store", str(tmp_path / "store"), "--listen", addr, "--init", tiny_model,
            "--reference", *sample_logs, "--rounds", "2", "--cars", "2", "--wait", "300", "--local-epochs", "1",
            "--eval-tracks", "", "--workdir", str(tmp_path / "work"), "--no-push", "--json",
            "--tls-cert", str(ca / "server.crt"), "--tls-key", str(ca / "server.key"), "--tls-ca", str(ca / "ca.crt"),
            "--client-keys", str(keys), expect_exit=True,
        )  # fmt: skip
        common = ("--server", addr, "--tls-ca", str(ca / "ca.crt"), "--connect-timeout", "300", "--json")
        sup.edgepilot(
            "car-a", "fl", "client", oval, "--car", "car-a", "--key", str(keys / "cars/car-a.key"), *common,
            expect_exit=True,
        )  # fmt: skip
        sup.edgepilot(
            "car-b", "fl", "proxy", bends, "--car", "car-b", "--node-id", "edge-7",
            "--key", str(keys / "nodes/edge-7.key"), *common, expect_exit=True,
        )  # fmt: skip
        assert sup.wait("server", timeout=1200) == 0, server.tail(40)
        res = server.json_result()
        assert sup.wait("car-a", timeout=60) == 0 and sup.wait("car-b", timeout=60) == 0
        ca_res, cb_res = (sup.children[n].json_result() for n in ("car-a", "car-b"))

    for r in res["rounds"]:
        assert sorted(r["accepted"]) == ["car-a", "car-b"] and r["applied"]
        assert not r["refused"] and not r["unauthenticated"] and not r["failures"]
    fed = res["federated"]
    assert fed["tls"] and fed["authenticated"] and fed["updates_accepted"] == 4
    assert (ca_res["signer"], cb_res["signer"]) == ("car:car-a", "node:edge-7")
    assert res["train"] == ["car:car-a", "car:car-b"]


def test_server_refuses_bad_settings_before_any_car_trains(capsys):
    from edgepilot.cli import main

    rc = main(["fl", "server", "--cars", "2", "--min-cars", "3", "--init", sys.executable])
    assert rc == 1 and "min_cars must be between 1 and cars (2), got 3" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_fl_compares_with_central_retraining(capsys, tmp_path):
    """``bench fl`` at its smallest: two cars, one round. Its numbers mean little at this
    size (docs/benchmarks.md has the real run); what must hold is the comparison itself."""
    from tests.helpers import run_json

    argv = ["bench", "fl", "--cars", "2", "--laps", "1", "--rounds", "1", "--epochs", "1"]
    argv += ["--strategies", "fedavg", "--eval-seconds", "3", "--workdir", str(tmp_path), "--json"]
    rc, res = run_json(capsys, argv)
    assert rc == 0
    for key in ("fl_mae", "central_mae", "fl_bytes", "log_bytes", "autonomy"):  # the contract's keys
        assert key in res
    assert res["strategy"] == "fedavg" and 0 < res["fl_mae"] < 1 and 0 < res["central_mae"] < 1
    assert 0 < res["fl_bytes"] < res["log_bytes"] and res["bytes_ratio"] > 1
    (r1,) = res["robustness"].values()
    assert r1["accepted"] == 2 and "garbage" in r1["refused"] and r1["failures"] == 1
    roles = sorted(c["role"] for c in res["runs"]["fedavg"]["clients"])
    assert roles == ["car", "edge"] and all(c["rounds"] == 1 for c in res["runs"]["fedavg"]["clients"])
