"""DonkeyCar tub v2 interop against a tub written by DonkeyCar 5.1's own ``Tub`` class.

``datasets/samples/donkey_tub`` was made by tests/donkeycar_ref/make_sample_tub.py with
DonkeyCar itself (40 records in 3 catalogs, 5 deleted); the labels and frame colours
follow that script's ``expected()``, so import is checked against the formulas, not
against the catalog it reads. Exported tubs are read back with DonkeyCar's own
datastore_v2.py (vendored, MIT) -- including appending a record the way a DonkeyCar car
would, which only works if our catalog manifests are exactly right.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgepilot import EdgepilotError
from edgepilot.donkey import export_tub, import_tub, read_manifest
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.schema.log import Record

ROOT = Path(__file__).resolve().parents[2]
TUB = ROOT / "datasets" / "samples" / "donkey_tub"
REF = Path(__file__).resolve().parents[1] / "donkeycar_ref"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


sample = _load("donkey_sample_tub", REF / "make_sample_tub.py")
datastore = _load("donkey_datastore_v2", REF / "datastore_v2.py")

LIVE = [i for i in range(sample.N) if i not in sample.DELETED]


def _mean_bgr(img: np.ndarray) -> np.ndarray:
    return img.reshape(-1, 3).mean(axis=0)


def _donkey_records(tub: Path) -> list[dict]:
    """Every live record as DonkeyCar's own reader yields it."""
    m = datastore.Manifest(str(tub), read_only=True)
    try:
        return list(m)  # Manifest.__iter__: what Tub.__iter__ uses
    finally:
        m.close()


def test_fixture_is_a_real_donkey_tub():
    # What the tests below rely on: DonkeyCar's reader sees 35 live records in 3 catalogs.
    m = read_manifest(TUB)
    assert m.paths == ["catalog_0.catalog", "catalog_1.catalog", "catalog_2.catalog"]
    assert m.deleted == set(sample.DELETED)
    assert [r["_index"] for r in _donkey_records(TUB)] == LIVE


def test_import_gives_every_live_record_and_no_deleted_one(tmp_path):
    res = import_tub(TUB, tmp_path / "log", quiet=True)
    assert (res.records, res.deleted, res.skipped) == (len(LIVE), len(sample.DELETED), 0)
    reader = LogReader(tmp_path / "log")
    recs = reader.records()
    assert [r.i for r in recs] == LIVE
    assert reader.meta.source == "donkey-import"
    for rec in recs:
        e = sample.expected(rec.i)
        assert rec.steering == pytest.approx(e["user/angle"])
        assert rec.throttle == pytest.approx(e["user/throttle"])
        assert rec.mode == e["user/mode"]
        img = reader.image(rec)
        assert img.shape == (120, 160, 3)
        r, g, b = e["rgb"]  # DonkeyCar's RGB frame; OpenCV decodes to BGR
        assert np.abs(_mean_bgr(img) - (b, g, r)).max() < 4
    ts = [r.t for r in recs]
    assert ts == sorted(ts) and ts[-1] - ts[0] < 60  # DonkeyCar's _timestamp_ms, in seconds
    assert reader.skipped == 0


def test_import_copies_jpegs_byte_for_byte(tmp_path):
    import_tub(TUB, tmp_path / "log", quiet=True)
    reader = LogReader(tmp_path / "log")
    for rec in reader.records():
        assert reader.jpeg(rec) == (TUB / "images" / f"{rec.i}_cam_image_array_.jpg").read_bytes()


def test_export_is_read_by_donkeycars_own_datastore(tmp_path):
    import_tub(TUB, tmp_path / "log", quiet=True)
    res = export_tub(tmp_path / "log", tmp_path / "tub", max_len=16, quiet=True)
    assert res.records == len(LIVE)
    got = _donkey_records(tmp_path / "tub")
    assert [r["_index"] for r in got] == list(range(len(LIVE)))  # re-indexed, nothing deleted
    lines = (tmp_path / "tub" / "manifest.json").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[4])["paths"] == [
        "catalog_0.catalog",
        "catalog_1.catalog",
        "catalog_2.catalog",
    ]
    for k, rec in enumerate(got):
        e = sample.expected(LIVE[k])
        assert rec["user/angle"] == pytest.approx(e["user/angle"])
        assert rec["user/throttle"] == pytest.approx(e["user/throttle"])
        assert rec["user/mode"] == e["user/mode"]
        data = (tmp_path / "tub" / "images" / rec["cam/image_array"]).read_bytes()
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        r, g, b = e["rgb"]
        assert np.abs(_mean_bgr(img) - (b, g, r)).max() < 4


def test_donkeycar_can_keep_recording_into_an_exported_tub(tmp_path):
    # DonkeyCar seeks by the catalog manifests' line_lengths and resumes at current_index:
    # appending through its own Manifest and reading back proves both are exact.
    import_tub(TUB, tmp_path / "log", quiet=True)
    export_tub(tmp_path / "log", tmp_path / "tub", max_len=16, quiet=True)
    for k, cat in enumerate(sorted((tmp_path / "tub").glob("*.catalog"))):
        man = json.loads(cat.with_suffix(".catalog_manifest").read_text())
        assert man["line_lengths"] == [len(x) for x in cat.read_text().splitlines(keepends=True)]
        assert man["start_index"] == 16 * k and man["path"] == f"catalog_{k}.catalog_manifest"
    m = datastore.Manifest(str(tmp_path / "tub"))
    m.write_record({"_index": m.current_index, "user/angle": 0.5, "user/throttle": 0.1, "user/mode": "user"})
    m.delete_records(0)
    m.close()
    got = _donkey_records(tmp_path / "tub")
    assert len(got) == len(LIVE)  # one added, one deleted
    assert got[0]["_index"] == 1 and got[-1] == {
        "_index": len(LIVE),
        "user/angle": 0.5,
        "user/mode": "user",
        "user/throttle": 0.1,
    }
    # ...and what DonkeyCar deleted and added comes back through our importer too
    res = import_tub(tmp_path / "tub", tmp_path / "again", quiet=True)
    assert res.deleted == 1
    assert res.skipped == 1  # the record DonkeyCar added has no image


def test_round_trip_log_to_tub_to_log(tmp_path):
    path = tmp_path / "log"
    frame = np.zeros((120, 160, 3), np.uint8)
    with LogWriter(path) as w:
        for i in range(12):
            frame[:] = (10 * i, 50, 200 - 10 * i)
            w.write(Record(i=i, t=100 + i * 0.05, steering=i / 12 - 0.5, throttle=0.25, mode="local"), frame)
        w.write(Record(i=12, t=101, steering=0, throttle=0))  # no frame: cannot go to a tub
        w.delete(3, 4)
    res = export_tub(path, tmp_path / "tub", quiet=True)
    assert (res.records, res.skipped) == (10, 1)
    back = import_tub(tmp_path / "tub", tmp_path / "back", quiet=True)
    assert back.records == 10
    a = [r for r in LogReader(path).records() if r.image]
    b = LogReader(tmp_path / "back").records()
    assert [(r.steering, r.throttle, r.mode) for r in a] == [(r.steering, r.throttle, r.mode) for r in b]
    assert [r.t for r in a] == pytest.approx([r.t for r in b], abs=1e-3)
    ra, rb = LogReader(path), LogReader(tmp_path / "back")
    assert [ra.jpeg(r) for r in a] == [rb.jpeg(r) for r in b]


def test_damaged_tub_is_imported_with_counted_skips(tmp_path, caplog):
    tub = tmp_path / "tub"
    shutil.copytree(TUB, tub)
    (tub / "images" / "2_cam_image_array_.jpg").write_bytes(b"")  # the 0-byte JPEG
    (tub / "images" / "3_cam_image_array_.jpg").unlink()
    cat = tub / "catalog_0.catalog"
    lines = cat.read_text().splitlines(keepends=True)
    rec4 = json.loads(lines[4])
    rec4["user/angle"] = 5.0
    lines[4] = json.dumps(rec4, sort_keys=True) + "\n"
    rec6 = json.loads(lines[6])
    rec6["user/mode"] = "turbo"  # not a drive mode
    lines[6] = json.dumps(rec6, sort_keys=True) + "\n"
    cat.write_text("".join(lines))
    with open(tub / "catalog_2.catalog", "a") as f:
        f.write('{"_index": 40, "user/an')  # a crash mid-write
    res = import_tub(tub, tmp_path / "log", quiet=True)
    assert res.skipped == 5
    assert res.reasons == {
        "0-byte image": 1,
        "missing image": 1,
        "bad label": 1,
        "bad mode": 1,
        "bad catalog line": 1,
    }
    assert [r.i for r in LogReader(tmp_path / "log").records()] == [i for i in LIVE if i not in (2, 3, 4, 6)]
    assert "0 bytes" in caplog.text


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda t: (t / "manifest.json").unlink(), "not a DonkeyCar tub"),
        (lambda t: (t / "manifest.json").write_text('["a"]\n["b"]\n'), "5 JSON lines"),
        (lambda t: (t / "manifest.json").write_text("{\n" * 5), "not JSON"),
    ],
)
def test_broken_manifest_is_a_clear_error(tmp_path, damage, match):
    tub = tmp_path / "tub"
    shutil.copytree(TUB, tub)
    damage(tub)
    with pytest.raises(EdgepilotError, match=match):
        import_tub(tub, tmp_path / "log", quiet=True)


def test_export_refuses_to_overwrite_a_tub(tmp_path):
    import_tub(TUB, tmp_path / "log", quiet=True)
    export_tub(tmp_path / "log", tmp_path / "tub", quiet=True)
    with pytest.raises(EdgepilotError, match="already holds a tub"):
        export_tub(tmp_path / "log", tmp_path / "tub", quiet=True)


def test_unwritable_destination_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(EdgepilotError, match="cannot create the driving log"):
        import_tub(TUB, tmp_path / "file" / "log", quiet=True)
    import_tub(TUB, tmp_path / "log", quiet=True)
    with pytest.raises(EdgepilotError, match="cannot create the tub"):
        export_tub(tmp_path / "log", tmp_path / "file" / "tub", quiet=True)


def test_a_v1_tub_is_named_as_such(tmp_path):
    (tmp_path / "tub").mkdir()
    (tmp_path / "tub" / "record_0.json").write_text("{}")
    with pytest.raises(EdgepilotError, match="v1 tub"):
        import_tub(tmp_path / "tub", tmp_path / "log", quiet=True)
