"""The edge node's hot-swap with its real loader (``load_edge_model``, the model runtime):
a package announced with the trusted announcement key but signed by a key the node does not
trust for packages is refused by the package's own signature check; a properly signed one is
swapped in and answers the next frame. A broken build that skipped either check fails here."""

from __future__ import annotations

import time

import cv2
import numpy as np

from cloud_trainer.push import announce
from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot.config import BrokerConfig
from edgepilot.keys import ANNOUNCEMENTS, load_private_key, make_keys
from edgepilot.model.package import load_package, save_package
from edgepilot.mqtt import Connection
from edgepilot.offload.client import OffloadClient
from tests.helpers import wait_for


def resigned(src: str, out, key_path, version: str) -> str:
    pkg = load_package(src)
    return str(save_package(out, {**pkg.manifest, "version": version}, pkg.state, load_private_key(key_path)))


def test_the_edge_swaps_only_packages_signed_by_its_package_keys(broker, tmp_path, tiny_model):
    pkg_priv, pkg_pub = make_keys(tmp_path / "fleet")
    ann_priv, ann_pub = make_keys(tmp_path / "fleet", role=ANNOUNCEMENTS)
    rogue_priv, _ = make_keys(tmp_path / "rogue")
    svc = EdgeService(
        BrokerConfig(url=broker.url),
        load_edge_model("builtin:pilotnet"),
        node_id="edge-real-swap",
        trusted_keys=[str(pkg_pub)],
        announce_keys=[str(ann_pub)],
    ).start()
    cloud = Connection(BrokerConfig(url=broker.url), "cloud-real-swap")
    cloud.start()
    ann_key = load_private_key(ann_priv, role=ANNOUNCEMENTS)
    try:
        rogue = resigned(tiny_model, tmp_path / "rogue.eppkg", rogue_priv, "edge-rogue")
        announce(cloud, "edge", rogue, key=ann_key, version="edge-rogue")
        assert wait_for(lambda: svc.swap_error is not None, 20)
        assert "signature" in svc.swap_error and svc.slot.version.startswith("builtin-pilotnet")
        good = resigned(tiny_model, tmp_path / "good.eppkg", pkg_priv, "edge-good")
        announce(cloud, "edge", good, key=ann_key, version="edge-good")
        assert wait_for(lambda: svc.slot.version == "edge-good", 20)
        car = OffloadClient(BrokerConfig(url=broker.url), "car-real-swap", deadline_s=2.0, mode="frame")
        car.start()
        try:
            jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))[1].tobytes()
            assert car.submit(1, jpeg)
            ans = car.poll(1, time.monotonic() + 2.0)
            assert ans is not None and ans.model == "edge-good"
        finally:
            car.close()
    finally:
        cloud.close()
        svc.stop()
