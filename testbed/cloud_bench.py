"""Cloud benchmarks (JSON out): upload throughput and announce-to-swapped, through a real
Mosquitto started for the run on loopback.

    .venv/bin/python -m testbed.cloud_bench [--mb 40] [--repeat 3]

- upload: a driving log of noise frames (noise JPEGs do not compress: honest bytes) sent
  by ``vehicle.upload.Uploader`` to ``cloud_trainer.ingest.Ingest`` (chunks hashed,
  stored on disk, acknowledged); MB/s of chunk bytes, wall clock from offer to verified
  completion, plus the same log's raw disk copy as the side-by-side floor.
- announce-to-swapped: the cloud publishes a signed package (< 1 MB); the car's updater
  fetches the retained chunks, verifies hash + signature, loads and warms it up; a
  ticker stands in for the loop's per-frame ``maybe_swap``. Time from the announcement
  leaving the cloud to the swap.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _log(path: Path, mb: float) -> Path:
    import numpy as np

    from edgepilot.drivelog import LogWriter
    from edgepilot.schema.log import Record, SessionMeta

    rng = np.random.default_rng(0)
    frames = int(mb * 1e6 / 19_500) + 1  # a 160x120 noise JPEG at q90 is ~19.5 kB
    with LogWriter(path, SessionMeta(session=path.name, created=0.0, source="sim"), block=True) as w:
        for i in range(frames):
            w.write(
                Record(i=i, t=i * 0.05, steering=0.0, throttle=0.3),
                rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
            )
    return path


def bench_upload(url: str, tmp: Path, mb: float, repeat: int) -> dict:
    from cloud_trainer.ingest import Ingest
    from cloud_trainer.store import DirStore
    from edgepilot.config import BrokerConfig
    from edgepilot.mqtt import Connection
    from vehicle.upload import Uploader, pack_log

    src = _log(tmp / "bench-log", mb)
    runs, copies = [], []
    for r in range(repeat):
        store = DirStore(tmp / f"store-{r}")
        ing = Ingest(store)
        cc = Connection(BrokerConfig(url=url), f"bench-cloud-{r}")
        cc.start()
        ing.attach(cc, group=f"bench{r}")
        car = Connection(BrokerConfig(url=url), f"bench-car-{r}")
        car.start()
        time.sleep(0.2)
        res = Uploader(car, "bench-car").upload(src, progress=False)
        again = Uploader(car, "bench-car").upload(src, progress=False)
        runs.append(
            {
                "mb_per_s": res.sent_bytes / 1e6 / res.seconds,
                "bytes": res.bytes,
                "second_sent": again.sent_bytes,
            }
        )
        t = time.perf_counter()
        shutil.copytree(src, tmp / f"copy-{r}")
        pack_log(src).close()
        copies.append(res.bytes / 1e6 / (time.perf_counter() - t))
        ing.close()
        car.close()
        cc.close()
        shutil.rmtree(tmp / f"store-{r}")
        shutil.rmtree(tmp / f"copy-{r}")
    mbps = [x["mb_per_s"] for x in runs]
    return {
        "bytes": runs[0]["bytes"],
        "mb_per_s": {"median": round(statistics.median(mbps), 1), "min": round(min(mbps), 1)},
        "local_copy_and_pack_mb_per_s": round(statistics.median(copies), 1),
        "second_upload_sent_bytes": max(x["second_sent"] for x in runs),
        "repeat": repeat,
    }


def bench_push(url: str, tmp: Path, repeat: int) -> dict:
    import torch

    from cloud_trainer.push import announce
    from edgepilot.config import BrokerConfig
    from edgepilot.drive.slot import ModelSlot
    from edgepilot.model.nets import ArchSpec, build_net
    from edgepilot.model.package import load_private_key, make_keys, save_package
    from edgepilot.mqtt import Connection
    from vehicle.updates import ModelUpdater

    priv, pub = make_keys(tmp / "keys")
    key = load_private_key(priv)
    cloud = Connection(BrokerConfig(url=url), "bench-push-cloud")
    cloud.start()
    slot = ModelSlot(trusted_keys=[str(pub)])
    car = Connection(BrokerConfig(url=url), "bench-push-car")
    car.start()
    up = ModelUpdater(car, slot, "bench-push-car", tmp / "cache", trusted_keys=[str(pub)], announce_keys=[str(pub)])
    up.start()
    stop = threading.Event()

    def tick() -> None:  # the loop at 20 Hz would swap within 50 ms; tick at 200 Hz
        while not stop.is_set():
            slot.maybe_swap()
            time.sleep(0.005)

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    times, sizes = [], []
    try:
        for r in range(repeat):
            torch.manual_seed(r)
            net = build_net(ArchSpec("early-exit"))
            m = {
                "version": f"bench-{r}",
                "arch": net.arch.to_dict(),
                "quant": "fp32",
                "thresholds": {"exits": [0.5, 0.5]},
            }
            pkg = save_package(tmp / f"p{r}.eppkg", m, net.state_dict(), key)
            sizes.append(pkg.stat().st_size)
            t0 = time.monotonic()
            announce(cloud, "car", pkg, key=key)
            st = up.wait_for(f"bench-{r}", 10)
            if st is None or st.version != f"bench-{r}":
                raise SystemExit(f"push {r} did not swap: {st}")
            times.append(up.swapped_at[f"bench-{r}"] - t0)
    finally:
        stop.set()
        car.close()
        cloud.close()
    return {
        "package_bytes": max(sizes),
        "announce_to_swapped_s": {"median": round(statistics.median(times), 3), "max": round(max(times), 3)},
        "repeat": repeat,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40.0, help="size of the uploaded log")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from edgepilot.broker import start_broker

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = start_broker(tmp / "mosquitto")
        try:
            out = {
                "upload": bench_upload(broker.url, tmp, args.mb, args.repeat),
                "push": bench_push(broker.url, tmp, args.repeat),
            }
        finally:
            broker.stop()
    print(json.dumps(out), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
