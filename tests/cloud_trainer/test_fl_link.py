"""The federated link with Flower: TLS on loopback with the test CA, connections that cannot
prove a trusted car at the challenge sent no model, updates the server cannot attribute to
a trusted car refused unread, while the others aggregate.

A real Flower server (``run_rounds``) and real Flower clients (``run_client``, the code
``fl client``/``fl proxy`` run) in threads of this process, so that six cars cost one torch
import: a tiny network, 16 frames a car, two rounds. The command line's wiring of the same
(``--tls-*``, ``--client-keys``, ``--key``, ``--node-id``) runs as processes in
tests/system/test_fl.py."""

from __future__ import annotations

import re
import threading
import time

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


def _federate(
    link_cfg: FlLinkConfig, clients: dict[str, ClientOptions], rounds: int = 2, wait_s: float = 120
):
    """``run_rounds`` on ``link_cfg`` with every client in a thread, waiting for them all in
    round 1; (start, final, round logs, each client's summary or error)."""
    from cloud_trainer.fl import FlConfig, run_rounds
    from edgepilot.fl.client import run_client
    from edgepilot.fl.link import server_link

    tpl, start = _net()
    cfg = FlConfig(rounds=rounds, cars=len(clients), min_cars=2, wait_s=wait_s, round_timeout_s=120)
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


def test_clients_that_fail_the_challenge_get_no_model_a_replay_is_refused_the_rest_aggregate(
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
        "keyless": car("car-e", None),  # no key anywhere: told so at the challenge
    }
    # round 1 waits for all 7 connections to verify: only 3 can, so it waits its 15 s out
    wait_s = 15
    start, final, (r1, r2), res = _federate(link, clients, wait_s=wait_s)

    assert r1.seconds >= wait_s  # 7 connections did not end the wait: 3 verified cars did not either
    for r in (r1, r2):
        assert r.applied and not r.failures  # the keyless car never got a model to fail on
        assert "challenge" in r.refused["car-c"] and "unsigned answer to the challenge" in r.refused["car-c"]
        assert "does not verify with car:car-a's key" in r.refused["car-a#2"]  # the real car-a keeps its name
        assert "unknown car mallory" in r.refused["mallory"]
        for name in ("car-c", "car-a#2", "mallory"):
            assert r.refused[name].startswith("not authenticated, sent no model: "), name
        assert set(r.unauthenticated) == set(r.refused)
        assert r.bytes_down == r2.bytes_down  # the global model went to the 3 verified cars only
    assert sorted(r1.accepted) == ["car-a", "car-b", "car-d"] and len(r1.refused) == 4
    (keyless,) = set(r1.refused) - {"car-c", "car-a#2", "mallory"}  # named by its connection
    assert "no answer to the challenge" in r1.refused[keyless]
    assert sorted(r2.accepted) == ["car-a", "car-b"] and len(r2.refused) == 4
    assert r2.refused["car-d"].startswith("not authenticated: stale nonce")  # round 1's answer again
    assert "signed updates only and this car has no key" in str(res["keyless"])
    assert "edgepilot keys --car car-e" in str(res["keyless"])
    for name in ("unsigned", "impostor", "mallory"):  # challenged each round, never sent the model
        assert (res[name]["challenges"], res[name]["models_received"], res[name]["rounds"]) == (2, 0, 0), name
    for name in ("car-a", "car-b", "replay"):
        assert (res[name]["challenges"], res[name]["models_received"]) == (2, 2), name
    assert any(np.abs(f - s).sum() > 0 for f, s in zip(final, start, strict=True))
    assert all(np.isfinite(f).all() for f in final)
    assert (res["car-a"]["signer"], res["car-b"]["signer"]) == ("car:car-a", "node:edge-1")
    assert res["car-b"]["rounds"] == 2


class _Conn:
    """One connection as the strategy sees it (Flower's ``ClientProxy``): it answers the
    challenge as ``car``, signed by ``ident`` (unsigned without), and counts the challenges."""

    def __init__(self, cid: str, car: str, ident) -> None:
        self.cid, self.car, self.ident, self.challenges = cid, car, ident, 0

    def get_properties(self, ins, timeout: float | None, group_id: int | None):
        from flwr.common import Code, GetPropertiesRes, Status

        self.challenges += 1
        rnd, nonce = ins.config["round"], ins.config["challenge"]
        props = {"car": self.car, "round": rnd, "nonce": nonce}
        if self.ident is not None:
            props.update(self.ident.hello(self.car, rnd, nonce))
        return GetPropertiesRes(Status(Code.OK, ""), props)


class _Silent(_Conn):
    """A connection that never answers: Flower's request times out."""

    def get_properties(self, ins, timeout: float | None, group_id: int | None):
        self.challenges += 1
        raise TimeoutError(f"no answer within {timeout} s")


class _Fleet:
    """Flower's client manager as the strategy uses it; ``join`` connects another car later."""

    def __init__(self, *conns: _Conn) -> None:
        self.conns = {c.cid: c for c in conns}

    def all(self) -> dict:
        return dict(self.conns)

    def wait_for(self, num_clients: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.conns) < num_clients and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.conns) >= num_clients

    def join(self, conn: _Conn, after_s: float) -> None:
        threading.Timer(after_s, lambda: self.conns.__setitem__(conn.cid, conn)).start()


def _trusting_strategy(fleet, cars: int, wait_s: float):
    from cloud_trainer.fl import FlConfig, _strategy_class

    tpl, start = _net()
    cfg = FlConfig(cars=cars, min_cars=1, wait_s=wait_s)
    return _strategy_class()(cfg, tpl, start, load_trust(fleet)), tpl, start


def test_the_cars_wait_counts_only_connections_that_answer_the_challenge(fleet, tmp_path):
    from flwr.common import ndarrays_to_parameters

    car_a = load_identity("car", "car-a", str(fleet / "cars/car-a.key"))
    mallory = load_identity("car", "mallory", str(tmp_path / "strangers/cars/mallory.key"))
    bad = [_Conn("p1", "mallory", mallory), _Conn("p2", "car-c", None), _Silent("p9", "car-d", None)]
    strategy, _, start = _trusting_strategy(fleet, cars=2, wait_s=1.0)
    cm = _Fleet(_Conn("p0", "car-a", car_a), *bad)
    t0 = time.monotonic()
    ins = strategy.configure_fit(1, ndarrays_to_parameters(start), cm)
    assert time.monotonic() - t0 >= 1.0  # 3 connections, 1 verified car: the wait for 2 ran out
    assert [p.cid for p, _ in ins] == ["p0"] and [c.challenges for c in bad] == [1, 1, 1]  # asked once
    r = strategy.rounds[-1]
    assert sorted(r.refused) == ["car-c", "mallory", "p9"] and sorted(r.unauthenticated) == sorted(r.refused)
    assert "unsigned answer to the challenge" in r.refused["car-c"]
    assert "no answer to the challenge (TimeoutError)" in r.refused["p9"]
    # a second trusted car connecting during the wait ends it
    car_c = load_identity("car", "car-c", str(fleet / "cars/car-c.key"))
    strategy, _, start = _trusting_strategy(fleet, cars=2, wait_s=30)
    cm = _Fleet(_Conn("p0", "car-a", car_a), *bad)
    cm.join(_Conn("p3", "car-c", car_c), after_s=0.3)
    t0 = time.monotonic()
    ins = strategy.configure_fit(1, ndarrays_to_parameters(start), cm)
    assert time.monotonic() - t0 < 10 and sorted(p.cid for p, _ in ins) == ["p0", "p3"]
    assert len({i.config["nonce"] for _, i in ins}) == 2 and all(i.config["signed"] for _, i in ins)


def test_a_removed_key_is_refused_from_the_next_round_and_unreadable_keys_trust_nobody(fleet, caplog):
    """Revocation without a restart: the server reads its client keys again each round. Round
    1 admits car-a and car-c; car-c's .pub is removed; round 2 refuses car-c and still admits
    car-a. A key directory that no longer loads (a malformed .pub) refuses everyone (fail
    closed) until it is mended."""
    from flwr.common import ndarrays_to_parameters

    car_a = load_identity("car", "car-a", str(fleet / "cars/car-a.key"))
    car_c = load_identity("car", "car-c", str(fleet / "cars/car-c.key"))
    strategy, _, start = _trusting_strategy(fleet, cars=2, wait_s=0.5)
    cm = _Fleet(_Conn("p0", "car-a", car_a), _Conn("p1", "car-c", car_c))
    params = ndarrays_to_parameters(start)

    def admitted(rnd: int) -> list[str]:
        return sorted(p.cid for p, _ in strategy.configure_fit(rnd, params, cm))

    assert admitted(1) == ["p0", "p1"]
    (fleet / "cars/car-c.pub").unlink()
    assert admitted(2) == ["p0"]
    assert "unknown car car-c" in strategy.rounds[-1].refused["car-c"]
    assert "round 2: client keys changed: 2 car key(s)" in caplog.text
    good = (fleet / "cars/car-a.pub").read_bytes()
    (fleet / "cars/car-a.pub").write_text("not a key\n")
    assert admitted(3) == []
    refused = strategy.rounds[-1].refused
    assert sorted(refused) == ["car-a", "car-c"]
    assert all("the server's client keys do not load" in why for why in refused.values())
    (fleet / "cars/car-a.pub").write_bytes(good)
    assert admitted(4) == ["p0"]


def test_a_duplicate_car_in_a_round_is_refused(fleet):
    """Two connections, both signing validly as car-a (its key copied to a second machine):
    the first to answer the challenge gets the model, the second nothing. An admitted
    connection's update must be for the car it answered as, over its own nonce. Flower's own
    result objects."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from edgepilot.fl.codec import CodecConfig, Encoder

    car_a = load_identity("car", "car-a", str(fleet / "cars/car-a.key"))
    car_c = load_identity("car", "car-c", str(fleet / "cars/car-c.key"))
    strategy, tpl, start = _trusting_strategy(fleet, cars=2, wait_s=1)
    cm = _Fleet(_Conn("p0", "car-a", car_a), _Conn("p1", "car-a", car_a), _Conn("p2", "car-c", car_c))
    ins = {p.cid: i.config for p, i in strategy.configure_fit(1, ndarrays_to_parameters(start), cm)}
    assert sorted(ins) == ["p0", "p2"]
    r = strategy.rounds[-1]
    assert "duplicate: car-a already answered the challenge" in r.refused["car-a#2"]
    blob = Encoder(CodecConfig("none")).encode([np.full(s, 0.01, np.float32) for s in tpl.shapes])
    params = ndarrays_to_parameters([np.frombuffer(blob, np.uint8)])

    def answer(cid: str, car: str, ident, nonce: str) -> tuple:
        metrics = {"car": car, "round": 1, "nonce": nonce, **ident.sign(car, 1, nonce, blob, 10)}
        return cm.conns[cid], FitRes(Status(Code.OK, ""), params, 10, metrics)

    results = [
        answer("p0", "car-a", car_a, ins["p0"]["nonce"]),
        answer("p2", "car-a", car_a, ins["p2"]["nonce"]),  # car-c's connection, car-a's key too
        (cm.conns["p2"], answer("p0", "car-a", car_a, ins["p0"]["nonce"])[1]),  # p0's answer on p2
    ]
    _, metrics = strategy.aggregate_fit(1, results, [])
    assert r.accepted == ["car-a"] and metrics["accepted"] == 1
    assert "an update for car-a on the connection of car-c" in r.refused["car-a#3"]
    assert "stale nonce" in r.refused["car-a#4"]
    assert r.unauthenticated == ["car-a#2", "car-a#3", "car-a#4"]


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
