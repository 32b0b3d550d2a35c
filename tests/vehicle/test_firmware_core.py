"""The firmware's C core (ep_proto.c, ep_device.c) built for the host and loaded with
ctypes, against the same test vectors the Python side passes; and the AVR image builds."""

from __future__ import annotations

import ctypes
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vehicle import serial_proto as sp
from vehicle.firmware import VECTORS, build, missing_tools

V = json.loads(VECTORS.read_text())


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    why = missing_tools("host")
    if why:
        pytest.skip(why)
    lib = ctypes.CDLL(str(build("host", tmp_path_factory.mktemp("fw"))["libepcore.so"]))
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib.ep_crc16.argtypes = [u8p, ctypes.c_uint16]
    lib.ep_crc16.restype = ctypes.c_uint16
    lib.ep_encode.argtypes = [ctypes.c_uint8, ctypes.c_uint8, u8p, ctypes.c_uint8, u8p]
    lib.ep_encode.restype = ctypes.c_uint8
    lib.ep_parser_push.argtypes = [ctypes.c_void_p, ctypes.c_uint8]
    lib.ep_parser_next.argtypes = [ctypes.c_void_p]
    lib.ep_parser_next.restype = ctypes.c_uint8
    lib.ep_device_sizeof.restype = ctypes.c_uint16
    lib.ep_device_init.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.ep_device_feed.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint32]
    lib.ep_device_tick.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.ep_device_rc_pulse.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32]
    lib.ep_device_rc_persist.argtypes = [ctypes.c_void_p, u8p]
    lib.ep_device_rc_restore.argtypes = [ctypes.c_void_p, u8p]
    lib.ep_device_rc_restore.restype = ctypes.c_uint8
    lib.ep_device_take_tx.argtypes = [ctypes.c_void_p, u8p, ctypes.c_uint16]
    lib.ep_device_take_tx.restype = ctypes.c_uint16
    for name in ("ep_device_steer_us", "ep_device_throttle_us", "ep_device_failsafe_count"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_uint16
    lib.ep_device_failsafe.argtypes = [ctypes.c_void_p]
    lib.ep_device_failsafe.restype = ctypes.c_uint8
    return lib


def _buf(data: bytes):
    return (ctypes.c_uint8 * max(1, len(data))).from_buffer_copy(data or b"\0")


class CParser:
    """ep_parser_t mirrored field by field (plain uint8/uint16 members: no padding surprises)."""

    class _S(ctypes.Structure):
        _fields_ = [
            ("buf", ctypes.c_uint8 * (sp.MAX_PAYLOAD + sp.OVERHEAD)),
            ("n", ctypes.c_uint8),
            ("type", ctypes.c_uint8),
            ("seq", ctypes.c_uint8),
            ("len", ctypes.c_uint8),
            ("payload", ctypes.c_uint8 * sp.MAX_PAYLOAD),
            ("bad_crc", ctypes.c_uint16),
            ("bad_len", ctypes.c_uint16),
        ]

    def __init__(self, lib):
        self.lib, self.s = lib, self._S()
        lib.ep_parser_init(ctypes.byref(self.s))

    def feed(self, data: bytes) -> list[dict]:
        out = []
        for b in data:
            self.lib.ep_parser_push(ctypes.byref(self.s), b)
            while self.lib.ep_parser_next(ctypes.byref(self.s)):
                payload = bytes(self.s.payload[: self.s.len])
                out.append({"type": self.s.type, "seq": self.s.seq, "payload_hex": payload.hex()})
        return out


@pytest.mark.parametrize("case", V["crc"], ids=lambda c: c.get("ascii", c.get("hex")) or "empty")
def test_c_crc(core, case):
    data = case["ascii"].encode() if "ascii" in case else bytes.fromhex(case["hex"])
    assert core.ep_crc16(_buf(data), len(data)) == case["crc"]


@pytest.mark.parametrize("case", V["frames"], ids=lambda c: c["name"])
def test_c_encode(core, case):
    payload = bytes.fromhex(case["payload_hex"])
    out = (ctypes.c_uint8 * (sp.MAX_PAYLOAD + sp.OVERHEAD))()
    n = core.ep_encode(case["type"], case["seq"], _buf(payload), len(payload), out)
    assert bytes(out[:n]).hex() == case["frame_hex"]
    assert CParser(core).feed(bytes(out[:n])) == [{k: case[k] for k in ("type", "seq", "payload_hex")}]


def test_c_encode_refuses_oversize(core):
    out = (ctypes.c_uint8 * 64)()
    assert core.ep_encode(1, 0, _buf(bytes(33)), 33, out) == 0


@pytest.mark.parametrize("case", V["streams"], ids=lambda c: c["name"])
def test_c_streams(core, case):
    p = CParser(core)
    assert p.feed(bytes.fromhex(case["stream_hex"])) == case["frames"]
    assert (p.s.bad_crc, p.s.bad_len) == (case["bad_crc"], case["bad_len"])


def _reply(frame: sp.Frame) -> dict:
    r = sp.decode_reply(frame)
    if isinstance(r, sp.Ack):
        return {"ack": [r.seq, r.status, r.steering_us, r.throttle_us]}
    if isinstance(r, sp.RcReport):
        return {"rc": [r.version, r.flags, r.steering_us, r.throttle_us, r.aux_us]}
    assert isinstance(r, sp.Telemetry), frame
    return {
        "telemetry": [
            r.steering_us,
            r.throttle_us,
            r.flags,
            r.rx_ok,
            r.rx_bad,
            r.rx_lost,
            r.failsafe_count,
            r.uptime_ms,
        ]
    }


@pytest.mark.parametrize("case", V["device"], ids=lambda c: c["name"])
def test_c_device_scenario(core, case):
    """The firmware's logic step by step: outputs, failsafe and every reply frame, the
    replies decoded by the Python parser (so both sides agree on the bytes)."""
    dev = ctypes.create_string_buffer(core.ep_device_sizeof())
    out = (ctypes.c_uint8 * 256)()
    parser = sp.Parser()
    for i, step in enumerate(case["steps"]):
        t = step["t_ms"]
        if step.get("init"):
            core.ep_device_init(dev, t)
        for ch, width_us in step.get("rc", []):
            core.ep_device_rc_pulse(dev, ch, width_us, t)
        for b in bytes.fromhex(step.get("rx_hex", "")):
            core.ep_device_feed(dev, b, t)
        core.ep_device_tick(dev, t)
        n = core.ep_device_take_tx(dev, out, len(out))
        got = {
            "steering_us": core.ep_device_steer_us(dev),
            "throttle_us": core.ep_device_throttle_us(dev),
            "failsafe": core.ep_device_failsafe(dev),
            "tx": [_reply(f) for f in parser.feed(bytes(out[:n]))],
        }
        assert got == step["expect"], f"step {i} at t={t} ms"
    assert parser.bad_crc == 0


def test_c_failsafe_survives_clock_wrap(core):
    """millis() wraps after 49.7 days; the failsafe must still trip 250 ms after the last command."""
    dev = ctypes.create_string_buffer(core.ep_device_sizeof())
    t0 = 2**32 - 100
    core.ep_device_init(dev, t0)
    for b in sp.cmd(0, 1700, 1800):
        core.ep_device_feed(dev, b, t0)
    core.ep_device_tick(dev, (t0 + 249) % 2**32)
    assert (core.ep_device_throttle_us(dev), core.ep_device_failsafe(dev)) == (1800, 0)
    core.ep_device_tick(dev, (t0 + 250) % 2**32)
    assert (core.ep_device_throttle_us(dev), core.ep_device_failsafe(dev)) == (1500, 1)


def test_avr_image_builds(tmp_path):
    why = missing_tools("avr")
    if why:
        pytest.skip(why)
    out = build("avr", tmp_path)
    hex_text = out["edgepilot_fw.hex"].read_text()
    assert hex_text.startswith(":") and hex_text.rstrip().endswith(":00000001FF")
    # an ATmega328P has 32 KiB of flash, 0.5 KiB of it for the bootloader
    elf = out["edgepilot_fw.elf"].read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[18] == 83  # e_machine EM_AVR
    flash = sum(int(line[1:3], 16) for line in hex_text.split() if line[7:9] == "00")
    assert 500 < flash < 32 * 1024 - 512


@st.composite
def _streams(draw):
    """Frames, torn frames, bit flips and noise, concatenated."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["frame", "noise", "torn", "flip"]))
        frame = sp.encode(
            draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.binary(max_size=sp.MAX_PAYLOAD))
        )
        if kind == "noise":
            parts.append(draw(st.binary(max_size=40)))
        elif kind == "torn":
            parts.append(frame[: draw(st.integers(1, len(frame) - 1))])
        elif kind == "flip":
            b = bytearray(frame)
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
            parts.append(bytes(b))
        else:
            parts.append(frame)
    return b"".join(parts)


@given(data=_streams())
def test_c_and_python_parsers_agree_on_any_stream(core, data):
    """Beyond the fixed vectors: the two parsers give the same frames and counters."""
    c = CParser(core)
    py = sp.Parser()
    assert c.feed(data) == [
        {"type": f.type, "seq": f.seq, "payload_hex": f.payload.hex()} for f in py.feed(data)
    ]
    assert (c.s.bad_crc, c.s.bad_len) == (py.bad_crc, py.bad_len)
