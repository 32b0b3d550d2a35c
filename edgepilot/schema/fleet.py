"""Fleet messages: log upload (car -> cloud) and model push (cloud -> cars), typed and validated.

The inference messages live in ``edgepilot.schema.wire``; this module holds the slower,
bulkier traffic between the fleet and the cloud trainer. Same rules: every topic under
``edgepilot/v1/``, every payload carries ``"v"`` (refused when newer than we speak),
JSON for anything a human may want to read with ``mosquitto_sub``, and a JSON header
line + ``\\n`` + raw bytes for bulk chunks (base64 would cost a third more bytes).

Upload (car ``<car>``, one upload = one driving log packed as a deterministic tar whose
sha256 is the upload id, cut into fixed-size chunks)::

    upload/<car>/offer   car -> cloud  UploadOffer (JSON), QoS 1; also the "commit"
    upload/<car>/chunk   car -> cloud  header {v, upload, index, sha256} \\n bytes, QoS 1
    upload/<car>/ack     cloud -> car  ChunkAck (JSON), QoS 1, after the chunk is stored
    upload/<car>/status  cloud -> car  UploadStatus (JSON), QoS 1, the answer to an offer

Model push (target ``car`` or ``edge``)::

    models/<target>                       cloud, retained: PushAnnouncement (JSON)
    models/<target>/chunks/<version>/<i>  cloud, retained: raw package bytes of chunk i
    car/<car>/model                       car, retained: CarModelStatus (JSON)

``PushAnnouncement`` is the one model announcement: an edge node that reads the package
from a shared ``path`` and a car that fetches the retained chunks both read it, and both
check its signature before reading a byte of the package.

Cloud control::

    cloud/retrain  anyone allowed -> cloud: any payload asks for a retraining run now
    cloud/runs     cloud, retained: RunSummary (JSON) of the last run, or why it failed
    cloud/models   operator tools -> cloud: ModelChange (promote/rollback, HMAC under the
                   operator's token); the cloud answers on cloud/models/result
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgepilot.schema.wire import ROOT, WireError, check_id, model_topic

FLEET_VERSION = 1
"""Payload version this code writes and the highest it reads."""

MAX_CHUNK_BYTES = 1 << 20  # under Mosquitto's message_size_limit (4 MiB) with room to spare
MAX_CHUNKS = 1 << 16  # 64 GiB at 1 MiB chunks: far more than one driving log
MAX_HEADER_BYTES = 1024
UPLOAD_STATES = ("partial", "complete", "error")
CAR_MODEL_STATES = ("running", "fetching", "refused")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# -- topics ------------------------------------------------------------------------------

UPLOAD_OFFER_FILTER = f"{ROOT}/upload/+/offer"
UPLOAD_CHUNK_FILTER = f"{ROOT}/upload/+/chunk"
CAR_MODEL_FILTER = f"{ROOT}/car/+/model"


def upload_topic(car_id: str, kind: str) -> str:
    if kind not in ("offer", "chunk", "ack", "status"):
        raise WireError(f"upload topic kind must be offer/chunk/ack/status, got {kind!r}")
    return f"{ROOT}/upload/{check_id(car_id, 'car id')}/{kind}"


def car_of_upload_topic(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{ROOT}/upload":
        raise WireError(f"not an upload topic: {topic!r}")
    return check_id(parts[3], "car id")


def shared(group: str, flt: str) -> str:
    """MQTT v5 shared subscription: several cloud trainers split the work of one filter."""
    return f"$share/{check_id(group, 'group')}/{flt}"


def chunk_topic(target: str, version: str, index: int) -> str:
    return f"{model_topic(target)}/chunks/{check_id(version, 'version')}/{int(index)}"


def chunk_filter(target: str, version: str) -> str:
    return f"{model_topic(target)}/chunks/{check_id(version, 'version')}/+"


def index_of_chunk_topic(topic: str) -> int:
    tail = topic.rsplit("/", 1)[-1]
    if not tail.isdigit():
        raise WireError(f"not a chunk topic: {topic!r}")
    return int(tail)


def car_model_topic(car_id: str) -> str:
    return f"{ROOT}/car/{check_id(car_id, 'car id')}/model"


# -- helpers -----------------------------------------------------------------------------


def _loads(payload: bytes, what: str, max_v: int = FLEET_VERSION) -> dict[str, Any]:
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting
        raise WireError(f"{what} is not JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise WireError(f"{what} must be a JSON object")
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise WireError(f"{what} needs an integer version 'v', got {v!r}")
    if v > max_v:
        raise WireError(f"{what}: unsupported version {v} (this node speaks up to {max_v})")
    return d


def _dumps(obj: Any) -> bytes:
    return json.dumps({k: v for k, v in asdict(obj).items() if v is not None}, separators=(",", ":")).encode()


def _build(cls: type, d: dict[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in d.items() if k in known})
    except TypeError as e:
        raise WireError(f"{what}: {e}") from None


def _int(d: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    val = d.get(key)
    if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
        raise WireError(f"{what}: {key} must be an integer in [{lo}, {hi}], got {val!r}")
    return val


def check_sha(val: Any, what: str) -> str:
    if not isinstance(val, str) or not _HEX64.match(val):
        raise WireError(f"{what} must be 64 lowercase hex characters (sha256), got {str(val)[:80]!r}")
    return val


def check_name(val: Any, what: str = "name") -> str:
    """Log names and versions become directory names and topic levels."""
    if not isinstance(val, str) or not _NAME.match(val) or val in (".", ".."):
        raise WireError(f"{what} must be 1-128 characters of A-Z a-z 0-9 . _ -, got {str(val)[:80]!r}")
    return val


def ranges(indices: set[int] | list[int]) -> list[list[int]]:
    """``{0,1,2,5}`` -> ``[[0,3],[5,6]]`` (half-open): a have-set stays small on the wire."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def from_ranges(rs: Any, limit: int, what: str) -> set[int]:
    if not isinstance(rs, list):
        raise WireError(f"{what} must be a list of [start, stop) pairs")
    have: set[int] = set()
    for r in rs:
        if (
            not isinstance(r, list)
            or len(r) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
            or not 0 <= r[0] < r[1] <= limit
        ):
            raise WireError(f"{what}: bad range {r!r} (limit {limit})")
        have.update(range(r[0], r[1]))
    return have


# -- upload ------------------------------------------------------------------------------


@dataclass(slots=True)
class UploadOffer:
    """ "I have this log": sent first (the cloud answers with what it already has) and again
    once every chunk is acknowledged (the cloud then assembles, verifies and answers
    ``complete``). ``chunk_sha256`` lets the cloud verify each chunk as it lands."""

    car: str
    upload: str  # sha256 of the packed log: its identity
    name: str  # the log's directory name (becomes logs/<car>/<name> in the store)
    size: int
    chunk_size: int
    chunk_sha256: list[str]
    frames: int = 0
    v: int = FLEET_VERSION

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)


def encode_offer(o: UploadOffer) -> bytes:
    _validate_offer(o)
    return _dumps(o)


def _validate_offer(o: UploadOffer) -> None:
    check_id(o.car, "car id")
    check_sha(o.upload, "upload")
    check_name(o.name, "log name")
    d = asdict(o)
    size = _int(d, "size", 0, MAX_CHUNKS * MAX_CHUNK_BYTES, "offer")
    cs = _int(d, "chunk_size", 1, MAX_CHUNK_BYTES, "offer")
    _int(d, "frames", 0, 1 << 40, "offer")
    if not isinstance(o.chunk_sha256, list):
        raise WireError("offer: chunk_sha256 must be a list")
    want = max(1, math.ceil(size / cs))
    if len(o.chunk_sha256) != want:
        raise WireError(
            f"offer: {size} bytes in {cs}-byte chunks is {want} chunks, got {len(o.chunk_sha256)}"
        )
    for i, h in enumerate(o.chunk_sha256):
        check_sha(h, f"offer: chunk_sha256[{i}]")


def decode_offer(payload: bytes) -> UploadOffer:
    o = _build(UploadOffer, _loads(payload, "offer"), "offer")
    _validate_offer(o)
    return o


@dataclass(slots=True)
class UploadStatus:
    """The cloud's answer to an offer. ``have``: stored chunks as half-open ranges."""

    upload: str
    state: str  # partial | complete | error
    have: list[list[int]] = field(default_factory=list)
    log: str | None = None  # the store key of the log, once complete
    error: str | None = None
    v: int = FLEET_VERSION


def encode_status(s: UploadStatus) -> bytes:
    if s.state not in UPLOAD_STATES:
        raise WireError(f"status state must be one of {UPLOAD_STATES}, got {s.state!r}")
    return _dumps(s)


def decode_status(payload: bytes) -> UploadStatus:
    d = _loads(payload, "upload status")
    s = _build(UploadStatus, d, "upload status")
    check_sha(s.upload, "upload status: upload")
    if s.state not in UPLOAD_STATES:
        raise WireError(f"upload status: state must be one of {UPLOAD_STATES}, got {s.state!r}")
    from_ranges(s.have, MAX_CHUNKS, "upload status: have")
    return s


@dataclass(slots=True)
class ChunkHeader:
    upload: str
    index: int
    sha256: str
    v: int = FLEET_VERSION


def encode_chunk(h: ChunkHeader, body: bytes) -> bytes:
    if len(body) > MAX_CHUNK_BYTES:
        raise WireError(f"chunk is {len(body)} bytes, over {MAX_CHUNK_BYTES}")
    return json.dumps(asdict(h), separators=(",", ":")).encode() + b"\n" + body


def decode_chunk(payload: bytes) -> tuple[ChunkHeader, memoryview]:
    """Header validated; the body is returned as a view (no copy of a 256 KiB chunk)."""
    nl = payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if nl < 0:
        raise WireError(f"chunk has no header line (<= {MAX_HEADER_BYTES} bytes)")
    d = _loads(payload[:nl], "chunk header")
    h = _build(ChunkHeader, d, "chunk header")
    check_sha(h.upload, "chunk header: upload")
    check_sha(h.sha256, "chunk header: sha256")
    _int(d, "index", 0, MAX_CHUNKS - 1, "chunk header")
    body = memoryview(payload)[nl + 1 :]
    if len(body) > MAX_CHUNK_BYTES:
        raise WireError(f"chunk is {len(body)} bytes, over {MAX_CHUNK_BYTES}")
    return h, body


@dataclass(slots=True)
class ChunkAck:
    """Chunk ``index`` of ``upload`` is stored (or, with ``error``, was refused)."""

    upload: str
    index: int
    error: str | None = None
    v: int = FLEET_VERSION


def encode_ack(a: ChunkAck) -> bytes:
    return _dumps(a)


def decode_ack(payload: bytes) -> ChunkAck:
    d = _loads(payload, "chunk ack")
    a = _build(ChunkAck, d, "chunk ack")
    check_sha(a.upload, "chunk ack: upload")
    _int(d, "index", 0, MAX_CHUNKS - 1, "chunk ack")
    return a


# -- model push --------------------------------------------------------------------------


ANNOUNCE_VERSION = 2
"""Announcements carry a signed counter and expiry since version 2; a version-1 one (no
counter: it could be replayed forever) is refused."""


@dataclass(slots=True)
class PushAnnouncement:
    """Retained on ``models/<target>``: the version the fleet should run.

    ``signature`` is the cloud's announcement key's Ed25519 signature (base64) over
    ``signed_bytes()``: target, version, sha256, size, ``counter``, ``expires`` and
    ``rollback``. A receiver refuses a forged announcement before it fetches anything,
    one that is not newer (``counter``) than what it has accepted (a replayed old one: a
    downgrade), and one past ``expires`` (a frozen one); the package then carries its own
    signature (another key), checked again on load. ``chunk_sha256`` lets the car verify
    each chunk as it arrives."""

    target: str
    version: str
    sha256: str
    size: int
    chunk_size: int
    chunk_sha256: list[str]
    signature: str
    key_id: str = ""
    parent: str | None = None
    path: str | None = None  # the package on a disk the receiver shares (edge nodes)
    url: str | None = None
    rollback: bool = False
    at: float = 0.0
    counter: int = 0  # strictly increasing per target (each promotion, rollback and refresh)
    expires: int = 0  # unix seconds: the cloud re-announces before then
    v: int = ANNOUNCE_VERSION

    def signed_bytes(self) -> bytes:
        return signed_bytes(self)

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)


def signed_bytes(a: PushAnnouncement) -> bytes:
    fields_ = (a.target, a.version, a.sha256, a.size, a.counter, a.expires, int(a.rollback))
    return "\n".join(["edgepilot-push/2", *map(str, fields_)]).encode()


def encode_announcement(a: PushAnnouncement) -> bytes:
    _validate_announcement(a)
    return _dumps(a)


def _validate_announcement(a: PushAnnouncement) -> None:
    model_topic(a.target)
    check_id(a.version, "version")
    check_name(a.version, "version")
    check_sha(a.sha256, "announcement: sha256")
    d = asdict(a)
    size = _int(d, "size", 1, MAX_CHUNKS * MAX_CHUNK_BYTES, "announcement")
    cs = _int(d, "chunk_size", 1, MAX_CHUNK_BYTES, "announcement")
    if not isinstance(a.chunk_sha256, list) or len(a.chunk_sha256) != math.ceil(size / cs):
        raise WireError("announcement: chunk_sha256 does not match size / chunk_size")
    for i, h in enumerate(a.chunk_sha256):
        check_sha(h, f"announcement: chunk_sha256[{i}]")
    if a.v < ANNOUNCE_VERSION:
        raise WireError(f"announcement version {a.v} has no signed counter and expiry: refused (replayable)")
    _int(d, "counter", 1, 2**62, "announcement")
    _int(d, "expires", 1, 2**40, "announcement")
    if not isinstance(a.rollback, bool):
        raise WireError("announcement: rollback must be true or false")
    try:
        if len(base64.b64decode(a.signature, validate=True)) != 64:
            raise ValueError
    except (ValueError, TypeError):
        raise WireError("announcement: signature must be a base64 Ed25519 signature") from None


def decode_announcement(payload: bytes) -> PushAnnouncement:
    a = _build(PushAnnouncement, _loads(payload, "announcement", ANNOUNCE_VERSION), "announcement")
    _validate_announcement(a)
    return a


@dataclass(slots=True)
class CarModelStatus:
    """Retained on ``car/<car>/model``: what the car runs, and why it refused an update."""

    car: str
    version: str | None  # the model the loop runs now
    state: str  # running | fetching | refused
    offered: str | None = None  # the announced version this status is about
    error: str | None = None
    at: float = 0.0
    v: int = FLEET_VERSION


def encode_car_status(s: CarModelStatus) -> bytes:
    check_id(s.car, "car id")
    if s.state not in CAR_MODEL_STATES:
        raise WireError(f"car model state must be one of {CAR_MODEL_STATES}, got {s.state!r}")
    return json.dumps(asdict(s), separators=(",", ":")).encode()


def decode_car_status(payload: bytes) -> CarModelStatus:
    s = _build(CarModelStatus, _loads(payload, "car model status"), "car model status")
    check_id(s.car, "car id")
    if s.state not in CAR_MODEL_STATES:
        raise WireError(f"car model state must be one of {CAR_MODEL_STATES}, got {s.state!r}")
    return s


# -- car telemetry ----------------------------------------------------------------------

CAR_TELEMETRY_FILTER = f"{ROOT}/car/+/telemetry"
CAR_STATES = ("driving", "parked", "offline")


def car_telemetry_topic(car_id: str) -> str:
    return f"{ROOT}/car/{check_id(car_id, 'car id')}/telemetry"


@dataclass(slots=True)
class CarTelemetry:
    """Retained on ``car/<car>/telemetry`` about once a second while the car's loop runs,
    and as its Last Will (``state`` offline): what the fleet's dashboard shows of a car.
    Rates and shares are over the last ``window_s`` seconds of driving."""

    car: str
    state: str  # driving | parked | offline
    model: str | None = None
    mode: str | None = None
    loop_hz: float | None = None
    frames: int = 0  # since the car started
    exit_rate: dict[str, float] = field(default_factory=dict)  # "exit index" -> share
    offload_rate: float | None = None
    edge_used_rate: float | None = None
    edge_rtt_ms: dict[str, float] = field(default_factory=dict)  # p50, p99
    takeovers: int = 0  # autopilot frames a human drove (interventions), since the car started
    interventions: int = 0  # the simulator's: the car left the road (sim drives only)
    recording: bool = False
    records: int = 0
    last_upload: str | None = None  # the last log the cloud acknowledged whole
    last_upload_at: float | None = None
    window_s: float = 10.0
    at: float = 0.0
    v: int = FLEET_VERSION


def encode_car_telemetry(t: CarTelemetry) -> bytes:
    _validate_telemetry(t)
    return json.dumps(asdict(t), separators=(",", ":")).encode()


def _validate_telemetry(t: CarTelemetry) -> None:
    check_id(t.car, "car id")
    if t.state not in CAR_STATES:
        raise WireError(f"car telemetry state must be one of {CAR_STATES}, got {t.state!r}")
    for name in ("exit_rate", "edge_rtt_ms"):
        val = getattr(t, name)
        if not isinstance(val, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in val.items()
        ):
            raise WireError(f"car telemetry: {name} must map strings to numbers")


def decode_car_telemetry(payload: bytes) -> CarTelemetry:
    t = _build(CarTelemetry, _loads(payload, "car telemetry"), "car telemetry")
    _validate_telemetry(t)
    return t


# -- cloud control -----------------------------------------------------------------------

CLOUD_RETRAIN_TOPIC = f"{ROOT}/cloud/retrain"
"""Any payload (``{"v":1}``) asks the cloud trainer to retrain now (also: ``edgepilot cloud``
retrains by itself once ``retrain_min_frames`` new frames arrived)."""

CLOUD_RUNS_TOPIC = f"{ROOT}/cloud/runs"
"""The cloud publishes (retained) a ``RunSummary`` of its last retraining run here."""


@dataclass(slots=True)
class RunSummary:
    """What one retraining run came to, for whoever watches the fleet (the demo, the
    dashboard): which models are current now, what was promoted, the gate's verdict per
    target with its checks (value against limit), the data it trained on. A run that
    could not run has ``run`` None and ``error`` set (published, not retained)."""

    run: str | None
    promoted: list[str] = field(default_factory=list)
    current: dict[str, str | None] = field(default_factory=dict)  # target -> version
    error: str | None = None
    report: str | None = None  # the store key of the run's report
    gate: dict[str, bool] = field(default_factory=dict)  # target -> passed
    checks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # target -> gate checks
    data: list[str] = field(default_factory=list)  # training sessions (store keys)
    heldout: list[str] = field(default_factory=list)  # evaluation sessions
    tails: dict[str, Any] | None = None  # the promoted car model's split-mode tails, or why not
    elapsed_s: float | None = None
    at: float = 0.0
    v: int = FLEET_VERSION


def encode_run_summary(r: RunSummary) -> bytes:
    _validate_run_summary(r)
    return json.dumps(asdict(r), separators=(",", ":")).encode()


def _validate_run_summary(r: RunSummary) -> None:
    if r.run is not None:
        check_name(r.run, "run summary: run")
    if r.run is None and not r.error:
        raise WireError("run summary: a run without an id must say why (error)")
    for t in (*r.promoted, *r.current, *r.gate, *r.checks):
        model_topic(t)  # a known target
    for name in ("data", "heldout", "promoted"):
        val = getattr(r, name)
        if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
            raise WireError(f"run summary: {name} must be a list of strings")


def decode_run_summary(payload: bytes) -> RunSummary:
    r = _build(RunSummary, _loads(payload, "run summary"), "run summary")
    _validate_run_summary(r)
    return r


# -- model changes asked for over the bus -------------------------------------------------

CLOUD_MODELS_TOPIC = f"{ROOT}/cloud/models"
"""Operator tools (the dashboard) -> cloud: a ``ModelChange`` (promote or roll back)."""

CLOUD_MODELS_RESULT_TOPIC = f"{ROOT}/cloud/models/result"
"""Cloud -> operator tools: the ``ModelChangeResult`` of each ``ModelChange``."""

MODEL_CHANGE_ACTIONS = ("promote", "rollback")
MODEL_CHANGE_TARGETS = ("car", "edge")
MODEL_CHANGE_MAX_AGE_S = 120.0
"""A change older (or further in the future) than this is refused: a recorded one cannot be
replayed later; the margin allows for clocks that differ between the dashboard and the cloud."""
_CHANGE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_HEX_MAC = re.compile(r"^[0-9a-f]{64}$")


@dataclass(slots=True)
class ModelChange:
    """Promote a registered version, or roll a target back, as ``edgepilot models
    promote|rollback`` would: the cloud trainer runs the same function and answers with a
    ``ModelChangeResult`` of the same ``id``.

    Publishing here is not enough to change the fleet: ``mac`` is HMAC-SHA256, keyed with
    the operator's token, over ``change_signed_bytes``; the cloud refuses a change whose mac
    does not check, whose ``at`` is more than ``MODEL_CHANGE_MAX_AGE_S`` away from its clock,
    or whose ``id`` it has already run (it answers with the first result again)."""

    id: str  # unique per request, 8-64 of A-Z a-z 0-9 _ -
    action: str  # promote | rollback
    target: str  # car | edge
    version: str | None = None  # promote: the version; rollback: none
    by: str = ""  # who asked (for the cloud's log), e.g. "dashboard@host 127.0.0.1"
    at: float = 0.0  # unix seconds when asked
    mac: str = ""  # hex HMAC-SHA256 under the operator's token
    v: int = FLEET_VERSION


def change_signed_bytes(c: ModelChange) -> bytes:
    parts = ("edgepilot-model-change/1", c.id, c.action, c.target, c.version or "", c.by, f"{float(c.at):.3f}")
    return "\n".join(parts).encode()


def change_mac(c: ModelChange, token: str) -> str:
    return hmac.new(token.encode(), change_signed_bytes(c), hashlib.sha256).hexdigest()


def change_mac_ok(c: ModelChange, token: str) -> bool:
    return hmac.compare_digest(change_mac(c, token), c.mac)


def _validate_change(c: ModelChange) -> None:
    if not isinstance(c.id, str) or not _CHANGE_ID.match(c.id):
        raise WireError(f"model change: id must be 8-64 of A-Z a-z 0-9 _ -, got {str(c.id)[:80]!r}")
    if c.action not in MODEL_CHANGE_ACTIONS:
        raise WireError(f"model change: action must be one of {MODEL_CHANGE_ACTIONS}, got {c.action!r}")
    if c.target not in MODEL_CHANGE_TARGETS:
        raise WireError(f"model change: target must be one of {MODEL_CHANGE_TARGETS}, got {c.target!r}")
    if c.action == "promote":
        check_name(c.version, "model change: version")
    elif c.version is not None:
        raise WireError("model change: a rollback names no version (it goes back to the previous current)")
    if not isinstance(c.by, str) or len(c.by) > 200:
        raise WireError("model change: by must be a string of at most 200 characters")
    if not isinstance(c.at, int | float) or isinstance(c.at, bool) or not 0 < c.at < 2**40:
        raise WireError(f"model change: at must be unix seconds, got {c.at!r}")
    if not isinstance(c.mac, str) or not _HEX_MAC.match(c.mac):
        raise WireError("model change: mac must be 64 lowercase hex characters (HMAC-SHA256)")


def _json_codec(cls: type, validate: Callable[[Any], None], what: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """The encoder and decoder of a JSON payload class, both running its validation."""

    def encode(obj: Any) -> bytes:
        validate(obj)
        return _dumps(obj)

    def decode(payload: bytes) -> Any:
        obj = _build(cls, _loads(payload, what), what)
        validate(obj)
        return obj

    return encode, decode


encode_model_change, decode_model_change = _json_codec(ModelChange, _validate_change, "model change")


@dataclass(slots=True)
class ModelChangeResult:
    """The cloud's answer to the ``ModelChange`` of the same ``id``: what is current now,
    whether the fleet was told (the retained announcement went out), or why it was refused."""

    id: str
    ok: bool
    action: str = ""
    target: str = ""
    current: str | None = None  # the target's current version after the change
    previous: str | None = None  # ... and before it
    pushed: bool = False
    error: str | None = None
    at: float = 0.0
    v: int = FLEET_VERSION


def _validate_change_result(r: ModelChangeResult) -> None:
    if not isinstance(r.id, str) or not _CHANGE_ID.match(r.id):
        raise WireError(f"model change result: bad id {str(r.id)[:80]!r}")
    if not isinstance(r.ok, bool) or not isinstance(r.pushed, bool):
        raise WireError("model change result: ok and pushed must be true or false")
    if not r.ok and not r.error:
        raise WireError("model change result: a refused change must say why (error)")


encode_model_change_result, decode_model_change_result = _json_codec(
    ModelChangeResult, _validate_change_result, "model change result"
)
