"""DonkeyCar tub (v2) <-> edgepilot driving log, without DonkeyCar installed.

A DonkeyCar 5.x tub is a directory::

    manifest.json              5 JSON lines: inputs, types, user metadata,
                               manifest metadata (created_at, sessions), catalog metadata
                               (paths, current_index, max_len, deleted_indexes)
    catalog_N.catalog          one JSON record per line, sorted keys; N-th block of max_len
    catalog_N.catalog_manifest one JSON line: path, created_at, start_index, line_lengths
    images/<index>_cam_image_array_.jpg

Records carry ``_index``, ``_session_id``, ``_timestamp_ms`` and one value per input;
``cam/image_array`` names the JPEG (RGB in DonkeyCar's memory, a plain JPEG on disk, so
the bytes are copied as they are, never re-encoded). Deleting a record only adds its
index to ``deleted_indexes``; readers skip it. The format was learnt from DonkeyCar
5.1's ``donkeycar/parts/datastore_v2.py`` and ``tub_v2.py`` (a copy of the former lives in
tests/donkeycar_ref/ and the tests read exported tubs with it).

Import keeps DonkeyCar's ``_index`` as the record index ``i``; damaged input (a bad
catalog line, a missing or 0-byte JPEG, a label outside [-1, 1]) is skipped, counted and
warned about, never a crash. Export writes only live records with a readable image,
re-indexed from 0 (DonkeyCar assumes ``_index`` equals the record's position).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edgepilot import EdgepilotError
from edgepilot.drivelog import LogReader, LogWriter
from edgepilot.progress import bar
from edgepilot.schema.log import MODES, Record, RecordError, SessionMeta

log = logging.getLogger(__name__)

IMAGE_KEY = "cam/image_array"
ANGLE_KEY = "user/angle"
THROTTLE_KEY = "user/throttle"
MODE_KEY = "user/mode"
INPUTS = [IMAGE_KEY, ANGLE_KEY, THROTTLE_KEY, MODE_KEY]
TYPES = ["image_array", "float", "float", "str"]
MAX_LEN = 1000  # DonkeyCar's default records per catalog file


@dataclass
class TubManifest:
    """The five lines of ``manifest.json``."""

    inputs: list[str]
    types: list[str]
    metadata: dict[str, Any]
    manifest_metadata: dict[str, Any]
    catalogs: dict[str, Any]

    @property
    def paths(self) -> list[str]:
        return list(self.catalogs.get("paths", []))

    @property
    def deleted(self) -> set[int]:
        return set(self.catalogs.get("deleted_indexes", []))


@dataclass
class ConvertResult:
    records: int = 0
    skipped: int = 0
    deleted: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped += 1
        n = self.reasons.get(reason, 0) + 1
        self.reasons[reason] = n
        if n <= 3:  # one line per damaged record floods a 20k-record tub; the count tells the rest
            log.warning("%s; skipped", detail)
        elif n == 4:
            log.warning("more records skipped for %s; see the counts", reason)


def read_manifest(tub: Path) -> TubManifest:
    """Parse ``manifest.json``; a missing or malformed one is a clear error."""
    path = tub / "manifest.json"
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        if next(tub.glob("record_*.json"), None) is not None:
            raise EdgepilotError(
                f"{tub}: a DonkeyCar v1 tub (record_*.json); only tub v2, the format of "
                "DonkeyCar 4.0 and later (manifest.json + catalogs), is supported"
            ) from None
        raise EdgepilotError(f"{tub}: not a DonkeyCar tub (no manifest.json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgepilotError(f"{path}: cannot read: {e}") from None
    if len(lines) < 5:
        raise EdgepilotError(f"{path}: expected 5 JSON lines, found {len(lines)}")
    try:
        parts = [json.loads(ln) for ln in lines[:5]]
    except json.JSONDecodeError as e:
        raise EdgepilotError(f"{path}: not JSON lines: {e}") from None
    inputs, types, metadata, mmeta, cats = parts
    if not (isinstance(inputs, list) and isinstance(types, list) and len(inputs) == len(types)):
        raise EdgepilotError(f"{path}: lines 1-2 must be equal-length lists of inputs and types")
    if not isinstance(cats, dict) or not isinstance(cats.get("paths"), list):
        raise EdgepilotError(f"{path}: line 5 must hold the catalog metadata with 'paths'")
    return TubManifest(
        inputs,
        types,
        metadata if isinstance(metadata, dict) else {},
        mmeta if isinstance(mmeta, dict) else {},
        cats,
    )


def iter_catalog_records(tub: Path, manifest: TubManifest, result: ConvertResult) -> list[tuple[int, dict]]:
    """(index, record) for every parseable catalog line, deleted ones included.

    The index is the record's ``_index``, else its position (DonkeyCar counts lines)."""
    out: list[tuple[int, dict]] = []
    pos = 0
    for name in manifest.paths:
        cpath = tub / name
        if "/" in name or ".." in name:
            result.skip("bad catalog path", f"{tub}/manifest.json: catalog path {name!r}")
            continue
        try:
            raw = cpath.read_bytes()
        except OSError as e:
            result.skip("missing catalog", f"{cpath}: {e.strerror}")
            continue
        for n, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            here, pos = pos, pos + 1
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                result.skip("bad catalog line", f"{cpath} line {n}: not JSON")
                continue
            if not isinstance(rec, dict):
                result.skip("bad catalog line", f"{cpath} line {n}: not an object")
                continue
            idx = rec.get("_index")
            out.append(
                (idx if isinstance(idx, int) and not isinstance(idx, bool) and idx >= 0 else here, rec)
            )
    return out


def _label(rec: dict, key: str, where: str, result: ConvertResult) -> float | None:
    v = rec.get(key, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1.0:
        result.skip("bad label", f"{where}: {key} = {v!r} is not a number in [-1, 1]")
        return None
    return float(v)


def import_tub(tub: str | Path, out: str | Path, *, quiet: bool = False) -> ConvertResult:
    """Convert a DonkeyCar v2 tub into a new driving log at ``out``."""
    tub, out = Path(tub), Path(out)
    manifest = read_manifest(tub)
    if IMAGE_KEY not in manifest.inputs:
        log.warning("%s: the tub records no %s; importing labels only", tub, IMAGE_KEY)
    result = ConvertResult()
    deleted = manifest.deleted
    entries = iter_catalog_records(tub, manifest, result)
    seen: set[int] = set()
    try:
        writer = LogWriter(out, _import_meta(tub, manifest), block=True)
    except OSError as e:
        raise EdgepilotError(f"{out}: cannot create the driving log: {e.strerror or e}") from None
    with writer as w:
        for idx, rec in bar(entries, desc="import", unit="rec") if not quiet else entries:
            where = f"{tub.name} record {idx}"
            if idx in deleted:
                result.deleted += 1
                continue
            if idx in seen:
                result.skip("duplicate index", f"{where}: index seen before")
                continue
            got = _import_record(tub, manifest, idx, rec, result)
            if got is None:
                continue
            w.write(*got)
            seen.add(idx)
            result.records += 1
    if w.errors:
        raise EdgepilotError(f"{out}: {w.errors} records could not be written (disk full?)")
    return result


def _import_meta(tub: Path, manifest: TubManifest) -> SessionMeta:
    """The driving log's session: named after the tub, with the tub's own metadata kept."""
    sessions = manifest.manifest_metadata.get("sessions") or {}
    return SessionMeta(
        session=f"donkey-{tub.resolve().name}",
        created=float(manifest.manifest_metadata.get("created_at") or time.time()),
        source="donkey-import",
        notes={
            "donkey": {
                "tub": str(tub),
                "inputs": manifest.inputs,
                "types": manifest.types,
                "metadata": manifest.metadata,
                "sessions": sessions.get("all_full_ids", []),
            }
        },
    )


def _import_record(
    tub: Path, manifest: TubManifest, idx: int, rec: dict, result: ConvertResult
) -> tuple[Record, bytes | None] | None:
    """One catalog record as (record, JPEG), or None when it is damaged (skipped and counted)."""
    where = f"{tub.name} record {idx}"
    angle = _label(rec, ANGLE_KEY, where, result)
    throttle = None if angle is None else _label(rec, THROTTLE_KEY, where, result)
    if angle is None or throttle is None:
        return None
    mode = rec.get(MODE_KEY, "user")
    if mode not in MODES:
        result.skip("bad mode", f"{where}: {MODE_KEY} = {mode!r}")
        return None
    jpeg = None
    if IMAGE_KEY in manifest.inputs:
        jpeg = _read_jpeg(tub, rec.get(IMAGE_KEY), where, result)
        if jpeg is None:
            return None
    ts = rec.get("_timestamp_ms")
    t = ts / 1000.0 if isinstance(ts, (int, float)) and math.isfinite(ts) else idx / 20.0
    try:
        return Record(i=idx, t=t, steering=angle, throttle=throttle, mode=mode), jpeg
    except RecordError as e:
        result.skip("bad record", f"{where}: {e}")
        return None


def _read_jpeg(tub: Path, name: object, where: str, result: ConvertResult) -> bytes | None:
    if not isinstance(name, str) or not name or "/" in name or ".." in name:
        result.skip("no image", f"{where}: no usable {IMAGE_KEY} ({name!r})")
        return None
    path = tub / "images" / name
    try:
        data = path.read_bytes()
    except OSError as e:
        result.skip("missing image", f"{where}: {path}: {e.strerror}")
        return None
    if not data:
        result.skip("0-byte image", f"{where}: {path} is empty (0 bytes)")
        return None
    if not data.startswith(b"\xff\xd8"):
        result.skip("not a JPEG", f"{where}: {path} is not a JPEG")
        return None
    return data


def image_file_name(index: int) -> str:
    """DonkeyCar's name for the camera frame of record ``index``."""
    return f"{index}_cam_image_array_.jpg"


def _writeline(f: TextIO, obj: Any, *, sort_keys: bool = False) -> int:
    line = json.dumps(obj, allow_nan=False, sort_keys=sort_keys) + "\n"
    f.write(line)
    return len(line)


class _Catalogs:
    """The tub's catalog files: a new one every ``max_len`` records, each closed with its
    ``.catalog_manifest`` (the byte length of every line)."""

    def __init__(self, out: Path, max_len: int, created: float) -> None:
        self.out, self.max_len, self.created = out, max_len, created
        self.names: list[str] = []
        self._file: TextIO | None = None
        self._lengths: list[int] = []

    def add(self, index: int, rec: dict[str, Any]) -> None:
        """Record ``index`` (counted from 0) as the next line."""
        if index % self.max_len == 0:
            if self._file is not None:
                self._close(index - self.max_len)
            self._open()
        assert self._file is not None
        self._lengths.append(_writeline(self._file, rec, sort_keys=True))

    def close(self) -> None:
        if self._file is None:  # an empty tub still has one (empty) catalog, as DonkeyCar makes it
            self._open()
        self._close((len(self.names) - 1) * self.max_len)

    def _open(self) -> None:
        self.names.append(f"catalog_{len(self.names)}.catalog")
        self._file = open(self.out / self.names[-1], "w", newline="\n")  # noqa: SIM115
        self._lengths = []

    def _close(self, start: int) -> None:
        assert self._file is not None
        self._file.close()
        stem = self.names[-1].rsplit(".", 1)[0]
        with open(self.out / f"{stem}.catalog_manifest", "w", newline="\n") as m:
            _writeline(
                m,
                {
                    "path": f"{stem}.catalog_manifest",
                    "created_at": self.created,
                    "start_index": start,
                    "line_lengths": self._lengths,
                },
                sort_keys=True,
            )


def export_tub(
    log_dir: str | Path, out: str | Path, *, max_len: int = MAX_LEN, quiet: bool = False
) -> ConvertResult:
    """Write the live records of a driving log as a new DonkeyCar v2 tub at ``out``.

    Records without a readable frame are left out (DonkeyCar's training would crash on
    them)."""
    reader = LogReader(log_dir)
    out = Path(out)
    if (out / "manifest.json").exists():
        raise EdgepilotError(f"{out}: already holds a tub; pick a new directory")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgepilotError(f"{out}: cannot create the tub: {e.strerror or e}") from None
    result = ConvertResult()
    session_id = f"{time.strftime('%y-%m-%d')}_0"
    catalogs = _Catalogs(out, max_len, time.time())
    recs = reader.records()
    try:
        for rec in bar(recs, desc="export", unit="rec") if not quiet else recs:
            jpeg = reader.jpeg(rec)
            if jpeg is None:
                result.skip("no frame", f"{log_dir}: record {rec.i} has no readable frame")
                continue
            index = result.records
            (out / "images" / image_file_name(index)).write_bytes(jpeg)
            catalogs.add(index, _tub_record(index, rec, session_id))
            result.records += 1
        catalogs.close()
    except OSError as e:
        raise EdgepilotError(f"{out}: cannot write the tub: {e}") from None
    _write_manifest(out, reader.meta.session, catalogs, session_id, result.records)
    return result


def _tub_record(index: int, rec: Record, session_id: str) -> dict[str, Any]:
    """A driving-log record as DonkeyCar's catalog line."""
    return {
        "_index": index,
        "_session_id": session_id,
        "_timestamp_ms": int(round(rec.t * 1000)),
        IMAGE_KEY: image_file_name(index),
        ANGLE_KEY: float(rec.steering),
        THROTTLE_KEY: float(rec.throttle),
        MODE_KEY: rec.mode,
    }


def _write_manifest(out: Path, session: str, catalogs: _Catalogs, session_id: str, records: int) -> None:
    """The tub's ``manifest.json``, written last: a half-written export is not a tub."""
    sessions = {"all_full_ids": [session_id], "last_id": 0, "last_full_id": session_id}
    lines = [
        INPUTS,
        TYPES,
        {"source": "edgepilot", "edgepilot_session": session},
        {"created_at": catalogs.created, "sessions": sessions},
        {
            "paths": catalogs.names,
            "current_index": records,
            "max_len": catalogs.max_len,
            "deleted_indexes": [],
        },
    ]
    tmp = out / "manifest.json.tmp"
    with open(tmp, "w", newline="\n") as f:
        for obj in lines:
            _writeline(f, obj)
    os.replace(tmp, out / "manifest.json")


def _summary(result: ConvertResult, src: str, dst: str) -> dict[str, Any]:
    return {
        "records": result.records,
        "deleted": result.deleted,
        "skipped": result.skipped,
        "skipped_by_reason": dict(result.reasons),
        "src": src,
        "out": dst,
    }


def import_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``edgepilot data import-donkey TUB OUT``."""
    return _summary(import_tub(args.src, args.dst), args.src, args.dst)


def export_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``edgepilot data export-donkey LOG OUT``."""
    return _summary(export_tub(args.src, args.dst), args.src, args.dst)
