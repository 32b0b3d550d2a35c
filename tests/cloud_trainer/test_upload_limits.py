"""Uploads with limits, attacked through a real Mosquitto: only plain files out of a tar,
caps checked before extracting, per-car quotas, offers that expire, upload ids bound to
the car whose topic they came in on, and the cloud's memory bounded whatever is uploaded."""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import subprocess
import tarfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from cloud_trainer import ingest as ingest_mod
from cloud_trainer import logtar
from cloud_trainer.ingest import Ingest, record_key, unpack_log
from cloud_trainer.store import DirStore
from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig, UploadLimits
from edgepilot.drivelog import LogReader
from edgepilot.model.package import make_keys
from edgepilot.mqtt import Connection
from edgepilot.schema import fleet
from tests.system.test_fault_cloud import CloudProcess, write_profile
from tests.vehicle.test_upload import make_log
from vehicle.upload import Packed, UploadCancelled, Uploader, pack_log

GIB = 1 << 30


class Clock:
    """The cloud's wall clock, moved by the test: upload ages without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def open_cloud(broker, store: DirStore, **kw) -> tuple[Ingest, Connection]:
    ing = Ingest(store, **kw)
    conn = Connection(BrokerConfig(url=broker.url), f"cloud-{uuid.uuid4().hex[:8]}")
    conn.start()
    ing.attach(conn, group=f"g{uuid.uuid4().hex[:8]}")
    assert conn.wait_subscribed(5)
    return ing, conn


@pytest.fixture
def cloud_factory(broker, tmp_path):
    opened: list[tuple[Ingest, Connection]] = []

    def make(**kw) -> Ingest:
        ing, conn = open_cloud(broker, DirStore(tmp_path / "store"), **kw)
        opened.append((ing, conn))
        return ing

    yield make
    for ing, conn in opened:
        ing.close()
        conn.close()


@pytest.fixture
def cars(broker):
    conns: list[Connection] = []

    def car(name: str, **kw) -> Uploader:
        c = Connection(BrokerConfig(url=broker.url), f"{name}-{uuid.uuid4().hex[:6]}")
        c.start()
        conns.append(c)
        return Uploader(c, name, **kw)

    yield car
    for c in conns:
        c.close()


def send_tar(up: Uploader, tar: bytes, name: str) -> str:
    """Upload ready-made tar bytes as ``name``: the log key, or the cloud's refusal."""
    packed = Packed.of_file(io.BytesIO(tar))
    try:
        return up.send(packed, name, progress=False).log or ""
    except EdgepilotError as e:
        return f"refused: {e}"


def ask(up: Uploader, offer: fleet.UploadOffer) -> fleet.UploadStatus | str:
    """Offer as a car (a raw offer: any size, any hashes) and return the cloud's answer."""
    try:
        return up._ask(offer)
    except EdgepilotError as e:
        return f"refused: {e}"


# -- tars that are not a plain driving log ----------------------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, b""


LOG = (_file("meta.json", b"{}"), _file("records.jsonl", b'{"i":0}\n'))


def gnu_tar(tmp: Path, fmt: str, sparse_bytes: int) -> bytes:
    """GNU tar's own sparse archive (``--sparse``) of a log with a huge, empty member."""
    d = tmp / f"src-{fmt}"
    d.mkdir()
    (d / "meta.json").write_text("{}")
    (d / "records.jsonl").write_text('{"i":0}\n')
    with open(d / "big.bin", "wb") as f:
        f.truncate(sparse_bytes)
    out = tmp / f"bomb-{fmt}.tar"
    members = ["big.bin", "meta.json", "records.jsonl"]  # the bomb first: its header is the one refused
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", str(out), "-C", str(d), *members], check=True
    )
    return out.read_bytes()


BAD_TARS = {
    "symlink": (_special("images/a.jpg", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink": (_special("images/a.jpg", tarfile.LNKTYPE, "meta.json"), "hard link"),
    "char device": (_special("dev", tarfile.CHRTYPE), "character device"),
    "block device": (_special("disk", tarfile.BLKTYPE), "block device"),
    "fifo": (_special("pipe", tarfile.FIFOTYPE), "FIFO"),
    "directory": (_special("images", tarfile.DIRTYPE), "directory"),
    "absolute": (_file("/etc/cron.d/x"), "plain relative names"),
    "dotdot": (_file("images/../../x"), "plain relative names"),
    "hidden": (_file(".upload.json"), "plain relative names"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
def test_only_regular_members_with_plain_names_are_unpacked(tmp_path, case):
    member, reason = BAD_TARS[case]
    store = DirStore(tmp_path / "store")
    with pytest.raises(EdgepilotError, match=reason):
        unpack_log(store, _tar(*LOG, member), "logs/car-a/x", upload="u")
    assert store.list("") == []  # checked before the first write: not even the mark


@pytest.mark.parametrize("fmt, reason", [("gnu", "GNU sparse file"), ("pax", "pax header")])
def test_sparse_and_pax_members_are_refused_from_their_headers(tmp_path, fmt, reason):
    tar = gnu_tar(tmp_path, fmt, GIB)
    assert len(tar) < 64 * 1024
    store = DirStore(tmp_path / "store")
    with pytest.raises(EdgepilotError, match=reason):
        unpack_log(store, tar, "logs/car-a/bomb")
    assert store.list("") == []
    if fmt == "pax":  # the same bomb with lying headers: tarfile reads the pax size, 1 GiB
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            assert max(m.size for m in t.getmembers()) == GIB


def test_caps_from_the_headers_refuse_before_extracting_and_again_while_extracting(tmp_path):
    store = DirStore(tmp_path / "store")
    lim = logtar.TarLimits(max_bytes=10_000, max_member_bytes=4_000, max_members=4)
    with pytest.raises(EdgepilotError, match="over the 4000-byte cap"):
        unpack_log(store, _tar(*LOG, _file("big", bytes(4_001))), "logs/a", limits=lim)
    with pytest.raises(EdgepilotError, match="over 10000 bytes"):
        unpack_log(
            store,
            _tar(*LOG, _file("a", bytes(4_000)), _file("b", bytes(4_000)), _file("c", bytes(3_000))),
            "logs/a",
            limits=lim,
        )
    with pytest.raises(EdgepilotError, match="over 4 members"):
        unpack_log(store, _tar(*LOG, *(_file(f"i{n}") for n in range(3))), "logs/a", limits=lim)
    cut = _tar(*LOG, _file("images/0.jpg", bytes(3_000)))[
        : 4 * 512 + 1_000
    ]  # a header naming more than is there
    with pytest.raises(EdgepilotError, match="runs past the end"):
        unpack_log(store, cut, "logs/a", limits=lim)
    assert store.list("") == []
    # extraction checks each header again as it reads it (not what an earlier pass saw), and
    # a member refused there leaves no object behind
    ok = _tar(*LOG, _file("images/0.jpg", bytes(3_000)))
    with pytest.raises(EdgepilotError, match="over the 2000-byte cap"):
        logtar.extract(io.BytesIO(ok), len(ok), replace(lim, max_member_bytes=2_000), store, "logs/a")
    assert not store.exists("logs/a/images/0.jpg")
    assert unpack_log(store, ok, "logs/b", limits=lim) == 1 and store.size("logs/b/images/0.jpg") == 3_000


def test_records_are_counted_as_they_stream_by():
    c = logtar.RecordCounter()
    text = b'{"i":0}\n\n{"op":"delete","from":0}\n{"i":1}\n  \n{"i":2}'
    for k in range(0, len(text), 3):  # pieces that cut lines and '"op"' in two
        c.feed(text[k : k + 3])
    c.end_line()
    assert c.records == 3


# -- through the broker: the attacks ------------------------------------------------------


def test_a_declared_50_gib_upload_is_refused_at_the_offer(cloud_factory, cars, tmp_path):
    ing = cloud_factory()
    car = cars("car-big")
    cs = fleet.MAX_CHUNK_BYTES
    for gib, reason in ((50, "offer of 343"), (5, "upload of 5368709120 bytes is over the limit of")):
        offer = fleet.UploadOffer(
            "car-big", "cd" * 32, "huge", gib * GIB, cs, ["ab" * 32] * (gib * GIB // cs)
        )
        st = ask(car, offer)
        assert isinstance(st, str) and reason in st, st
    assert ing.store.list("incoming/") == []  # nothing kept for them, not even the offer


def test_per_car_quotas_refuse_offers_over_them_and_leave_other_cars_alone(cloud_factory, cars, tmp_path):
    a_logs = [make_log(tmp_path / f"a{n}", 20, seed=n) for n in range(3)]
    one = pack_log(a_logs[0]).size
    second = pack_log(a_logs[1]).sha256
    ing = cloud_factory(
        limits=UploadLimits(
            car_quota_bytes=2 * one + one // 2, car_inflight_uploads=1, car_inflight_bytes=3 * one
        )
    )
    a = cars("car-qa", chunk_size=32 * 1024, window=2)
    assert a.upload(a_logs[0], progress=False).sent_bytes == one
    # one partial upload in progress: a second one is over car_inflight_uploads
    with pytest.raises(UploadCancelled):
        a.upload(a_logs[1], progress=False, keep_going=lambda: not ing.have(second))
    with pytest.raises(EdgepilotError, match="uploads in progress"):
        a.upload(a_logs[2], progress=False)
    # the partial one resumes and completes; then the stored bytes fill the quota
    assert a.upload(a_logs[1], progress=False).log
    with pytest.raises(EdgepilotError, match="quota is full"):
        a.upload(a_logs[2], progress=False)
    # a declared size over the bytes in flight, for a car with nothing stored yet
    b = cars("car-qb")
    cs = fleet.MAX_CHUNK_BYTES
    big = fleet.UploadOffer("car-qb", "ef" * 32, "big", 4 * one, cs, ["ab" * 32] * -(-4 * one // cs))
    assert "bytes of uploads in progress" in ask(b, big)
    assert b.upload(make_log(tmp_path / "b0", 20, seed=9), progress=False).log.startswith("logs/car-qb/")
    assert len(ing.store.list("uploads/car-qa/")) == 2 and len(ing.store.list("uploads/car-qb/")) == 1


def test_offers_expire_and_free_their_chunks_and_the_car_starts_again(
    cloud_factory, cars, tmp_path, monkeypatch
):
    monkeypatch.setattr(ingest_mod, "SWEEP_MAX_S", 0.05)  # the worker's sweep, often
    clock = Clock()
    ing = cloud_factory(limits=UploadLimits(upload_ttl_s=3600, car_inflight_uploads=1), clock=clock)
    log = make_log(tmp_path / "drive-x", 40, seed=3)
    car = cars("car-x", chunk_size=32 * 1024, window=2)
    sha = pack_log(log, 32 * 1024).sha256
    with pytest.raises(UploadCancelled):  # the car drives off mid-upload, never to come back
        car.upload(log, progress=False, keep_going=lambda: len(ing.have(sha, "car-x")) < 5)
    assert ing.have(sha, "car-x") and ing.store.list("incoming/car-x/")
    with pytest.raises(EdgepilotError, match="uploads in progress"):  # it holds the car's one slot
        car.upload(make_log(tmp_path / "other", 3, seed=4), progress=False)
    clock.now += 3601  # an hour later, no offer since: the sweep drops it and its chunks
    deadline = time.monotonic() + 10
    # the worker's sweep deletes the chunks, then counts the expiry: wait for both
    while (ing.store.list("incoming/") or not ing.stats.expired) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ing.store.list("incoming/") == [] and ing.stats.expired == 1
    res = car.upload(log, progress=False)  # the car comes back: all of it again, and it lands
    assert res.chunks_sent == res.chunks
    assert len(LogReader(ing.store.local_dir(res.log)).records()) == 40


def test_an_upload_expiring_midway_is_resent_by_the_car(cloud_factory, cars, tmp_path):
    clock = Clock()
    ing = cloud_factory(limits=UploadLimits(upload_ttl_s=3600), clock=clock)
    log = make_log(tmp_path / "drive-y", 40, seed=5)
    car = cars("car-y", chunk_size=32 * 1024, window=2)
    sha = pack_log(log, 32 * 1024).sha256
    expired_at: set[int] = set()

    def age_once() -> bool:
        if not expired_at and len(ing.have(sha, "car-y")) >= 5:
            expired_at.update(ing.have(sha, "car-y"))
            clock.now += 3601
            assert ing.expire() == 1  # the cloud drops what the car believes is stored
        return True

    res = car.upload(log, progress=False, keep_going=age_once)
    assert expired_at and res.resumes >= 1
    assert expired_at <= {i for i in res.sent_indices if res.sent_indices.count(i) > 1}  # sent again
    assert len(LogReader(ing.store.local_dir(res.log)).records()) == 40


def test_an_upload_id_squatted_by_another_car_neither_blocks_nor_completes_the_real_one(
    cloud_factory, cars, tmp_path
):
    ing = cloud_factory()
    log = make_log(tmp_path / "drive-v", 30, seed=7)
    pack = pack_log(log)
    evil, good = cars("car-evil"), cars("car-good")
    # squat: the victim's upload id, offered first under other sizes and hashes, chunks sent
    squat = fleet.UploadOffer("car-evil", pack.sha256, "drive-v", 1000, 500, ["00" * 32, "11" * 32])
    assert ask(evil, squat).state == "partial"
    junk = fleet.encode_chunk(fleet.ChunkHeader(pack.sha256, 0, "00" * 32), bytes(500))
    evil.conn.publish(fleet.upload_topic("car-evil", "chunk"), junk, qos=1)
    res = good.upload(log, progress=False)
    assert res.sent_bytes == res.bytes and res.log == "logs/car-good/drive-v"
    assert json.loads(ing.store.get(record_key("car-good", pack.sha256)))["car"] == "car-good"
    # a thief with a copy of the log completes "its" upload first: the real car still sends
    # its own and gets its own record, not the thief's log
    log2 = make_log(tmp_path / "drive-w", 30, seed=8)
    stolen = pack_log(log2)
    stolen.file.seek(0)
    assert send_tar(evil, stolen.file.read(), "drive-w") == "logs/car-evil/drive-w"
    res2 = good.upload(log2, progress=False)
    assert res2.sent_bytes == res2.bytes and res2.log == "logs/car-good/drive-w"
    # and chunks of the real car's upload id sent on the thief's own topic go nowhere
    seen: queue.Queue[fleet.ChunkAck] = queue.Queue()
    evil.conn.subscribe(
        fleet.upload_topic("car-evil", "ack"), lambda m: seen.put(fleet.decode_ack(m.payload)), qos=1
    )
    pack3 = pack_log(make_log(tmp_path / "drive-z", 10, seed=9))
    assert (
        ask(
            good,
            fleet.UploadOffer(
                "car-good", pack3.sha256, "drive-z", pack3.size, pack3.chunk_size, pack3.chunk_sha256
            ),
        ).state
        == "partial"
    )
    body = pack3.chunk(0)
    evil.conn.publish(
        fleet.upload_topic("car-evil", "chunk"),
        fleet.encode_chunk(fleet.ChunkHeader(pack3.sha256, 0, pack3.chunk_sha256[0]), body),
        qos=1,
    )
    ack = seen.get(timeout=10)
    assert ack.error and "unknown upload" in ack.error and ing.have(pack3.sha256, "car-good") == set()


# -- the cloud's memory --------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def peak_growth(pid: int, action) -> tuple[int, object]:
    """Peak RSS of ``pid`` while ``action`` runs, above its RSS when it started."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status(pid)["VmRSS"]
    result = action()
    return _status(pid)["VmHWM"] - before, result


def memory_bound(lim: UploadLimits, message_limit: int) -> int:
    """docs/cloud.md, "Memory": the cloud's peak RSS above its idle RSS, whatever is uploaded."""
    cache = ingest_mod.OFFER_CACHE * 32 * lim.upload_max_chunks
    return (
        lim.ingest_queue_bytes + 6 * message_limit + 8 * ingest_mod.max_offer_bytes(lim) + cache + (8 << 20)
    )


def flood(up: Uploader, n: int, size: int) -> str:
    """``n`` messages of ``size`` bytes on the car's chunk topic as fast as it can, then an
    offer behind them: its answer comes once the cloud went through the flood."""
    for _ in range(n):
        up.conn.publish(fleet.upload_topic(up.car, "chunk"), b"x" * size, qos=1)
    return str(ask(up, fleet.UploadOffer(up.car, "ef" * 32, "after", 5 * GIB, 1 << 20, ["ab" * 32] * 5120)))


def flood_chunks(up: Uploader, n: int) -> str:
    """``n`` valid 1 MiB chunks of an admitted 1 GiB upload, as fast as the car can send:
    each one costs the cloud a hash and a write, so they queue up in front of its worker."""
    body = os.urandom(1 << 20)
    digest = hashlib.sha256(body).hexdigest()
    up_id = hashlib.sha256(b"flood").hexdigest()
    offer = fleet.UploadOffer(up.car, up_id, "flood", GIB, 1 << 20, [digest] * 1024)
    assert ask(up, offer).state == "partial"
    for i in range(n):
        up.conn.publish(
            fleet.upload_topic(up.car, "chunk"),
            fleet.encode_chunk(fleet.ChunkHeader(up_id, i, digest), body),
            qos=1,
        )
    return str(ask(up, offer))


def test_cloud_memory_stays_bounded_for_sparse_bombs_huge_offers_floods_and_big_logs(broker, cars, tmp_path):
    make_keys(tmp_path / "keys")
    store_dir = tmp_path / "store"
    profile = write_profile(tmp_path / "cloud.toml", broker.url, store_dir, retrain_min_frames=10**9)
    # ~50 MB of noise JPEGs in 180 files (a commit of thousands of small files can outlast the
    # car's 10 s wait for the answer on a loaded machine: docs/cloud.md, known limits)
    big_log = make_log(tmp_path / "drive-big", 180, seed=1, shape=(480, 640, 3))
    bomb = gnu_tar(tmp_path, "gnu", GIB)
    car = cars("car-mem")
    lim, cs = UploadLimits(), 256 * 1024
    widest = fleet.UploadOffer(
        "car-mem", "ab" * 32, "wide", lim.upload_max_chunks * cs, cs, ["ab" * 32] * lim.upload_max_chunks
    )
    huge = fleet.UploadOffer("car-mem", "cd" * 32, "huge", 50 * GIB, 1 << 20, ["ab" * 32] * 51200)
    cloud = CloudProcess(tmp_path, profile, store_dir, broker.url)
    try:
        pid = cloud.proc.pid
        growth = {}
        growth["normal"], res = peak_growth(pid, lambda: car.upload(big_log, progress=False))
        growth["sparse_bomb"], bomb_st = peak_growth(pid, lambda: send_tar(car, bomb, "bomb"))
        growth["huge_offer"], huge_st = peak_growth(pid, lambda: ask(car, huge))
        growth["widest_offer"], wide_st = peak_growth(pid, lambda: ask(car, widest))
        growth["flood"], flood_st = peak_growth(pid, lambda: flood(car, 48, (4 << 20) - 1024))
        growth["chunk_flood"], chunks_st = peak_growth(pid, lambda: flood_chunks(car, 256))
    finally:
        cloud.stop()
    bound = memory_bound(lim, message_limit=4 << 20)  # launch/mosquitto.conf's message_size_limit
    figs = {"log_bytes": res.bytes, "bound_mb": round(bound / 2**20, 1)}
    figs |= {f"{k}_mb": round(v / 2**20, 1) for k, v in growth.items()}
    print("FIGURES cloud_memory", json.dumps(figs))
    assert res.log and len(LogReader(store_dir / res.log).records()) == 180
    assert "GNU sparse file" in bomb_st and not (store_dir / "logs" / "car-mem" / "bomb").exists()
    assert "over the limit of" in huge_st and "over the limit of" in flood_st
    assert wide_st.state == "partial"  # the widest offer the limits admit
    assert "partial" in chunks_st and "[[0, 256]]" in chunks_st  # every flooded chunk stored
    assert growth["normal"] < res.bytes / 2, figs  # the log was never held whole
    assert max(growth.values()) <= bound, figs
