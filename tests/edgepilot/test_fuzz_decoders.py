"""Property-based tests of every decoder that reads bytes another process (or a user) wrote.

The property is the same everywhere: whatever the input, a decoder either returns a
well-typed value or raises its *documented* error type (``WireError`` for MQTT payloads,
``RecordError`` for log lines, ``EdgepilotError`` for track files and model packages);
the serial parser never raises at all and resynchronises. Anything else (a
``RecursionError`` from deeply nested JSON, a ``TypeError`` from a list where a number
belongs, ``NotImplementedError`` from a zip member with an unknown compression) would
be a crash of the network thread, the recorder, or the CLI -- each was a finding, see
docs/reliability.md.

Inputs are drawn three ways: raw bytes; JSON documents with the decoder's own keys but
arbitrary values (the interesting cases: right shape, wrong types); and valid encodings
with bytes flipped or cut.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import zipfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgepilot import EdgepilotError
from edgepilot.schema import fleet, wire
from edgepilot.schema.log import DeleteRange, Record, RecordError, SessionMeta, decode_line, encode_record
from edgepilot.sim.tracks import parse_track
from vehicle import serial_proto as sp

# as many examples per decoder as the hypothesis profile says (tests/conftest.py: a few
# locally, more in CI, HYPOTHESIS_PROFILE=deep after touching a decoder); the ``@example``
# cases always run
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies --------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
DEEP = [b"[" * 50_000, b'{"a":' * 50_000, b"[" * 3000 + b"\n" + b"x"]
"""Deeply nested JSON: Python's json raises RecursionError on it, which is not a ValueError."""


def docs_with(keys: list[str]) -> st.SearchStrategy[bytes]:
    """JSON objects over the decoder's own keys with arbitrary values (plus a usual ``v``)."""
    d = st.dictionaries(st.sampled_from(keys + ["v", "zz"]), json_values, max_size=len(keys) + 2)
    return d.map(lambda x: json.dumps(x, allow_nan=True).encode())


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid encoding with a few bytes replaced, cut short, or extended."""

    def flip(data: bytes, edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> bytes:
        b = bytearray(data)
        for pos, val in edits:
            if b:
                b[pos % len(b)] = val
        if cut is not None:
            b = b[: cut % (len(b) + 1)]
        return bytes(b) + tail

    return st.builds(
        flip,
        st.just(valid),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
        st.none() | st.integers(0, 1 << 20),
        st.binary(max_size=8),
    )


def only(errors: tuple[type[BaseException], ...], fn, *args):
    """Call ``fn``; any exception other than ``errors`` fails the test (with its type)."""
    try:
        return fn(*args)
    except errors:
        return None


# -- wire (edgepilot/schema/wire.py) --------------------------------------------------------

REQ = wire.encode_request(
    wire.InferRequest(car="car-1", frame=7, body=b"\xff\xd8jpeg", sent=1.0, deadline=2.0, budget_ms=30.0)
)
REPLY = wire.encode_reply(wire.InferReply("ok", car="car-1", frame=7, steering=0.1, throttle=0.2, node="e"))
REQ_KEYS = ["car", "frame", "kind", "sent", "deadline", "budget_ms", "model", "meta"]
REPLY_KEYS = ["status", "car", "frame", "steering", "throttle", "confidence", "model", "node", "error"]


@FUZZ
@given(st.binary(max_size=256) | mutated(REQ) | docs_with(REQ_KEYS).map(lambda h: h + b"\n\xff\xd8x"))
@example(DEEP[2])
def test_wire_request_raises_only_wire_error(payload):
    req = only((wire.WireError,), wire.decode_request, payload)
    if req is not None:
        assert isinstance(req.frame, int) and req.frame >= 0 and req.body
        wire.check_id(req.car)
        for key in ("sent", "deadline", "budget_ms"):
            val = getattr(req, key)
            assert val is None or (isinstance(val, float) and math.isfinite(val))


@FUZZ
@given(st.binary(max_size=128) | mutated(REPLY) | docs_with(REPLY_KEYS))
@example(DEEP[0])
@example(b'{"v":1,"status":"ok","steering":0,"throttle":0,"frame":[1]}')
def test_wire_reply_raises_only_wire_error_and_is_typed(payload):
    """The car matches a reply to its frame by ``frame`` when there is no correlation
    data: a list there was an unhashable key in the offload client's network thread."""
    rep = only((wire.WireError,), wire.decode_reply, payload)
    if rep is not None:
        assert rep.frame is None or (isinstance(rep.frame, int) and not isinstance(rep.frame, bool))
        assert rep.car is None or isinstance(rep.car, str)
        if rep.status == "ok":
            assert -1 <= rep.steering <= 1 and -1 <= rep.throttle <= 1


@FUZZ
@given(st.binary(max_size=128) | docs_with(["node", "status", "requests", "latency_p99_ms", "uptime_s"]))
@example(DEEP[1])
def test_wire_health_raises_only_wire_error(payload):
    only((wire.WireError,), wire.decode_health, payload)


# -- fleet (edgepilot/schema/fleet.py) -------------------------------------------------------

H = hashlib.sha256(b"x").hexdigest()
OFFER = fleet.encode_offer(fleet.UploadOffer("car-1", H, "log-1", 10, 4, [H, H, H], frames=3))
ANN = fleet.encode_announcement(
    fleet.PushAnnouncement(
        "car", "v2", H, 10, 4, [H, H, H], base64.b64encode(bytes(64)).decode(), counter=7, expires=2_000_000_000
    )
)
CHUNK = fleet.encode_chunk(fleet.ChunkHeader(H, 1, H), b"body")
FLEET = [
    (fleet.decode_offer, OFFER, ["car", "upload", "name", "size", "chunk_size", "chunk_sha256", "frames"]),
    (
        fleet.decode_status,
        fleet.encode_status(fleet.UploadStatus(H, "partial", [[0, 2]])),
        ["upload", "state", "have"],
    ),
    (fleet.decode_ack, fleet.encode_ack(fleet.ChunkAck(H, 3)), ["upload", "index", "error"]),
    (fleet.decode_announcement, ANN, ["target", "version", "sha256", "size", "chunk_size", "signature", "counter", "expires"]),
    (
        fleet.decode_car_status,
        fleet.encode_car_status(fleet.CarModelStatus("car-1", "v1", "running")),
        ["car", "version", "state", "offered", "error"],
    ),
]


@pytest.mark.parametrize("decode,valid,keys", FLEET, ids=lambda x: getattr(x, "__name__", ""))
def test_fleet_decoders_raise_only_wire_error(decode, valid, keys):
    assert decode(valid) is not None  # the seed itself decodes

    @FUZZ
    @given(st.binary(max_size=128) | mutated(valid) | docs_with(keys) | st.sampled_from(DEEP))
    def run(payload):
        only((wire.WireError,), decode, payload)

    run()


@FUZZ
@given(st.binary(max_size=128) | mutated(CHUNK) | st.sampled_from(DEEP))
def test_fleet_chunk_raises_only_wire_error(payload):
    got = only((wire.WireError,), fleet.decode_chunk, payload)
    if got is not None:
        head, body = got
        assert 0 <= head.index < fleet.MAX_CHUNKS and len(body) <= fleet.MAX_CHUNK_BYTES


# -- driving log (edgepilot/schema/log.py) ---------------------------------------------------

LINE = encode_record(
    Record(i=3, t=1.5, steering=0.25, throttle=0.5, mode="local", exit=1, latency_ms={"a": 1.0})
)
LOG_KEYS = [
    "i",
    "t",
    "steering",
    "throttle",
    "mode",
    "image",
    "exit",
    "confidence",
    "latency_ms",
    "sim",
    "op",
]


@FUZZ
@given(st.binary(max_size=128) | mutated(LINE) | docs_with(LOG_KEYS) | st.sampled_from(DEEP))
@example(b'{"i":1,"t":true,"steering":0,"throttle":0}')
def test_log_line_raises_only_record_error(line):
    item = only((RecordError,), decode_line, line)
    if isinstance(item, Record):
        assert isinstance(item.i, int) and item.i >= 0
        assert isinstance(item.t, (int, float)) and not isinstance(item.t, bool) and math.isfinite(item.t)
        assert -1 <= item.steering <= 1 and -1 <= item.throttle <= 1
        assert encode_record(item)  # what was read can be written back
    elif isinstance(item, DeleteRange):
        assert item.first <= item.last


@FUZZ
@given(st.text(max_size=128) | docs_with(["session", "created", "source", "schema"]).map(bytes.decode))
@example(DEEP[0].decode())
def test_log_meta_raises_only_record_error(text):
    only((RecordError,), SessionMeta.from_json, text)


# -- tracks (edgepilot/sim/tracks.py) --------------------------------------------------------

points = st.lists(
    st.lists(st.floats(-50, 50) | st.integers(-50, 50) | json_values, min_size=0, max_size=3), max_size=12
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["name", "width_m", "centerline", "description"]), json_values, max_size=4
    )
    | st.fixed_dictionaries(
        {
            "name": st.text(max_size=8),
            "width_m": st.floats(allow_nan=True) | st.integers(),
            "centerline": points,
        }
    )
    | json_values
)
def test_track_parse_raises_only_edgepilot_error(data):
    t = only((EdgepilotError,), parse_track, data, "fuzz.json")
    if t is not None:
        assert t.length > 0 and math.isfinite(t.length) and len(t.pts) >= 8


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from(DEEP))
def test_track_file_raises_only_edgepilot_error(tmp_path_factory, data):
    from edgepilot.sim.tracks import load_track

    p = tmp_path_factory.mktemp("trk") / "t.json"
    p.write_bytes(data)
    only((EdgepilotError,), load_track, str(p))


# -- model packages (edgepilot/model/package.py) ---------------------------------------------


@pytest.fixture(scope="module")
def package_bytes(tmp_path_factory):
    """A real signed package (a tiny state dict: the container is what is fuzzed)."""
    import torch

    from edgepilot.model.package import load_private_key, make_keys, save_package

    d = tmp_path_factory.mktemp("pkg")
    priv, pub = make_keys(d / "keys")
    path = save_package(d / "m.eppkg", {"version": "v1"}, {"w": torch.arange(64.0)}, load_private_key(priv))
    return path.read_bytes(), str(pub)


def _zip_with(members: dict[str, bytes], compress_type: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    raw = bytearray(buf.getvalue())
    if compress_type is not None:  # patch the method in every header: an unknown codec
        for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
            i = raw.find(sig)
            while i >= 0:
                raw[i + off : i + off + 2] = compress_type.to_bytes(2, "little")
                i = raw.find(sig, i + 4)
    return bytes(raw)


def test_package_decoders_raise_only_edgepilot_error(package_bytes, tmp_path):
    from edgepilot.model.package import MANIFEST, SIGNATURE, WEIGHTS, load_package, read_manifest

    good, pub = package_bytes
    p = tmp_path / "f.eppkg"
    p.write_bytes(good)
    assert load_package(p, [pub]).manifest["version"] == "v1"
    specials = [
        _zip_with({MANIFEST: b"{}", WEIGHTS: b"w", SIGNATURE: b"{}"}, compress_type=99),  # unknown codec
        _zip_with({MANIFEST: b"\xff\xfe", WEIGHTS: b"w", SIGNATURE: b"[]"}),  # manifest not UTF-8
        _zip_with({MANIFEST: b"[" * 50_000, WEIGHTS: b"w", SIGNATURE: b"[" * 50_000}),
        _zip_with({MANIFEST: b"[1]", WEIGHTS: b"w", SIGNATURE: b'{"sig": 5}'}),
    ]

    @FUZZ
    @given(st.sampled_from(specials) | mutated(good) | st.binary(max_size=64))
    def run(data):
        p.write_bytes(data)
        only((EdgepilotError,), load_package, p, [pub])
        only((EdgepilotError,), read_manifest, p)

    run()


# -- serial frames (vehicle/serial_proto.py) -------------------------------------------------


@FUZZ
@example([sp.encode(sp.T_RC, 0, bytes(8))], 1)  # an RC report is a reply too (CI's profile found it)
@given(
    st.lists(
        st.binary(max_size=40)
        | st.builds(sp.encode, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=sp.MAX_PAYLOAD)),
        max_size=12,
    ),
    st.integers(1, 16),
)
def test_serial_parser_never_raises_and_finds_every_intact_frame(pieces, step):
    """Garbage between frames, any chunking: the parser never raises, every frame it
    returns has a valid CRC (it re-encodes to the same bytes), and a clean frame sent
    after the noise is always found."""
    data = b"".join(pieces)
    marker = sp.encode(sp.T_TELEMETRY, 0x5A, bytes(range(20)))
    p = sp.Parser()
    out = []
    stream = data + b"\x00" * 40 + marker  # 40 zero bytes flush any half-read frame
    for k in range(0, len(stream), step):
        out += p.feed(stream[k : k + step])
    for f in out:
        assert sp.encode(f.type, f.seq, f.payload) in stream
        assert sp.decode_reply(f) is None or f.type in (sp.T_ACK, sp.T_TELEMETRY, sp.T_RC)  # the replies (v2: RC)
    assert out and out[-1] == sp.Frame(sp.T_TELEMETRY, 0x5A, bytes(range(20)))
