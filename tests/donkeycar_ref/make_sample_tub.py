"""Re-create ``datasets/samples/donkey_tub/`` with DonkeyCar 5.1's own ``Tub`` class.

Not run by the tests (DonkeyCar is not a dependency); kept so the fixture can be rebuilt
and its contents understood. Run it in a throwaway venv that has donkeycar==5.1.0
(``pip install --no-deps donkeycar==5.1.0 numpy pillow pyfiglet prettytable``)::

    /tmp/dkvenv/bin/python tests/donkeycar_ref/make_sample_tub.py datasets/samples/donkey_tub

The frames and labels follow the formulas in ``expected()`` so the import test can
check every record against them, not against the catalog it is reading.
"""

from __future__ import annotations

import sys

import numpy as np

N = 40
DELETED = [5, 17, 18, 19, 33]
MAX_CATALOG_LEN = 16  # three catalogs, like a long DonkeyCar session
MODES = ("user", "local_angle", "local")


def expected(i: int) -> dict:
    """Labels and the frame's flat RGB colour of record ``i``."""
    return {
        "user/angle": round(((i % 21) - 10) / 10, 2),
        "user/throttle": round(0.2 + 0.01 * i, 2),
        "user/mode": MODES[i % 3],
        "rgb": ((i * 6) % 256, 100, (200 - i * 4) % 256),
    }


def frame(i: int) -> np.ndarray:
    """160x120 RGB (DonkeyCar's camera order): a flat colour, so it compresses tiny."""
    img = np.empty((120, 160, 3), np.uint8)
    img[:] = expected(i)["rgb"]
    return img


def main(path: str) -> None:
    from donkeycar.parts.tub_v2 import Tub

    tub = Tub(
        path,
        inputs=["cam/image_array", "user/angle", "user/throttle", "user/mode"],
        types=["image_array", "float", "float", "str"],
        metadata=["source:edgepilot-fixture"],
        max_catalog_len=MAX_CATALOG_LEN,
    )
    for i in range(N):
        e = expected(i)
        tub.write_record(
            {
                "cam/image_array": frame(i),
                "user/angle": e["user/angle"],
                "user/throttle": e["user/throttle"],
                "user/mode": e["user/mode"],
            }
        )
    tub.delete_records(DELETED)
    tub.close()


if __name__ == "__main__":
    main(sys.argv[1])
