"""Bad input at the services: corrupt and oversized frames at the edge node, an oversized
frame at the car, replayed and reordered messages (inference replies, upload chunks,
model announcements), and a package with a valid hash but a foreign signature.

Covered elsewhere (referenced, not duplicated): a car publishing as another car, or
pushing models, is refused by the broker ACL (tests/test_edge_acl.py); a tampered package
announced with a correct hash and a valid cloud signature is refused by the car
(tests/test_cloud_e2e.py); damaged log lines and JPEGs are skipped and counted
(tests/test_drivelog.py); malformed upload chunks and offers are refused with a reason
(tests/test_upload.py).
"""

from __future__ import annotations

import hashlib
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepilot.config import BrokerConfig
from edgepilot.mqtt import Connection, properties
from edgepilot.schema import fleet, wire


def jpeg(h: int = 120, w: int = 160, seed: int = 0, q: int = 90) -> bytes:
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()


@pytest.fixture(scope="module")
def edge_offline():
    """A real edge node that is not connected: ``process()`` runs the whole request path
    (validate, decode, infer, reply); replies go nowhere, the metrics count them."""
    from edge_node.model import load_edge_model
    from edge_node.service import EdgeService

    return EdgeService(
        BrokerConfig(url="mqtt://127.0.0.1:9"), load_edge_model("builtin:pilotnet"), node_id="e-f"
    )


def pending(payload: bytes, topic: str = "edgepilot/v1/car/car-1/infer", response: str | None = None):
    from edge_node.service import _Pending

    return _Pending(payload, topic, response, b"\x00" * 8, time.monotonic())


def request(body: bytes, car: str = "car-1", frame: int = 1) -> bytes:
    return wire.encode_request(wire.InferRequest(car=car, frame=frame, body=body, budget_ms=10_000))


# -- the edge node: corrupt, oversized and hostile frames -------------------------------


@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 255)), max_size=6), st.integers(0, 6000))
def test_corrupt_jpegs_get_error_replies_and_never_stop_the_edge(edge_offline, flips, cut):
    """Bit-flipped and truncated JPEGs in one batch with a good one: ``process`` never
    raises, the good frame is answered, every bad one is answered or refused (counted)."""
    good = jpeg()
    bad = bytearray(jpeg(seed=1))
    for pos, val in flips:
        bad[pos % len(bad)] = val
    bad = bytes(bad[: max(1, cut)])
    h0 = edge_offline.health()
    edge_offline.process([pending(request(bad, frame=1)), pending(request(good, frame=2))])
    h = edge_offline.health()
    assert (h.answered - h0.answered) + (h.errors - h0.errors) == 2  # both accounted for
    assert h.answered - h0.answered >= 1  # the good frame was answered despite its neighbour


def test_hostile_topic_and_bomb_frames_do_not_stop_the_edge(edge_offline):
    """Two findings. (1) A malformed request on a topic whose car level is not a valid id
    (edge whitespace, > 64 characters) and without a response topic made the error reply
    raise out of ``process`` -- the edge's worker thread died and the node answered no one
    again. (2) A uniform 7000 x 7000 JPEG fits in one 1 MiB request and was decoded
    (150 MB) before the size check refused it; the frame header is now read first."""
    from edge_node.service import MAX_FRAME_SIDE, jpeg_side

    e = edge_offline
    errors0 = e.health().errors
    for topic in ("edgepilot/v1/car/ bad /infer", f"edgepilot/v1/car/{'x' * 80}/infer"):
        e.process([pending(b"not a request", topic=topic, response=None)])
    assert e.health().errors == errors0 + 2

    side = 7000
    bomb = cv2.imencode(".jpg", np.zeros((side, side, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 5])[
        1
    ].tobytes()
    assert len(bomb) < wire.MAX_REQUEST_BYTES and jpeg_side(bomb) == side > MAX_FRAME_SIDE
    assert jpeg_side(jpeg()) == 160 and jpeg_side(b"\xff\xd8\xff") is None and jpeg_side(b"") is None
    # CPU time, side by side: a busy machine stretches the wall clock of either, not this
    t = time.process_time()
    e.process([pending(request(bomb))])
    refused_s = time.process_time() - t
    t = time.process_time()
    cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR)
    decode_s = time.process_time() - t
    assert e.health().errors == errors0 + 3
    assert refused_s < decode_s, (refused_s, decode_s)  # refused from the header, not after decoding it


def test_oversized_frame_is_a_counted_drop_not_a_crash_of_the_loop():
    """The car's offload client raised WireError out of ``submit`` for a frame over the
    1 MiB request limit -- straight into the drive loop, which stopped the car. A noisy
    full-resolution camera frame at high quality can be that big."""
    from edgepilot.offload.client import OffloadClient

    car = OffloadClient(BrokerConfig(url="mqtt://127.0.0.1:9"), "car-big")
    car.conn.connected.set()  # pretend the link is up: the size check comes before any I/O
    big = b"\xff\xd8" + bytes(wire.MAX_REQUEST_BYTES)
    assert car.submit(1, big) is False
    assert car.stats["dropped"] == 1 and car.stats["sent"] == 0
    assert car.poll(1, time.monotonic() + 0.01) is None  # and nothing is left pending


def test_oversized_payloads_are_refused_by_every_bulk_decoder():
    with pytest.raises(wire.WireError, match="limit"):
        wire.decode_request(b'{"v":1}\n' + bytes(wire.MAX_REQUEST_BYTES))
    h = hashlib.sha256(b"").hexdigest()
    head = fleet.encode_chunk(fleet.ChunkHeader(h, 0, h), b"")
    with pytest.raises(wire.WireError, match="over"):
        fleet.decode_chunk(head + bytes(fleet.MAX_CHUNK_BYTES + 1))
    with pytest.raises(wire.WireError):
        wire.decode_request(b"x" * (wire.MAX_HEADER_BYTES + 10) + b"\n" + b"body")


# -- replayed and reordered inference replies --------------------------------------------


def test_replayed_and_reordered_replies_are_strays_never_steering(broker):
    """A reply replayed (the same answer twice), one for an older frame arriving while the
    car waits for a newer one, and one for a frame it never sent: none is taken as the
    answer to the frame being waited on; each is counted."""
    from edgepilot.offload.client import CircuitBreaker, OffloadClient

    car = OffloadClient(
        BrokerConfig(url=broker.url), "car-replay", deadline_s=2.0, breaker=CircuitBreaker(100)
    )
    car.start()
    fake = Connection(BrokerConfig(url=broker.url), "fake-edge")
    fake.start()
    try:
        topic = wire.reply_topic("car-replay")

        def answer(frame: int, steering: float) -> None:
            rep = wire.InferReply("ok", car="car-replay", frame=frame, steering=steering, throttle=0.1)
            fake.publish(
                topic, wire.encode_reply(rep), props=properties(correlation=frame.to_bytes(8, "big"))
            )

        assert car.submit(1, jpeg()) and car.submit(2, jpeg())
        answer(1, 0.11)
        got = car.poll(1, time.monotonic() + 2)
        assert got is not None and got.steering == pytest.approx(0.11)
        answer(1, 0.99)  # replayed answer to frame 1
        answer(7, 0.77)  # a frame this car never sent
        answer(2, 0.22)
        got2 = car.poll(2, time.monotonic() + 2)
        assert got2 is not None and got2.steering == pytest.approx(0.22)
        time.sleep(0.2)
        assert car.stats["stray"] == 2 and car.stats["answered"] == 2
        assert car.poll(1, time.monotonic() + 0.05) is None  # the replay was not kept for later
    finally:
        car.close()
        fake.close()


# -- replayed and reordered upload chunks ----------------------------------------------


def test_upload_chunks_reordered_and_replayed_assemble_the_same_log(tmp_path):
    """Chunks in reverse order, each sent twice, a chunk replayed after completion and the
    commit offer replayed: one log, byte-identical, and the late duplicates are only
    acknowledged (not stored again, not turned into a second log)."""
    from cloud_trainer.ingest import Ingest
    from cloud_trainer.store import DirStore
    from edgepilot.drivelog import LogReader, LogWriter
    from edgepilot.schema.log import Record, SessionMeta
    from vehicle.upload import pack_log

    src = tmp_path / "drive-r"
    rng = np.random.default_rng(4)
    with LogWriter(src, SessionMeta(session="r", created=0.0, source="sim"), block=True) as w:
        for i in range(12):
            w.write(
                Record(i=i, t=i * 0.05, steering=0.1, throttle=0.2),
                rng.integers(0, 256, (120, 160, 3), np.uint8),
            )
    pack = pack_log(src, chunk_size=8192)
    offer = fleet.UploadOffer("car-r", pack.sha256, "drive-r", pack.size, 8192, pack.chunk_sha256, frames=12)
    ing = Ingest(DirStore(tmp_path / "store"))
    assert ing.handle_offer(offer).state == "partial"
    order = list(range(offer.chunks))[::-1]
    for i in order + order:
        ack = ing.handle_chunk(
            "car-r", fleet.ChunkHeader(pack.sha256, i, pack.chunk_sha256[i]), pack.chunk(i)
        )
        assert ack.error is None
    first = ing.handle_offer(offer)
    assert first.state == "complete"
    late = ing.handle_chunk("car-r", fleet.ChunkHeader(pack.sha256, 0, pack.chunk_sha256[0]), pack.chunk(0))
    again = ing.handle_offer(offer)
    assert late.error is None and again.state == "complete" and again.log == first.log
    assert ing.stats.logs == 1 and ing.store.list(f"incoming/car-r/{pack.sha256}/") == []
    recs = LogReader(ing.store.local_dir(first.log)).records()
    assert [r.i for r in recs] == list(range(12))
    # a chunk of this upload replayed under another car's name is refused
    other = Ingest(DirStore(tmp_path / "store2"))
    other.handle_offer(offer)
    bad = other.handle_chunk(
        "car-evil", fleet.ChunkHeader(pack.sha256, 0, pack.chunk_sha256[0]), pack.chunk(0)
    )
    assert bad.error and "belongs to car" in bad.error


# -- a package with a valid hash and a foreign signature ---------------------------------


def test_foreign_signed_package_with_valid_hash_never_replaces_the_running_model(tmp_path, tiny_model):
    """Re-signed by someone else's key (the weights hash in the manifest is correct): the
    car refuses it and keeps driving on the model it has."""
    from edgepilot.drive.slot import ModelSlot, load_autopilot
    from edgepilot.model.package import load_package, load_private_key, make_keys, save_package

    pkg = load_package(tiny_model)
    priv, _ = make_keys(tmp_path / "foreign")
    manifest = dict(pkg.manifest, version="foreign-1")
    forged = save_package(tmp_path / "forged.eppkg", manifest, pkg.state, load_private_key(priv))
    slot = ModelSlot(load_autopilot(tiny_model))
    before = slot.version
    results: list[tuple[bool, str]] = []
    slot.load_async(forged, lambda ok, what: results.append((ok, what))).join(30)
    assert results and results[0][0] is False and "trusted key" in results[0][1]
    assert not slot.maybe_swap() and slot.version == before
