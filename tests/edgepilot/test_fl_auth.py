"""The federated link without Flower: car and node keys (``edgepilot keys --car/--node``),
signed answers to the server's challenge and signed updates and what the server's checks
refuse (``edgepilot.fl.auth``), and the TLS settings each end accepts (``edgepilot.fl.link``)."""

from __future__ import annotations

import base64
import shutil

import pytest

from edgepilot import EdgepilotError
from edgepilot.config import FlLinkConfig
from edgepilot.fl.auth import AuthError, load_identity, load_trust, new_nonce
from edgepilot.fl.link import client_root_certificates, is_loopback, server_certificates, server_link
from tests.helpers import run_json

PAYLOAD = b"EPU1 an encoded update"


@pytest.fixture
def fleet(tmp_path, capsys):
    """Keys for car-a, car-c and node edge-1 (acting for car-b), made by the CLI, and a
    stranger's key nobody trusts."""
    keys = tmp_path / "keys"
    for argv in (["--car", "car-a"], ["--car", "car-c"], ["--node", "edge-1", "--for", "car-b"]):
        rc, res = run_json(capsys, ["keys", "--out", str(keys), *argv, "--json"])
        assert rc == 0 and res["public"].endswith(".pub") and len(res["key_id"]) == 16
    assert res["cars"] == ["car-b"] and (keys / "nodes" / "edge-1.cars").read_text() == "car-b\n"
    assert (keys / "cars" / "car-a.key").stat().st_mode & 0o077 == 0
    rc, _ = run_json(capsys, ["keys", "--out", str(tmp_path / "elsewhere"), "--car", "mallory", "--json"])
    assert rc == 0
    return keys


def _ident(fleet, kind: str, name: str, key: str | None = None):
    sub = "cars" if kind == "car" else "nodes"
    return load_identity(kind, name, str(key or fleet / sub / f"{name}.key"))


def _metrics(ident, car: str, rnd: int, nonce: str, payload: bytes = PAYLOAD, samples: int = 30) -> dict:
    return {"car": car, "round": rnd, "nonce": nonce, **ident.sign(car, rnd, nonce, payload, samples)}


def test_a_car_and_a_node_sign_updates_the_server_verifies(fleet):
    trust = load_trust(fleet)
    assert sorted(trust.cars) == ["car-a", "car-c"] and trust.acts_for == {"edge-1": frozenset({"car-b"})}
    nonce = new_nonce()
    car_a = _ident(fleet, "car", "car-a")
    assert trust.verify(_metrics(car_a, "car-a", 3, nonce), 3, nonce, PAYLOAD, 30) == "car-a"
    node = _ident(fleet, "node", "edge-1")
    assert node.signer == "node:edge-1"
    assert trust.verify(_metrics(node, "car-b", 3, nonce), 3, nonce, PAYLOAD, 30) == "car-b"


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unsigned", "unsigned update"),
        ("another car's key", "does not verify with car:car-a's key"),
        ("a car signing for another", "car car-c signs for car car-a"),
        ("unknown car", "unknown car mallory"),
        ("node not listed for the car", "node edge-1 may not train for car car-a"),
        ("replayed from round 2", "stale nonce"),
        ("nonce forged to this round's", "does not verify"),
        ("update altered", "does not verify"),
        ("sample count altered", "does not verify"),
        ("garbage signature", "does not verify"),
    ],
)
def test_the_server_refuses_an_update_it_cannot_attribute(fleet, tmp_path, case, why):
    trust = load_trust(fleet)
    old, nonce = new_nonce(), new_nonce()
    car_a, car_c = _ident(fleet, "car", "car-a"), _ident(fleet, "car", "car-c")
    payload, samples = PAYLOAD, 30
    m = _metrics(car_a, "car-a", 3, nonce)
    if case == "unsigned":
        m = {"car": "car-a", "round": 3}
    elif case == "another car's key":
        m = _metrics(load_identity("car", "car-a", str(fleet / "cars" / "car-c.key")), "car-a", 3, nonce)
    elif case == "a car signing for another":
        m = _metrics(car_c, "car-a", 3, nonce)  # signer car:car-c
    elif case == "unknown car":
        stranger = _ident(fleet, "car", "mallory", tmp_path / "elsewhere/cars/mallory.key")
        m = _metrics(stranger, "mallory", 3, nonce)
    elif case == "node not listed for the car":
        m = _metrics(_ident(fleet, "node", "edge-1"), "car-a", 3, nonce)
    elif case == "replayed from round 2":
        m = _metrics(car_a, "car-a", 2, old)
    elif case == "nonce forged to this round's":
        m = {**_metrics(car_a, "car-a", 2, old), "round": 3, "nonce": nonce}
    elif case == "update altered":
        payload = PAYLOAD + b"!"
    elif case == "sample count altered":
        samples = 3000
    elif case == "garbage signature":
        m["sig"] = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(AuthError, match=why):
        trust.verify(m, 3, nonce, payload, samples)


def _hello(ident, car: str, rnd: int, nonce: str) -> dict:
    return {"car": car, "round": rnd, "nonce": nonce, **ident.hello(car, rnd, nonce)}


def test_a_car_and_a_node_answer_the_challenge_the_server_verifies(fleet):
    trust = load_trust(fleet)
    nonce = new_nonce()
    car_a, node = _ident(fleet, "car", "car-a"), _ident(fleet, "node", "edge-1")
    assert trust.verify_hello(_hello(car_a, "car-a", 1, nonce), 1, nonce) == "car-a"
    assert trust.verify_hello(_hello(node, "car-b", 4, nonce), 4, nonce) == "car-b"


def test_a_hello_and_an_update_signature_never_pass_for_each_other(fleet):
    """Same key, same round, same nonce: the two domains keep them apart."""
    trust = load_trust(fleet)
    nonce = new_nonce()
    car_a = _ident(fleet, "car", "car-a")
    hello = _hello(car_a, "car-a", 3, nonce)
    with pytest.raises(AuthError, match="does not verify"):
        trust.verify(hello, 3, nonce, PAYLOAD, 30)
    with pytest.raises(AuthError, match="does not verify"):
        trust.verify(hello, 3, nonce, b"", 0)  # not even over an empty update
    update = _metrics(car_a, "car-a", 3, nonce)
    with pytest.raises(AuthError, match="the answer to the challenge does not verify"):
        trust.verify_hello(update, 3, nonce)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unsigned", "unsigned answer to the challenge"),
        ("another car's key", "does not verify with car:car-a's key"),
        ("a car answering for another", "car car-c signs for car car-a"),
        ("unknown car", "unknown car mallory"),
        ("node not listed for the car", "node edge-1 may not train for car car-a"),
        ("no car", "names no valid car"),
        ("another connection's nonce", "for another challenge than round 3's"),
        ("an earlier round's answer", "for another challenge than round 3's"),
        ("round forged to this one", "does not verify"),
        ("garbage signature", "does not verify"),
    ],
)
def test_the_server_refuses_an_answer_to_the_challenge_it_cannot_attribute(fleet, tmp_path, case, why):
    trust = load_trust(fleet)
    other, nonce = new_nonce(), new_nonce()
    car_a, car_c = _ident(fleet, "car", "car-a"), _ident(fleet, "car", "car-c")
    props = _hello(car_a, "car-a", 3, nonce)
    if case == "unsigned":
        props = {"car": "car-a", "round": 3, "nonce": nonce}
    elif case == "another car's key":
        props = _hello(load_identity("car", "car-a", str(fleet / "cars" / "car-c.key")), "car-a", 3, nonce)
    elif case == "a car answering for another":
        props = _hello(car_c, "car-a", 3, nonce)
    elif case == "unknown car":
        stranger = _ident(fleet, "car", "mallory", tmp_path / "elsewhere/cars/mallory.key")
        props = _hello(stranger, "mallory", 3, nonce)
    elif case == "node not listed for the car":
        props = _hello(_ident(fleet, "node", "edge-1"), "car-a", 3, nonce)
    elif case == "no car":
        props.pop("car")
    elif case == "another connection's nonce":
        props = _hello(car_a, "car-a", 3, other)
    elif case == "an earlier round's answer":
        props = _hello(car_a, "car-a", 2, nonce)
    elif case == "round forged to this one":
        props = {**_hello(car_a, "car-a", 2, nonce), "round": 3}
    elif case == "garbage signature":
        props["sig"] = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(AuthError, match=why):
        trust.verify_hello(props, 3, nonce)


def test_client_keys_and_identities_fail_clearly(fleet, tmp_path):
    with pytest.raises(EdgepilotError, match="no such directory"):
        load_trust(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgepilotError, match=r"no cars/\*\.pub or nodes/\*\.pub"):
        load_trust(tmp_path / "empty")
    (fleet / "nodes" / "edge-9.cars").write_text("car-a\n")
    with pytest.raises(EdgepilotError, match="node edge-9, which has no edge-9.pub"):
        load_trust(fleet)
    (fleet / "nodes" / "edge-9.cars").unlink()
    (fleet / "cars" / "car-x.pub").write_text("not a key\n")
    with pytest.raises(EdgepilotError, match="not a base64 Ed25519 public key"):
        load_trust(fleet)
    with pytest.raises(EdgepilotError, match=r"no such key \(make one with `edgepilot keys --car car-a`\)"):
        load_identity("car", "car-a", str(tmp_path / "missing.key"))
    with pytest.raises(EdgepilotError, match="use 1-64 of"):
        load_identity("car", "../car-a", None)
    rc = __import__("edgepilot.cli", fromlist=["main"]).main(["keys", "--out", str(fleet), "--car", "car-a"])
    assert rc == 1  # no silent replacement of a car's key


def test_loopback_goes_plaintext_anywhere_else_needs_tls_and_client_keys(fleet, tls_ca):
    ca, other = tls_ca
    assert is_loopback("127.0.0.1:9092") and is_loopback("[::1]:9092") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:9092") and not is_loopback("cloud.example:9092")
    # the server: plaintext and anonymous on loopback; elsewhere TLS and client keys, or --insecure
    assert server_link(FlLinkConfig(listen="127.0.0.1:9092")).certificates is None
    tls = {"tls_cert": str(ca / "server.crt"), "tls_key": str(ca / "server.key")}
    for missing, cfg in (
        ("TLS", FlLinkConfig(listen="0.0.0.0:9092", client_keys=str(fleet))),
        ("client keys", FlLinkConfig(listen="0.0.0.0:9092", **tls)),
    ):
        with pytest.raises(EdgepilotError, match=f"refusing to serve .* without {missing}"):
            server_link(cfg)
        cfg.insecure = True
        server_link(cfg)
    link = server_link(
        FlLinkConfig(listen="0.0.0.0:9092", **tls, tls_ca=str(ca / "ca.crt"), client_keys=str(fleet))
    )
    assert link.certificates[0] == (ca / "ca.crt").read_bytes() and link.trust is not None
    # a client: plaintext to loopback only, unless --insecure
    assert client_root_certificates("127.0.0.1:9092", None, False) is None
    with pytest.raises(EdgepilotError, match="refusing to connect to the federated server cloud.example"):
        client_root_certificates("cloud.example:9092", None, False)
    assert client_root_certificates("cloud.example:9092", None, True) is None
    assert client_root_certificates("cloud.example:9092", str(ca / "ca.crt"), False).startswith(b"-----BEGIN")


def test_a_missing_or_wrong_certificate_file_is_one_line(tls_ca, tmp_path):
    ca, other = tls_ca
    crt, key = str(ca / "server.crt"), str(ca / "server.key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    locked = tmp_path / "locked.key"
    shutil.copy(key, locked)
    locked.chmod(0)
    for (c, k, a), why in (
        ((crt, None, None), "needs both tls_cert and tls_key"),
        ((None, None, str(ca / "ca.crt")), "tls_ca alone"),
        ((str(tmp_path / "none.crt"), key, None), "tls_cert .*none.crt: no such file"),
        ((str(garbage), key, None), "garbage.pem: not a PEM certificate"),
        ((crt, crt, None), "not an unencrypted PEM private key"),
        ((crt, str(other / "server.key"), None), "is not the key of the certificate"),
        ((crt, key, str(garbage)), "tls_ca .*garbage.pem: not a PEM certificate"),
    ):
        with pytest.raises(EdgepilotError, match=why):
            server_certificates(c, k, a)
    if __import__("os").geteuid() != 0:
        with pytest.raises(EdgepilotError, match="locked.key: Permission denied"):
            server_certificates(crt, str(locked), None)
    with pytest.raises(EdgepilotError, match="tls_ca .*nowhere.crt: no such file"):
        client_root_certificates("127.0.0.1:1", str(tmp_path / "nowhere.crt"), False)
