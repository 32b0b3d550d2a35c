"""Start N simulated cars against one broker (``launch/fleet``), each a separate process.

Every car is ``edgepilot sim drive --pilot model --edge --headless --json`` with its own
``EDGEPILOT_CAR_ID``; their JSON results are gathered into one table. Used for load tests
and to watch an edge node serve a fleet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgepilot.progress import table
from edgepilot.supervise import Supervisor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="launch/fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("cars", type=int, help="how many simulated cars")
    ap.add_argument("--model", required=True, help="the car model package")
    ap.add_argument("--track", default="oval")
    ap.add_argument("--laps", type=int, default=1)
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--logdir", default="var/fleet")
    ap.add_argument("--no-edge", action="store_true", help="drive on local answers only")
    a = ap.parse_args(argv)
    results = {}
    with Supervisor(Path(a.logdir)) as sup:
        for i in range(1, a.cars + 1):
            args = [
                "sim",
                "drive",
                "--pilot",
                "model",
                "--model",
                a.model,
                "--track",
                a.track,
                "--laps",
                str(a.laps),
                "--headless",
                "--json",
                "--broker",
                a.broker,
                "--scene-seed",
                str(i),
            ]
            if not a.no_edge:
                args += ["--edge", "--rate", "realtime"]
            sup.edgepilot(f"car-{i}", *args, env={"EDGEPILOT_CAR_ID": f"sim-{i}"}, expect_exit=True)
        t0 = time.monotonic()
        for i in range(1, a.cars + 1):
            name = f"car-{i}"
            rc = sup.wait(name)
            res = sup.children[name].json_result()
            results[name] = (
                res if rc == 0 and res else {"error": f"exit {rc}: {sup.children[name].tail(1)[:80]}"}
            )
        wall = time.monotonic() - t0
    keys = ["autonomy", "interventions", "mean_abs_cte_m", "offload_rate", "frames"]
    rows = [[n, *(r.get(k, r.get("error", "")) for k in keys)] for n, r in results.items()]
    print(table(rows, ["car", *keys]), file=sys.stderr)
    print(json.dumps({"cars": results, "wall_s": round(wall, 1)}))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
