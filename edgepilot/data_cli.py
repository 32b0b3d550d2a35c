"""``edgepilot data info LOG``: what is in a driving log, before you train on it;
``data migrate LOG``: bring an older log to this schema.

Answers the questions a DonkeyCar user asks of a tub before training: how many records,
how long, how many frames are missing or broken (the 0-byte JPEGs that crash training),
which drive modes, and whether steering is balanced (a log of mostly straight driving
trains a pilot that cannot turn). Every frame is decoded, so "ok" means trainable.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepilot.drivelog import META, RECORDS, LogReader, find_logs
from edgepilot.imaging import decode_jpeg
from edgepilot.progress import bar
from edgepilot.schema.log import (
    LOG_SCHEMA_VERSION,
    DeleteRange,
    Record,
    RecordError,
    decode_line,
    encode_record,
    label_source_of,
)

BINS = 10  # steering in [-1, 1], 0.2 wide
BAR_WIDTH = 40


@dataclass
class LogInfo:
    records: int = 0
    deleted: int = 0
    bad_lines: int = 0
    duration_s: float = 0.0
    frames_ok: int = 0
    frames_missing: int = 0  # no image named, or the file is gone
    frames_empty: int = 0  # 0-byte JPEG
    frames_corrupt: int = 0  # does not decode
    modes: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # label source -> records
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


def _line_counts(path: Path) -> tuple[int, int, list[DeleteRange]]:
    """(record lines, unparseable lines, delete ranges) of the raw record stream."""
    n_rec = bad = 0
    deletes: list[DeleteRange] = []
    with open(path / RECORDS, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                item = decode_line(line)
            except RecordError:
                bad += 1
                continue
            if isinstance(item, DeleteRange):
                deletes.append(item)
            else:
                n_rec += 1
    return n_rec, bad, deletes


def inspect(path: str | Path, *, progress: bool = True) -> LogInfo:
    """Read a whole log, frames included, and summarise it."""
    reader = LogReader(path)
    recs = reader.records()
    info = LogInfo(records=len(recs))
    n_rec, info.bad_lines, _ = _line_counts(reader.path)
    info.deleted = max(0, n_rec - len(recs))
    if recs:
        info.duration_s = max(r.t for r in recs) - min(r.t for r in recs)
    info.modes = dict(Counter(r.mode for r in recs))
    info.labels = dict(Counter(label_source_of(r, reader.meta.source) for r in recs))
    steer = np.array([r.steering for r in recs], dtype=float)
    # rounded edges: -0.2 must fall in [-0.2, 0.0), not in the bin below by float error
    counts, edges = np.histogram(steer, bins=np.round(np.linspace(-1.0, 1.0, BINS + 1), 9))
    info.counts = [int(c) for c in counts]
    info.edges = [round(float(e), 2) for e in edges]
    for rec in bar(recs, desc="frames", unit="frame") if progress else recs:
        # Classified here rather than via LogReader.image(), which warns once per frame.
        if rec.image is None:
            info.frames_missing += 1
            continue
        try:
            data = (reader.path / rec.image).read_bytes()
        except OSError:
            info.frames_missing += 1
            continue
        if not data:
            info.frames_empty += 1
        elif decode_jpeg(data) is None:
            info.frames_corrupt += 1
        else:
            info.frames_ok += 1
    return info


def histogram_text(edges: list[float], counts: list[int], width: int = BAR_WIDTH) -> str:
    """Text bars, one per bin: ``[-1.0, -0.8)  ####      12``."""
    top = max(counts, default=0) or 1
    lines = []
    for k, c in enumerate(counts):
        close = "]" if k == len(counts) - 1 else ")"
        bar_ = "#" * round(width * c / top)
        lines.append(f"[{edges[k]:+.1f}, {edges[k + 1]:+.1f}{close}  {bar_:<{width}}  {c}")
    return "\n".join(lines)


def info(args: argparse.Namespace) -> dict[str, Any]:
    """CLI handler: ``edgepilot data info LOG``; prints the histogram, returns the summary."""
    li = inspect(args.log)
    print(f"steering histogram of {args.log} ({li.records} records):")
    print(histogram_text(li.edges, li.counts))
    return {
        "records": li.records,
        "duration_s": round(li.duration_s, 3),
        "deleted": li.deleted,
        "bad_lines": li.bad_lines,
        "frames_ok": li.frames_ok,
        "frames_missing": li.frames_missing,
        "frames_empty": li.frames_empty,
        "frames_corrupt": li.frames_corrupt,
        "modes": li.modes,
        "labels": li.labels,
        "steering_histogram": {"edges": li.edges, "counts": li.counts},
    }


def _migrated_line(line: bytes, log_source: str) -> tuple[bytes, bool]:
    """One line of ``records.jsonl`` in this schema; (line, changed). Delete lines and
    damaged lines are kept as they are (readers skip the damaged ones, as before)."""
    try:
        item = decode_line(line)
    except RecordError:
        return line, False
    if not isinstance(item, Record) or item.label_source is not None:
        return line, False
    item.label_source = label_source_of(item, log_source)
    return encode_record(item), True


def migrate_log(path: Path) -> dict[str, Any]:
    """Rewrite one log's records and meta in this schema: each record says where its
    label came from (the rule of ``label_source_of``). Written to a new file, synced and
    renamed over the old one, so a crash leaves the old log or the new, never half."""
    reader = LogReader(path)
    changed = 0
    tmp = path / (RECORDS + ".migrate")
    with open(path / RECORDS, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            out, did = _migrated_line(line, reader.meta.source) if line.strip() else (line, False)
            dst.write(out if out.endswith(b"\n") else out + b"\n")
            changed += did
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path / RECORDS)
    meta = reader.meta
    old_schema, meta.schema = meta.schema, LOG_SCHEMA_VERSION
    tmp_meta = path / (META + ".migrate")
    tmp_meta.write_text(meta.to_json())
    os.replace(tmp_meta, path / META)
    labels = Counter(label_source_of(r, meta.source) for r in LogReader(path).records())
    return {"log": str(path), "from_schema": old_schema, "records_changed": changed, "labels": dict(labels)}


def migrate(args: argparse.Namespace) -> dict[str, Any]:
    """CLI handler: ``edgepilot data migrate LOG...``."""
    done = [migrate_log(p) for p in find_logs(args.logs)]
    return {"logs": done, "records": sum(d["records_changed"] for d in done)}
