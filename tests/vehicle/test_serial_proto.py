"""The Python side of the framed protocol against the shared test vectors (the C core
passes the same file in test_firmware_core.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vehicle import serial_proto as sp
from vehicle.firmware import VECTORS

V = json.loads(VECTORS.read_text())


def _data(c: dict) -> bytes:
    return c["ascii"].encode() if "ascii" in c else bytes.fromhex(c["hex"])


@pytest.mark.parametrize("case", V["crc"], ids=lambda c: c.get("ascii", c.get("hex")) or "empty")
def test_crc_vectors(case):
    assert sp.crc16(_data(case)) == case["crc"]


def test_crc_is_ccitt_false():
    # the published check value of CRC-16/CCITT-FALSE, independent of the vector file
    assert sp.crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("case", V["frames"], ids=lambda c: c["name"])
def test_encode_vectors(case):
    frame = sp.encode(case["type"], case["seq"], bytes.fromhex(case["payload_hex"]))
    assert frame.hex() == case["frame_hex"]
    (decoded,) = sp.Parser().feed(frame)
    assert (decoded.type, decoded.seq, decoded.payload.hex()) == (
        case["type"],
        case["seq"],
        case["payload_hex"],
    )


@pytest.mark.parametrize("case", V["streams"], ids=lambda c: c["name"])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_stream_vectors(case, chunk):
    p = sp.Parser()
    data = bytes.fromhex(case["stream_hex"])
    got = []
    for i in range(0, len(data), chunk):
        got += p.feed(data[i : i + chunk])
    assert [{"type": f.type, "seq": f.seq, "payload_hex": f.payload.hex()} for f in got] == case["frames"]
    assert (p.bad_crc, p.bad_len) == (case["bad_crc"], case["bad_len"])


def test_device_vector_inputs_are_python_frames():
    """The device scenario feeds the C core bytes; the CMD frames in it decode in Python
    to the commands the scenario describes (one source of truth for both sides)."""
    steps = V["device"][0]["steps"]
    frames = [f for s in steps if "rx_hex" in s for f in sp.Parser().feed(bytes.fromhex(s["rx_hex"]))]
    cmds = [sp.decode_cmd(f) for f in frames if f.type == sp.T_CMD and len(f.payload) == 4]
    assert cmds[:3] == [(1600, 1700), (2500, 900), (1200, 1200)]


@given(
    ftype=st.integers(0, 255),
    seq=st.integers(0, 255),
    payload=st.binary(max_size=sp.MAX_PAYLOAD),
    noise=st.binary(max_size=60),
    chunk=st.integers(1, 50),
)
def test_frame_found_after_any_noise(ftype, seq, payload, noise, chunk):
    """Whatever line noise precedes it (false syncs, bogus lengths), a frame followed by
    an idle line is found, however the bytes are chunked: a failed candidate costs
    one byte, never the frame behind it."""
    frame = sp.encode(ftype, seq, payload)
    data = noise + frame + bytes(sp.MAX_PAYLOAD + sp.OVERHEAD)  # idle line: zeros
    p = sp.Parser()
    got = [f for i in range(0, len(data), chunk) for f in p.feed(data[i : i + chunk])]
    assert got and got[-1] == sp.Frame(ftype, seq, payload)


def test_single_bit_errors_are_all_caught():
    frame = bytearray(sp.cmd(7, 1234, 1765))
    for i in range(2, len(frame)):  # every bit after the sync bytes
        for bit in range(8):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            assert sp.Parser().feed(bytes(bad)) == []


def test_oversize_payload_is_refused():
    with pytest.raises(ValueError):
        sp.encode(1, 0, bytes(sp.MAX_PAYLOAD + 1))


def test_reply_decoding_rejects_wrong_sizes():
    assert sp.decode_reply(sp.Frame(sp.T_ACK, 0, b"\x00")) is None
    assert sp.decode_reply(sp.Frame(sp.T_TELEMETRY, 0, bytes(17))) == sp.Telemetry(0, 0, 0, 0, 0, 0, 0, 0)
