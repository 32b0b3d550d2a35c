"""A federated model's exits again, offline: re-calibrate its fp32 package on other reference
logs, to compare the server's calibration rules on the same weights.

``--calib`` logs test the threshold path; ``--path`` logs build it (as the server does now:
its held-out reference session tests a path built on the others); without ``--path`` half
of the ``--calib`` blocks build it (as the server did before the fifteenth round, on the
sessions it did not hold out). Then ``edgepilot eval OUT LOG...`` on unseen tracks::

    W=var/bench-fl   # edgepilot bench fl --workdir W
    python scripts/fl_recalibrate.py W/fl-fedprox/fl-*/car-fp32.eppkg /tmp/old.eppkg --calib W/data/reference-oval-l2
    python scripts/fl_recalibrate.py W/fl-fedprox/fl-*/car-fp32.eppkg /tmp/new.eppkg \\
        --calib W/data/reference-random_42-l2 --path W/data/reference-oval-l2
    edgepilot eval /tmp/new.eppkg W/data/heldout-long_straights-l2 W/data/heldout-rounded_square-l2

Run where the package's signing key is trusted (``keys/``); the copy is signed with
``keys/signing.key``. docs/benchmarks.md#federated-fine-tuning-issue-17 has the figures.
"""

from __future__ import annotations

import argparse
import json

from edgepilot.fl.weights import load_net, save_federated
from edgepilot.model.package import read_manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pkg", help="a federated model's fp32 package")
    p.add_argument("out", help="the re-calibrated copy")
    p.add_argument("--calib", nargs="+", required=True, help="logs whose blocks test the path")
    p.add_argument("--path", nargs="*", default=None, help="logs that build the path (default: half the --calib blocks)")
    p.add_argument("--key", default="keys/signing.key")
    p.add_argument("--trusted", nargs="*", default=["keys/signing.pub"])
    a = p.parse_args()
    net, tpl, manifest = load_net(a.pkg, a.trusted)
    net.eval()
    res = save_federated(
        net, tpl.spec, a.out, a.calib, key=a.key, parent=manifest.get("parent"),
        training=manifest.get("training", {}), path_logs=a.path,
    )  # fmt: skip
    cal = read_manifest(res["package"])["calibration"]
    print(json.dumps({"package": res["package"], "exit_rate": cal["val_exit_rate"], "test": cal["test"]}))


if __name__ == "__main__":
    main()
