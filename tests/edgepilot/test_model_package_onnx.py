"""The package format's two runtimes: an ONNX package (format 2) is verified member by
member and refused when tampered; a package from before the runtime field (format 1, no
``runtime``) still loads on torch; members of the other runtime are refused."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepilot import EdgepilotError
from edgepilot.model.nets import ArchSpec, build_net
from edgepilot.model.onnx_export import export_segments, quantize_segments
from edgepilot.model.package import (
    FORMAT,
    FORMAT_ONNX,
    load_private_key,
    make_keys,
    read_manifest,
    save_package,
    verify_package,
)
from edgepilot.model.runtime import Autopilot


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pkg")
    priv, pub = make_keys(d / "keys")
    return d, load_private_key(priv), str(pub)


@pytest.fixture(scope="module")
def onnx_pkg(pair):
    d, key, pub = pair
    torch.manual_seed(0)
    net = build_net(ArchSpec("early-exit")).eval()
    calib = [np.random.default_rng(0).uniform(-1, 1, (16, 3, 66, 200)).astype(np.float32)]
    graphs = quantize_segments(
        export_segments([net.stages[0], net.stages[1], net.stages[2]], [3, 66, 200]), calib
    )
    manifest = {
        "version": "onnx-v1",
        "arch": net.arch.to_dict(),
        "quant": "int8",
        "segments": [[0], [1], [2]],
        "thresholds": {"exits": [0.9, 0.9]},
    }
    return save_package(d / "onnx.eppkg", manifest, None, key, onnx=graphs)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write(path: Path, data: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for n, b in data.items():
            z.writestr(n, b)
    return path


def resign(data: dict[str, bytes], manifest: dict, key) -> dict[str, bytes]:
    """What a trusted signer of an older edgepilot would have written."""
    mbytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    sig = json.loads(data["signature.json"])
    sig["sig"] = base64.b64encode(key.sign(mbytes)).decode()
    return {**data, "manifest.json": mbytes, "signature.json": json.dumps(sig).encode()}


def test_onnx_package_round_trip(onnx_pkg, pair):
    _, _, pub = pair
    m = read_manifest(onnx_pkg)
    assert m["format"] == FORMAT_ONNX and m["runtime"] == "onnx" and len(m["onnx_sha256"]) == 3
    names = set(members(onnx_pkg))
    assert "weights.pt" not in names and {f"onnx/segment{k}.onnx" for k in range(3)} <= names
    pkg = verify_package(onnx_pkg, [pub])
    assert pkg.runtime == "onnx" and pkg.state == {} and len(pkg.onnx or []) == 3
    ap = Autopilot.load(onnx_pkg, [pub])
    d = ap.infer(np.zeros((120, 160, 3), np.uint8))
    assert ap.runtime == "onnx" and ap.segments == [[0], [1], [2]] and np.isfinite(d.steering)


def test_tampered_onnx_graph_is_refused(onnx_pkg, pair, tmp_path):
    _, _, pub = pair
    data = members(onnx_pkg)
    g = bytearray(data["onnx/segment1.onnx"])
    g[len(g) // 2] ^= 0x55
    bad = write(tmp_path / "bad.eppkg", {**data, "onnx/segment1.onnx": bytes(g)})
    with pytest.raises(EdgepilotError, match="ONNX graphs hash mismatch"):
        Autopilot.load(bad, [pub])
    dropped = write(tmp_path / "short.eppkg", {n: b for n, b in data.items() if n != "onnx/segment2.onnx"})
    with pytest.raises(EdgepilotError, match="hash mismatch"):
        Autopilot.load(dropped, [pub])


def test_onnx_package_with_torch_members_or_bad_segments_is_refused(onnx_pkg, pair, tmp_path):
    _, key, pub = pair
    data = members(onnx_pkg)
    with pytest.raises(EdgepilotError, match="must not carry torch"):
        verify_package(write(tmp_path / "w.eppkg", {**data, "weights.pt": b"x"}), [pub])
    m = read_manifest(onnx_pkg)
    m["segments"] = [[0, 1], [2]]  # two segments listed, three graphs shipped
    with pytest.raises(EdgepilotError, match="3 ONNX graphs for 2 segments"):
        Autopilot.load(write(tmp_path / "s.eppkg", resign(data, m, key)), [pub])
    m["runtime"] = "tflite"
    with pytest.raises(EdgepilotError, match="unknown runtime"):
        verify_package(write(tmp_path / "r.eppkg", resign(data, m, key)), [pub])
    m["runtime"], m["format"] = "onnx", "edgepilot-model/9"
    with pytest.raises(EdgepilotError, match="unknown package format"):
        verify_package(write(tmp_path / "f.eppkg", resign(data, m, key)), [pub])


def test_package_from_before_the_runtime_field_still_loads(pair, tmp_path):
    """Format 1 without ``runtime`` (every package before the ONNX runtime): torch."""
    _, key, pub = pair
    net = build_net(ArchSpec("early-exit"))
    manifest = {
        "version": "old",
        "arch": net.arch.to_dict(),
        "quant": "fp32",
        "thresholds": {"exits": [None, None]},
    }
    path = save_package(tmp_path / "new.eppkg", manifest, net.state_dict(), key)
    data = members(path)
    m = json.loads(data["manifest.json"])
    assert m["format"] == FORMAT and m["runtime"] == "torch"
    del m["runtime"]
    old = write(tmp_path / "old.eppkg", resign(data, m, key))
    assert "runtime" not in read_manifest(old)
    ap = Autopilot.load(old, [pub])
    assert ap.runtime == "torch" and ap.segments == [[0, 1, 2]]
    assert np.isfinite(ap.infer(np.zeros((120, 160, 3), np.uint8)).steering)
