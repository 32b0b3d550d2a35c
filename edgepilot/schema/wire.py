"""Every message edgepilot sends over MQTT: topics and payloads, typed, versioned, validated.

One module so that the car, the edge node, the cloud trainer, the benchmarks and someone
else's client (mosquitto_pub/sub, paho) agree byte for byte; docs/protocol.md documents
what is here. All topics live under ``edgepilot/v1/``: the ``v1`` is the *topic* version,
bumped only if the topic tree itself changes; each payload also carries ``"v"`` (the
payload version) so a node can refuse a payload it would misread instead of guessing.

Inference request (car -> edge), topic ``edgepilot/v1/car/<car>/infer``, QoS 0. The
payload is one line of JSON (the header), a newline, then the body bytes (a JPEG frame):
JSON for the small, self-describing header; raw bytes for the frame, because base64 would
cost a third more bytes and an encode/decode on both ends of a link whose whole budget is
a frame period. ``printf '{"v":1,...}\\n' | cat - frame.jpg`` builds one by hand.

The reply goes to the reply topic of the car the request's topic names (a Response Topic
that names anything else is refused); Correlation Data is echoed on the reply; the
reply also repeats ``car`` and ``frame`` so a client without v5 properties can match.
Deadlines: ``deadline`` (unix seconds, needs NTP-synced clocks) and/or ``budget_ms``
(the edge drops a request that waited longer than this in its own queue, which needs no
synced clock). MQTT's Message Expiry Interval has one-second granularity: a frame's
deadline is tens of ms, so it only bounds how long a broker queue may keep a frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from edgepilot.schema.errors import WireError
from edgepilot.schema.features import (
    FEATURE_CODECS,
    FEATURE_DTYPES,
    MAX_FEATURE_ELEMS,
    FeatureMeta,
    pack_features,
    unpack_features,
)

__all__ = [  # the split-mode payload helpers are part of the inference protocol
    "FEATURE_CODECS",
    "FEATURE_DTYPES",
    "MAX_FEATURE_ELEMS",
    "FeatureMeta",
    "WireError",
    "pack_features",
    "unpack_features",
]

WIRE_VERSION = 1
"""Payload version this code writes and the highest it reads."""

ROOT = "edgepilot/v1"
MAX_REQUEST_BYTES = 1 << 20  # a 160x120 JPEG is ~5 KB; a 640x480 one ~60 KB
MAX_HEADER_BYTES = 4096
MAX_ID_LEN = 64
KINDS = ("jpeg", "features")
REPLY_STATUSES = ("ok", "error", "dropped", "throttled")


# -- topics ------------------------------------------------------------------------------


def check_id(name: str, what: str = "id") -> str:
    """Car and node ids are topic levels: no wildcards, no slashes, not empty."""
    if not isinstance(name, str) or not name or len(name) > MAX_ID_LEN:
        raise WireError(f"{what} must be a non-empty string of at most {MAX_ID_LEN} characters")
    if any(c in name for c in "/+#$\x00") or name != name.strip():
        raise WireError(f"{what} {name!r} may not contain / + # $, NUL or edge whitespace")
    return name


def infer_topic(car_id: str) -> str:
    return f"{ROOT}/car/{check_id(car_id, 'car id')}/infer"


def reply_topic(car_id: str) -> str:
    return f"{ROOT}/car/{check_id(car_id, 'car id')}/reply"


INFER_FILTER = f"{ROOT}/car/+/infer"


def shared_infer_filter(group: str) -> str:
    """MQTT v5 shared subscription: the broker hands each request to one node of the group."""
    return f"$share/{check_id(group, 'group')}/{INFER_FILTER}"


def car_of_infer_topic(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{ROOT}/car" or parts[4] != "infer":
        raise WireError(f"not an inference topic: {topic!r}")
    return parts[3]


def health_topic(node_id: str) -> str:
    return f"{ROOT}/edge/{check_id(node_id, 'node id')}/health"


HEALTH_FILTER = f"{ROOT}/edge/+/health"


PUSH_TARGETS = ("car", "edge", "tails")
"""What the cloud pushes: the car model, the edge model, and the split-mode tails of the
car model (``TAILS_TOPIC``)."""


def model_topic(target: str) -> str:
    if target not in PUSH_TARGETS:
        raise WireError(f"model target must be one of {PUSH_TARGETS}, got {target!r}")
    return f"{ROOT}/models/{target}"


TAILS_TOPIC = model_topic("tails")
"""Retained, cloud -> edge nodes: a ``fleet.PushAnnouncement`` with target ``tails`` for the
split-mode tails (``edgepilot.model.tail.TailSet`` file) of a pushed car model. Its
``version`` is that *car model's* version (tails are bound to one); the file travels like
a package: ``path`` on a shared disk, and retained chunks on
``models/tails/chunks/<car version>/<i>``; the signature covers target, version, sha256
and size. Edge nodes verify it and add the tails to their shelf without a restart."""


# -- inference request -------------------------------------------------------------------


@dataclass(slots=True)
class InferRequest:
    """One frame (or, in split mode, one feature tensor) the car wants a second opinion on."""

    car: str
    frame: int
    body: bytes
    kind: str = "jpeg"
    sent: float | None = None  # unix seconds when the car sent it
    deadline: float | None = None  # unix seconds after which an answer is useless
    budget_ms: float | None = None  # how long the edge may hold it (clock-free deadline)
    model: str | None = None  # the car's own model version (for the edge's metrics)
    meta: dict[str, Any] = field(default_factory=dict)  # kind-specific (features: shape, scale)
    v: int = WIRE_VERSION


def encode_request(req: InferRequest) -> bytes:
    check_id(req.car, "car id")
    if req.kind not in KINDS:
        raise WireError(f"kind must be one of {KINDS}, got {req.kind!r}")
    head: dict[str, Any] = {"v": req.v, "car": req.car, "frame": req.frame, "kind": req.kind}
    for key in ("sent", "deadline", "budget_ms", "model"):
        val = getattr(req, key)
        if val is not None:
            head[key] = val
    if req.meta:
        head["meta"] = req.meta
    line = json.dumps(head, separators=(",", ":")).encode()
    out = line + b"\n" + req.body
    if len(out) > MAX_REQUEST_BYTES:
        raise WireError(f"request is {len(out)} bytes, over the {MAX_REQUEST_BYTES}-byte limit")
    return out


def _num(head: dict[str, Any], key: str, lo: float = 0.0) -> float | None:
    val = head.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < lo:
        raise WireError(f"{key} must be a finite number >= {lo}, got {val!r}")
    return float(val)


def decode_request(payload: bytes) -> InferRequest:
    """Parse and validate a request; raises WireError naming the first problem.

    A newer ``v`` is refused (we could misread it); the body is *not* decoded here (the
    edge decodes JPEGs in its batch, off the network thread)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise WireError(f"request is {len(payload)} bytes, over the {MAX_REQUEST_BYTES}-byte limit")
    nl = payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)
    if nl < 0:
        raise WireError(f"no header line: a request is a JSON line (<= {MAX_HEADER_BYTES} bytes), \\n, body")
    try:
        head = json.loads(payload[:nl])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting
        raise WireError(f"header is not JSON: {str(e)[:200]}") from None
    if not isinstance(head, dict):
        raise WireError("header must be a JSON object")
    v = head.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise WireError(f"header needs an integer version 'v', got {v!r}")
    if v > WIRE_VERSION:
        raise WireError(f"unsupported version {v} (this node speaks up to {WIRE_VERSION})")
    frame = head.get("frame")
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise WireError(f"frame must be a non-negative integer, got {frame!r}")
    car = check_id(head.get("car"), "car id")  # type: ignore[arg-type]
    kind = head.get("kind", "jpeg")
    if kind not in KINDS:
        raise WireError(f"kind must be one of {KINDS}, got {kind!r}")
    model = head.get("model")
    if model is not None and not isinstance(model, str):
        raise WireError("model must be a string")
    meta = head.get("meta", {})
    if not isinstance(meta, dict):
        raise WireError("meta must be a JSON object")
    if kind == "features":
        from edgepilot.schema.features import FeatureMeta

        FeatureMeta.from_dict(meta)  # a malformed meta is the sender's error, said here
    body = payload[nl + 1 :]
    if not body:
        raise WireError("empty body: the frame is missing")
    return InferRequest(
        car=car,
        frame=frame,
        body=bytes(body),
        kind=kind,
        sent=_num(head, "sent"),
        deadline=_num(head, "deadline"),
        budget_ms=_num(head, "budget_ms"),
        model=model,
        meta=meta,
        v=v,
    )


def peek_identity(payload: bytes) -> tuple[str | None, int | None]:
    """Best-effort (car, frame) of a payload that failed validation, for the error reply."""
    try:
        head = json.loads(payload[: payload.find(b"\n", 0, MAX_HEADER_BYTES + 1)])
        car, frame = head.get("car"), head.get("frame")
        return (car if isinstance(car, str) else None, frame if isinstance(frame, int) else None)
    except Exception:
        return None, None


# -- inference reply ---------------------------------------------------------------------


@dataclass(slots=True)
class InferReply:
    """The edge's answer: JSON, so that ``mosquitto_sub`` prints something a human reads.

    ``status``: ``ok`` (steering/throttle set), ``error`` (the request was malformed:
    ``error`` says why; the car should not resend it), ``throttled`` (a well-formed request
    from a car over its fair share of the node: a load signal, not a fault; ``error`` says
    why), ``dropped`` is never sent (a request past its deadline is dropped silently:
    answering late wastes the link)."""

    status: str
    car: str | None = None
    frame: int | None = None
    steering: float | None = None
    throttle: float | None = None
    confidence: float | None = None
    model: str | None = None  # the edge model's version
    node: str | None = None
    compute_ms: float | None = None  # decode + inference of the batch this frame was in
    batch: int | None = None
    queue_ms: float | None = None  # time from arrival at the edge to the start of its batch
    error: str | None = None
    v: int = WIRE_VERSION


_REPLY_KEYS = tuple(InferReply.__slots__)  # type: ignore[attr-defined]
_REPLY_KNOWN = frozenset(_REPLY_KEYS)
_compact = json.JSONEncoder(separators=(",", ":")).encode


def encode_reply(rep: InferReply) -> bytes:
    """JSON with the unset keys left out (``asdict`` deep-copies: measurably slower on the
    edge's per-reply path)."""
    if rep.status not in REPLY_STATUSES:
        raise WireError(f"status must be one of {REPLY_STATUSES}, got {rep.status!r}")
    d = {k: v for k in _REPLY_KEYS if (v := getattr(rep, k)) is not None}
    return _compact(d).encode()


def decode_reply(payload: bytes) -> InferReply:
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting
        raise WireError(f"reply is not JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise WireError("reply must be a JSON object")
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > WIRE_VERSION:
        raise WireError(f"unsupported reply version {v!r}")
    if d.get("status") not in REPLY_STATUSES:
        raise WireError(f"reply status must be one of {REPLY_STATUSES}, got {d.get('status')!r}")
    rep = InferReply(**{k: val for k, val in d.items() if k in _REPLY_KNOWN})
    # the car matches a reply by ``frame`` when it has no correlation data: a list there
    # would be an unhashable key on its network thread
    if rep.frame is not None and (isinstance(rep.frame, bool) or not isinstance(rep.frame, int)):
        raise WireError(f"reply frame must be an integer, got {rep.frame!r:.40}")
    if rep.car is not None and not isinstance(rep.car, str):
        raise WireError("reply car must be a string")
    if rep.status == "ok":
        for key in ("steering", "throttle"):
            val = getattr(rep, key)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not -1.0 <= val <= 1.0:
                raise WireError(f"ok reply needs {key} in [-1, 1], got {val!r}")
    return rep


# -- edge health and model announcements -------------------------------------------------


@dataclass(slots=True)
class EdgeHealth:
    """Published (retained) by each edge node every second, and as its Last Will (offline)."""

    node: str
    status: str = "up"  # up | offline
    model: str | None = None
    requests: int = 0
    answered: int = 0
    dropped_expired: int = 0
    errors: int = 0
    batches: int = 0
    batch_sizes: dict[str, int] = field(default_factory=dict)  # "size" -> count
    latency_ms: dict[str, int] = field(default_factory=dict)  # "<=bound" -> count (arrival->reply)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    uptime_s: float = 0.0
    # split mode: what this node serves, so a planner can weigh it against frame mode:
    # [{"car_model": version, "stages": {"<k>": {"shape": [C,H,W], "val_mae": x,
    #   "hard_mae": x on the validation frames the car marks hard, what it offloads (null:
    #   none, or tails from before the field), "compute_ms": per-frame tail compute,
    #   smoothed (null until it has run)}}}, ...]
    tails: list[dict[str, Any]] | None = None
    # frame mode's accuracy for that weighing: the edge model's held-out steering MAE (its
    # package's ``metrics.val_steering_mae``; null for a model without one, e.g. builtin)
    model_mae: float | None = None
    # one car cannot starve the others: requests refused because their car sent faster than
    # its fair share of the node ("throttled" error replies), in all and per car (the 32
    # cars throttled most); and the requests waiting in the node's queue now
    throttled: int = 0
    throttled_cars: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    v: int = WIRE_VERSION


def encode_health(h: EdgeHealth) -> bytes:
    return json.dumps(asdict(h), separators=(",", ":")).encode()


def decode_health(payload: bytes) -> EdgeHealth:
    try:
        d = json.loads(payload)
        if not isinstance(d, dict) or not isinstance(d.get("node"), str):
            raise WireError("health must be a JSON object with a node")
        known = set(EdgeHealth.__slots__)  # type: ignore[attr-defined]
        return EdgeHealth(**{k: v for k, v in d.items() if k in known})
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, RecursionError) as e:
        raise WireError(f"bad health payload: {str(e)[:200]}") from None
