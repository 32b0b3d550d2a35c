"""The federated link with Flower: TLS on loopback with the test CA, and updates the server
cannot attribute to a trusted car refused unread while the others aggregate.

A real Flower server (``run_rounds``) and real Flower clients (``run_client``, the code
``fl client``/``fl proxy`` run) in threads of this process, so that six cars cost one torch
import: a tiny network, 16 frames a car, two rounds. The command line's wiring of the same
(``--tls-*``, ``--client-keys``, ``--key``, ``--node-id``) runs as processes in
tests/system/test_fl.py."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.broker import free_port
from edgepilot.cli import main
from edgepilot.config import FlLinkConfig
from edgepilot.fl.auth import load_identity, load_trust
from edgepilot.fl.options import ClientOptions

pytest.importorskip("flwr")


@pytest.fixture
def fleet(tmp_path):
    """Trusted: car-a, car-c, car-d and node edge-1 for car-b. Not trusted: mallory."""
    keys = tmp_path / "keys"
    for argv in (["--car", "car-a"], ["--car", "car-c"], ["--car", "car-d"]):
        assert main(["keys", "--out", str(keys), *argv]) == 0
    assert main(["keys", "--out", str(keys), "--node", "edge-1", "--for", "car-b"]) == 0
    assert main(["keys", "--out", str(tmp_path / "strangers"), "--car", "mallory"]) == 0
    return keys


def _net():
    from edgepilot.fl.weights import get_arrays, template_of
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.preprocess import DEFAULT_SPEC

    net = build_net(ArchSpec("early-exit", [4, 4, 8, 8, 8, 8]), DEFAULT_SPEC)
    tpl = template_of(net, DEFAULT_SPEC)
    return tpl, get_arrays(net, tpl)


def _federate(link_cfg: FlLinkConfig, clients: dict[str, ClientOptions], rounds: int = 2):
    """``run_rounds`` on ``link_cfg`` with every client in a thread; (start, final, round
    logs, each client's summary or error)."""
    from cloud_trainer.fl import FlConfig, run_rounds
    from edgepilot.fl.client import run_client
    from edgepilot.fl.link import server_link

    tpl, start = _net()
    cfg = FlConfig(rounds=rounds, cars=len(clients), min_cars=2, wait_s=120, round_timeout_s=120)
    cfg.epochs, cfg.batch = 1, 8
    out: dict[str, object] = {}

    def server() -> None:
        try:
            out["server"] = run_rounds(cfg, tpl, start, server_link(link_cfg))
        except Exception as e:  # noqa: BLE001 - shown by the assertion below
            out["server"] = e

    def client(name: str, opts: ClientOptions) -> None:
        try:
            out[name] = run_client(opts)
        except EdgepilotError as e:
            out[name] = e

    threads = [threading.Thread(target=server, daemon=True)]
    threads += [threading.Thread(target=client, args=kv, daemon=True) for kv in clients.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "the federation did not finish"
    assert isinstance(out["server"], tuple), out["server"]
    final, rounds_log = out.pop("server")
    return start, final, rounds_log, out


def test_unsigned_impersonated_replayed_and_unknown_updates_are_refused_the_rest_aggregate(
    fleet, tmp_path, tls_ca, sample_logs
):
    ca, _ = tls_ca
    addr = f"127.0.0.1:{free_port()}"
    link = FlLinkConfig(
        listen=addr,
        tls_cert=str(ca / "server.crt"),
        tls_key=str(ca / "server.key"),
        tls_ca=str(ca / "ca.crt"),
        client_keys=str(fleet),
    )

    def car(car: str, key: str | None, **kw) -> ClientOptions:
        return ClientOptions(
            car, sample_logs, addr, max_frames=16, connect_timeout_s=60, tls_ca=str(ca / "ca.crt"), key=key,
            **kw,
        )  # fmt: skip

    clients = {
        "car-a": car("car-a", str(fleet / "cars/car-a.key")),
        "car-b": car("car-b", str(fleet / "nodes/edge-1.key"), role="edge", node="edge-1"),
        "unsigned": car("car-c", str(fleet / "cars/car-c.key"), fault="unsigned", fault_round=0),
        "impostor": car("car-a", str(fleet / "cars/car-c.key")),  # car-a, with car-c's key
        "replay": car("car-d", str(fleet / "cars/car-d.key"), fault="replay", fault_round=2),
        "mallory": car("mallory", str(tmp_path / "strangers/cars/mallory.key")),
        "keyless": car("car-e", None),  # no key anywhere: told so before it trains
    }
    start, final, (r1, r2), res = _federate(link, clients)

    for r in (r1, r2):
        assert r.applied
        assert r.refused["car-c"].startswith("not authenticated: unsigned update")
        assert "does not verify with car:car-a's key" in r.refused["car-a#2"]  # the real car-a keeps its name
        assert "unknown car mallory" in r.refused["mallory"]
    assert sorted(r1.accepted) == ["car-a", "car-b", "car-d"] and len(r1.refused) == 3
    assert sorted(r2.accepted) == ["car-a", "car-b"] and len(r2.refused) == 4
    assert "stale nonce" in r2.refused["car-d"]  # round 1's signed answer, sent again
    assert set(r1.unauthenticated) == set(r1.refused) and set(r2.unauthenticated) == set(r2.refused)
    assert len(r1.failures) == 1 and not r2.failures  # the keyless car stopped in round 1
    assert "signed updates only and this car has no key" in str(res["keyless"])
    assert "edgepilot keys --car car-e" in str(res["keyless"])
    assert any(np.abs(f - s).sum() > 0 for f, s in zip(final, start, strict=True))
    assert all(np.isfinite(f).all() for f in final)
    assert (res["car-a"]["signer"], res["car-b"]["signer"]) == ("car:car-a", "node:edge-1")
    assert res["car-b"]["rounds"] == 2 and res["mallory"]["rounds"] == 2  # refused, not disconnected


def test_a_duplicate_car_in_a_round_is_refused(fleet):
    """Two connections, both signing validly as car-a (its key copied to a second machine):
    the first answer counts, the second is refused. Flower's own result objects."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from cloud_trainer.fl import FlConfig, _strategy_class
    from edgepilot.fl.codec import CodecConfig, Encoder
    from tests.cloud_trainer.test_fl import _Cars

    tpl, start = _net()
    strategy = _strategy_class()(FlConfig(cars=3, min_cars=1, wait_s=1), tpl, start, load_trust(fleet))
    cars = _Cars(3)
    ins = {p.cid: i.config for p, i in strategy.configure_fit(1, ndarrays_to_parameters(start), cars)}
    assert len({c["nonce"] for c in ins.values()}) == 3 and all(c["signed"] for c in ins.values())
    blob = Encoder(CodecConfig("none")).encode([np.full(s, 0.01, np.float32) for s in tpl.shapes])
    ident = load_identity("car", "car-a", str(fleet / "cars/car-a.key"))
    results = []
    for cid in ("p0", "p1"):
        nonce = ins[cid]["nonce"]
        metrics = {"car": "car-a", "round": 1, "nonce": nonce, **ident.sign("car-a", 1, nonce, blob, 10)}
        params = ndarrays_to_parameters([np.frombuffer(blob, np.uint8)])
        res = FitRes(Status(Code.OK, ""), params, 10, metrics)
        results.append((cars.cars[cid], res))
    # p1's answer on p2's connection: signed over another nonce
    results.append((cars.cars["p2"], results[1][1]))
    _, metrics = strategy.aggregate_fit(1, results, [])
    r = strategy.rounds[-1]
    assert r.accepted == ["car-a"] and metrics["accepted"] == 1
    assert "duplicate: car-a already sent an update this round" in r.refused["car-a#2"]
    assert "stale nonce" in r.refused["car-a#3"] and r.unauthenticated == ["car-a#2", "car-a#3"]


def test_clients_without_the_ca_or_without_tls_fail_clearly(tls_ca, tmp_path, sample_logs, capsys):
    from flwr.server import SimpleClientManager
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

    from edgepilot.fl.link import server_certificates

    ca, other = tls_ca
    certs = server_certificates(str(ca / "server.crt"), str(ca / "server.key"), str(ca / "ca.crt"))
    tls, plain = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [
        start_grpc_server(client_manager=SimpleClientManager(), server_address=tls, certificates=certs),
        start_grpc_server(client_manager=SimpleClientManager(), server_address=plain),
    ]
    base = ["fl", "client", sample_logs[0], "--car", "car-a", "--connect-timeout", "10"]
    with_ca = ["--tls-ca", str(ca / "ca.crt")]
    try:
        for extra, why in (
            (["--server", tls], f"the federated server at {tls} speaks TLS: give the CA"),
            (["--server", tls, "--tls-ca", str(other / "ca.crt")], "its certificate does not verify against"),
            (["--server", plain, *with_ca], "no TLS handshake with the federated server"),
            (["--server", "192.0.2.1:9092"], "refusing to connect to the federated server 192.0.2.1:9092 in"),
            (["--server", tls, "--tls-ca", str(tmp_path / "no.crt")], "tls_ca .*no.crt: no such file"),
            (["--server", tls, *with_ca, "--key", str(tmp_path / "no.key")], "no such key"),
        ):
            assert main([*base, *extra]) == 1, extra
            err = capsys.readouterr().err.strip().splitlines()
            assert err and re.search(why, err[-1]), (extra, err[-3:])
    finally:
        for s in servers:
            s.stop(grace=0)


def test_the_server_refuses_plaintext_off_loopback_and_bad_certificates(tls_ca, tmp_path, capsys):
    ca, other = tls_ca
    base = ["fl", "server", "--store", str(tmp_path / "store"), "--init", str(tmp_path / "none.eppkg")]
    tls = ["--tls-cert", str(ca / "server.crt"), "--tls-key", str(ca / "server.key")]
    for extra, why in (
        (["--listen", "0.0.0.0:9092"], "refusing to serve federated learning on 0.0.0.0:9092 without TLS"),
        (["--listen", "0.0.0.0:9092", *tls], r"without client keys \(--client-keys\)"),
        (["--tls-cert", str(ca / "server.crt"), "--tls-key", str(other / "server.key")], "is not the key of"),
        (["--tls-cert", str(tmp_path / "none.crt"), "--tls-key", str(ca / "server.key")], "no such file"),
        (["--client-keys", str(tmp_path / "nowhere")], "client keys .*nowhere: no such directory"),
    ):
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert re.search(why, err), (extra, err[-400:])
