"""Driving-log records: what one frame of driving leaves on disk.

A driving log is a session directory::

    meta.json        SessionMeta, written once (atomically) when the session starts
    records.jsonl    one JSON object per line, append-only: a Record, or a DeleteRange
    images/NNNNNN.jpg the camera frame of record NNNNNN (BGR when decoded with OpenCV)

Lines are self-describing: a record line has ``"i"`` (its index); a delete line has
``"op": "delete"``. Deleting never rewrites the file (HydraMini's "delete the last N
seconds" key appends a DeleteRange), so a crash can cost only the unflushed tail.

Field names are short because a log holds one line per frame: ``i`` index, ``t``
timestamp (seconds; wall clock on the car, simulated clock in the simulator).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

LOG_SCHEMA_VERSION = 2
"""Bumped on any change an older reader could misread. Readers refuse newer versions.
2: ``Record.label_source`` (a version-1 reader would train on frames that have no label)."""

MODES = ("user", "local_angle", "local")
"""DonkeyCar's drive modes: the user drives; the autopilot steers and the user throttles;
the autopilot does both."""


LABEL_SOURCES = ("human", "expert", "edge", "none")
"""Where a record's label came from: a person driving (keyboard, gamepad, phone, RC
transmitter), the simulator's expert (ground truth), the edge node's answer (a teacher,
for distillation), or nobody (the autopilot drove and no human touched the controls)."""

TRAINING_LABELS = ("human", "expert")
"""What training uses by default: labels someone or something that knows the road gave."""


class RecordError(ValueError):
    """A line or a meta file that does not follow the schema."""


@dataclass(slots=True)
class Record:
    """One frame of driving.

    ``steering``/``throttle`` are the *label*: what the human or the expert asked for
    (DonkeyCar's ``user/angle``), throttle as the car was given it (after the cap); whose
    label it is says ``label_source`` (``LABEL_SOURCES``; None only in version-1 logs, see
    ``label_source_of``). What the autopilot said is in ``pilot_*``; what reached the
    motors is ``applied_*`` (they differ under perturbation, throttle caps, e-stop).
    """

    i: int
    t: float
    steering: float
    throttle: float
    mode: str = "user"
    image: str | None = None
    applied_steering: float | None = None
    applied_throttle: float | None = None
    pilot_steering: float | None = None
    pilot_throttle: float | None = None
    exit: int | None = None  # exit index taken by the local model (last = final head)
    confidence: float | None = None
    offloaded: bool = False
    edge_steering: float | None = None  # the edge's answer, when it came in time
    edge_throttle: float | None = None
    edge_late: bool = False  # offloaded, but the answer missed the deadline
    latency_ms: dict[str, float] = field(default_factory=dict)  # per loop stage
    model_version: str | None = None
    sim: dict[str, float] = field(default_factory=dict)  # simulator truth: x, y, yaw, v, cte...
    label_source: str | None = None

    def __post_init__(self) -> None:
        _check_unit("steering", self.steering)
        _check_unit("throttle", self.throttle)
        if self.mode not in MODES:
            raise RecordError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.label_source is not None and self.label_source not in LABEL_SOURCES:
            raise RecordError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")


@dataclass(slots=True)
class DeleteRange:
    """Records with ``first <= i <= last`` are deleted (skipped by every reader)."""

    first: int
    last: int


@dataclass(slots=True)
class SessionMeta:
    """Written once per session. ``session`` is the id training data is named by."""

    session: str
    created: float
    source: str  # sim | car | replay | donkey-import
    schema: int = LOG_SCHEMA_VERSION
    car_id: str = ""
    track: str | None = None
    camera: dict[str, Any] = field(default_factory=dict)  # width, height, fov_deg, ...
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SessionMeta:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:  # deep nesting
            raise RecordError(f"meta.json is not JSON: {str(e)[:200]}") from None
        if not isinstance(data, dict):
            raise RecordError("meta.json must hold an object")
        schema = data.get("schema")
        if not isinstance(schema, int):
            raise RecordError("meta.json has no integer 'schema'")
        if schema > LOG_SCHEMA_VERSION:
            raise RecordError(
                f"log schema {schema} is newer than this edgepilot understands "
                f"({LOG_SCHEMA_VERSION}); upgrade edgepilot"
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise RecordError(f"meta.json: {e}") from None


_RECORD_FIELDS = {f.name: f for f in fields(Record)}


def label_source_of(rec: Record, log_source: str) -> str:
    """``rec.label_source``, or for a version-1 record (which has none) the rule that
    migrates it: every simulator record carries the expert's answer; elsewhere a label is a
    human's only in user mode (an autopilot frame recorded the idle user's (0, 0))."""
    if rec.label_source is not None:
        return rec.label_source
    if log_source == "sim":
        return "expert"
    return "human" if rec.mode == "user" else "none"


def training_label(
    rec: Record, log_source: str, accept: tuple[str, ...] = TRAINING_LABELS
) -> tuple[float, float] | None:
    """(steering, throttle) to train on, or None: labels from ``accept`` only; with "edge"
    in ``accept``, a frame the edge answered in time teaches its answer (distillation)."""
    if label_source_of(rec, log_source) in accept:
        return rec.steering, rec.throttle
    if "edge" in accept and rec.edge_steering is not None and rec.edge_throttle is not None:
        return rec.edge_steering, rec.edge_throttle
    return None


def unit_command(x: float) -> float:
    """A steering or throttle command as a device takes it: clamped to [-1, 1], and NaN or
    infinite (a broken pilot) neutral. Clamping alone would turn NaN into a lock: one rule
    for the real car's actuator (``vehicle.actuators``) and the simulated one."""
    x = float(x)
    return min(1.0, max(-1.0, x)) if math.isfinite(x) else 0.0


def _check_unit(name: str, v: object) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or abs(v) > 1.0:
        raise RecordError(f"{name} must be a finite number in [-1, 1], got {v!r}")


def encode_record(rec: Record) -> bytes:
    """One line, without the defaults (a user-driven frame is ~70 bytes)."""
    d: dict[str, Any] = {}
    for name in _RECORD_FIELDS:
        v = getattr(rec, name)
        if v is None or v is False or v == {}:
            continue
        if name == "mode" and v == "user":
            continue
        d[name] = v
    return json.dumps(d, separators=(",", ":")).encode() + b"\n"


def encode_delete(d: DeleteRange) -> bytes:
    return json.dumps({"op": "delete", "first": d.first, "last": d.last}).encode() + b"\n"


def decode_line(line: bytes | str) -> Record | DeleteRange:
    """Parse one line; raises RecordError (never anything else) on a bad one."""
    try:
        d = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # deep nesting
        raise RecordError(f"not JSON ({e.msg if hasattr(e, 'msg') else str(e)[:200]})") from None
    if not isinstance(d, dict):
        raise RecordError("a line must hold a JSON object")
    if d.get("op") == "delete":
        first, last = d.get("first"), d.get("last")
        if not (isinstance(first, int) and isinstance(last, int) and first <= last):
            raise RecordError(f"bad delete range {first!r}..{last!r}")
        return DeleteRange(first, last)
    kw = {k: v for k, v in d.items() if k in _RECORD_FIELDS}  # unknown keys: ignored
    for req in ("i", "t", "steering", "throttle"):
        if req not in kw:
            raise RecordError(f"record lacks {req!r}")
    if not isinstance(kw["i"], int) or isinstance(kw["i"], bool) or kw["i"] < 0:
        raise RecordError(f"'i' must be a non-negative integer, got {kw['i']!r}")
    t = kw["t"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise RecordError(f"'t' must be a finite number, got {kw['t']!r}")
    for name in ("latency_ms", "sim"):
        if name in kw and not isinstance(kw[name], dict):
            raise RecordError(f"{name!r} must be an object")
    if "image" in kw and not (kw["image"] is None or isinstance(kw["image"], str)):
        raise RecordError("'image' must be a string")
    if (
        "image" in kw
        and isinstance(kw["image"], str)
        and (".." in kw["image"] or kw["image"].startswith("/"))
    ):
        raise RecordError(f"'image' must stay inside the log, got {kw['image']!r}")
    try:
        return Record(**kw)
    except TypeError as e:
        raise RecordError(str(e)) from None
