"""A demo run's car and edge models in closed loop, alone and together, in-process.

The car model drives with the edge model answering the frames it offloads
(``edgepilot.offload.local.LocalEdge``, as the cloud's ``judge_pair`` check), next to
each alone, on the given tracks, scene and actuator latency::

    python scripts/pair_drive.py /tmp/demo6 rounded_square --scene 3 --latency-ms 50 --seconds 60

docs/benchmarks.md#demo has the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgepilot.model.runtime import Autopilot
from edgepilot.sim.drive import scored_drives


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, help="a finished demo's clone (its var/demo/store and keys)")
    p.add_argument("tracks", nargs="+")
    p.add_argument("--scene", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args()
    models = a.demo / "var" / "demo" / "store" / "models"
    trusted = [str(a.demo / "keys" / "signing.pub")]
    cars = sorted(models.glob("car/*/package.eppkg"))
    edges = sorted(models.glob("edge/*/package.eppkg"))
    for run, (car_pkg, edge_pkg) in enumerate(zip(cars, edges, strict=False), 1):
        car, edge = Autopilot.load(car_pkg, trusted), Autopilot.load(edge_pkg, trusted)
        for name, pilot, answers in (("car alone", car, None), ("car + edge", car, edge), ("edge alone", edge, None)):
            r = scored_drives(pilot, a.tracks, a.seconds, a.scene, a.latency_ms, edge=answers)
            used = {t: s.get("edge_used") for t, s in r["tracks"].items() if "edge_used" in s}
            print(f"run {run} {name:11s} autonomy {r['autonomy']}, CTE {r['mean_abs_cte_m']} m, "
                  f"interventions {r['interventions']}" + (f", edge used {used}" if used else ""))


if __name__ == "__main__":
    main()
