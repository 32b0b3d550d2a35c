"""docs/protocol.md's mosquitto_pub/sub example, run for real against an edge node."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch

from edge_node.model import load_edge_model
from edge_node.service import EdgeService
from edgepilot.config import REPO_ROOT, BrokerConfig

torch.set_num_threads(1)


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_the_documented_shell_example_gets_an_answer(broker, tmp_path):
    doc = (REPO_ROOT / "docs" / "protocol.md").read_text()
    script = re.search(r"<!-- example:.*?-->\n```sh\n(.*?)```", doc, re.S).group(1)
    script = script.replace("-p 1883", f"-p {broker.port}")
    cv2.imwrite(str(tmp_path / "frame.jpg"), np.full((120, 160, 3), 128, np.uint8))
    edge = EdgeService(BrokerConfig(url=broker.url), load_edge_model("builtin:pilotnet"), node_id="edge-doc")
    edge.start()
    try:
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=20)
    finally:
        edge.stop()
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["status"] == "ok" and reply["car"] == "my-car" and reply["frame"] == 1
    assert -1 <= reply["steering"] <= 1 and reply["node"] == "edge-doc"
