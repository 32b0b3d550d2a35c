"""The signed one-file package: keys, round trip, and every way a bad package is refused
with a one-line reason (never a traceback, never unpickled code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.package import load_package, load_private_key, make_keys, read_manifest, save_package
from edgepilot.model.runtime import Autopilot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def signed(tmp_path):
    priv, pub = make_keys(tmp_path / "keys")
    net = build_net(ArchSpec("early-exit"))
    manifest = {
        "version": "v1",
        "arch": net.arch.to_dict(),
        "quant": "fp32",
        "thresholds": {"exits": [0.5, 0.5]},
    }
    path = save_package(tmp_path / "m.eppkg", manifest, net.state_dict(), load_private_key(priv))
    return path, pub, net


def rewrite(path: Path, **members: bytes) -> None:
    """Replace members of the zip (what a tamperer would do)."""
    with zipfile.ZipFile(path) as z:
        data = {n: z.read(n) for n in z.namelist()}
    data.update(members)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in data.items():
            z.writestr(n, b)


def test_keys_files_and_permissions(tmp_path):
    priv, pub = make_keys(tmp_path)
    assert os.stat(priv).st_mode & 0o077 == 0  # private key readable by the owner only
    assert len(pub.read_text().strip()) == 44  # base64 of 32 raw bytes
    with pytest.raises(EdgepilotError, match="exists"):
        make_keys(tmp_path)


def test_round_trip(signed):
    path, pub, net = signed
    pkg = load_package(path, [str(pub)])
    assert pkg.manifest["version"] == "v1"
    assert pkg.manifest["format"] == "edgepilot-model/1"
    assert len(pkg.manifest["weights_sha256"]) == 64
    for k, v in net.state_dict().items():
        assert torch.equal(pkg.state[k], v)
    # the key can be given as its base64 text too (what a profile holds)
    assert load_package(path, [pub.read_text().strip()]).manifest["version"] == "v1"
    ap = Autopilot.load(path, [str(pub)])
    assert ap.version == "v1" and ap.n_exits == 3


def test_foreign_signature_is_refused(signed, tmp_path):
    path, _, _ = signed
    _, other_pub = make_keys(tmp_path / "other")
    with pytest.raises(EdgepilotError, match="does not verify with any trusted key"):
        Autopilot.load(path, [str(other_pub)])


def test_tampered_weights_are_refused(signed):
    path, pub, _ = signed
    with zipfile.ZipFile(path) as z:
        w = bytearray(z.read("weights.pt"))
    w[len(w) // 2] ^= 0xFF
    rewrite(path, **{"weights.pt": bytes(w)})
    with pytest.raises(EdgepilotError, match="weights hash mismatch"):
        Autopilot.load(path, [str(pub)])


def test_tampered_manifest_is_refused(signed):
    path, pub, _ = signed
    m = read_manifest(path)
    m["thresholds"]["exits"] = [0.0, 0.0]  # make the car exit early on everything
    rewrite(path, **{"manifest.json": json.dumps(m, indent=1, sort_keys=True).encode()})
    with pytest.raises(EdgepilotError, match="does not verify"):
        load_package(path, [str(pub)])


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/edgepilot-pwned",))


def test_signed_pickle_payload_is_not_executed(tmp_path):
    """Even a package signed by a trusted key cannot run code when loaded."""
    priv, pub = make_keys(tmp_path / "keys")
    path = save_package(tmp_path / "evil.eppkg", {"version": "x"}, {"w": Payload()}, load_private_key(priv))
    with pytest.raises(EdgepilotError, match="do not load safely"):
        load_package(path, [str(pub)])
    assert not Path("/tmp/edgepilot-pwned").exists()


def test_garbage_and_missing(tmp_path, signed):
    _, pub, _ = signed
    bad = tmp_path / "bad.eppkg"
    bad.write_bytes(b"not a zip")
    with pytest.raises(EdgepilotError, match="not a model package"):
        load_package(bad, [str(pub)])
    with pytest.raises(EdgepilotError, match="no such model package"):
        load_package(tmp_path / "nope.eppkg", [str(pub)])
    with pytest.raises(EdgepilotError, match="not a base64 Ed25519"):
        load_package(bad, ["definitely-not-a-key"])


def test_cli_prints_one_line_without_traceback(signed, tmp_path):
    path, _, _ = signed
    with zipfile.ZipFile(path) as z:
        w = bytearray(z.read("weights.pt"))
    w[-10] ^= 0x01
    rewrite(path, **{"weights.pt": bytes(w)})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-m", "edgepilot", "eval", str(path), str(tmp_path)],
        cwd=tmp_path,  # keys/ of the current directory are the trusted ones
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "weights hash mismatch" in lines[0]
