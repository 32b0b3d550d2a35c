"""The host side of the edgepilot framed serial protocol (the car's motor controller link).

Byte for byte the same as the firmware's C core (``vehicle/firmware/edgepilot_fw/ep_proto.h``;
both are checked against ``vehicle/firmware/test_vectors.json``)::

    0xAA 0x55 | type u8 | seq u8 | len u8 | payload[len] | crc16 little-endian

CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, check 0x29B1) over type, seq, len and
payload. The host sends CMD (pulse widths in microseconds, already calibrated),
HEARTBEAT (answered with TELEMETRY) and CONFIG (the firmware's neutral and limits); the
car answers every CMD/CONFIG with an ACK. Why pulse widths and not -1..1: calibration
lives in the car's profile on the host, so the firmware needs no per-car build.

Protocol version 2 adds the RC receiver without changing a version 1 frame: RC_CONFIG
(kill switch, and a request for RC frames) and RC (the receiver's pulses, the kill
switch's state). A version 1 firmware answers RC_CONFIG with ACK_UNKNOWN; a version 1
host never asks for RC frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SYNC = b"\xaa\x55"
MAX_PAYLOAD = 32
OVERHEAD = 7

PROTO_VERSION = 2  # the firmware's EP_PROTO_VERSION

T_CMD = 0x01
T_HEARTBEAT = 0x02
T_CONFIG = 0x03
T_RC_CONFIG = 0x04  # v2
T_ACK = 0x81
T_TELEMETRY = 0x82
T_RC = 0x83  # v2

ACK_OK = 0
ACK_CLAMPED = 1
ACK_BAD_LEN = 2
ACK_DUP = 3
ACK_UNKNOWN = 4
ACK_BAD_VALUE = 5
ACK_KILLED = 6  # v2: the CMD was taken, but the kill switch holds the outputs at neutral

F_FAILSAFE = 0x01
F_BOOT = 0x02
F_CONFIGURED = 0x04
F_KILLED = 0x08  # v2: the kill switch holds the outputs at neutral

FAILSAFE_MS = 250  # the firmware's EP_FAILSAFE_MS

# RC_CONFIG flags (v2)
RC_KILL = 0x01  # receiver channel 2 is a kill switch
RC_KILL_LOW = 0x02  # its kill position is below the threshold (else above)
RC_REPORT = 0x04  # send an RC frame every RC_REPORT_MS
RC_REPORT_MS = 20
RC_LOST_MS = 100  # the firmware's EP_RC_LOST_MS: a channel silent this long reads 0
# RC frame flags (v2)
RCF_KILL_ON = 0x01
RCF_KILLED = 0x02  # kill position, or no signal on the kill channel
RCF_REARM = 0x04  # kill over; outputs held until a CMD with the throttle at neutral

_TELEMETRY = struct.Struct("<HHBHHHHI")
_ACK = struct.Struct("<BBHH")
_CMD = struct.Struct("<HH")
_CONFIG = struct.Struct("<HHHH")
_RC_CONFIG = struct.Struct("<BH")
_RC = struct.Struct("<BBHHH")


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE; ``crc16(b"123456789") == 0x29B1``."""
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


def encode(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame on the wire."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes((ftype & 0xFF, seq & 0xFF, len(payload))) + payload
    return SYNC + body + crc16(body).to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int  # the acknowledged host frame
    status: int
    steering_us: int  # what the outputs carry after the command
    throttle_us: int


@dataclass(frozen=True, slots=True)
class Telemetry:
    steering_us: int
    throttle_us: int
    flags: int
    rx_ok: int
    rx_bad: int  # frames the firmware dropped: CRC or length errors
    rx_lost: int  # gaps in the host's sequence numbers
    failsafe_count: int
    uptime_ms: int

    @property
    def failsafe(self) -> bool:
        return bool(self.flags & F_FAILSAFE)


@dataclass(frozen=True, slots=True)
class RcReport:
    """The receiver as the firmware saw it; a width of 0 means no signal on that channel."""

    version: int
    flags: int
    steering_us: int
    throttle_us: int
    aux_us: int

    @property
    def killed(self) -> bool:
        """The kill switch holds the outputs at neutral (killed, or waiting to re-arm)."""
        return bool(self.flags & (RCF_KILLED | RCF_REARM))


def cmd(seq: int, steering_us: int, throttle_us: int) -> bytes:
    return encode(T_CMD, seq, _CMD.pack(steering_us, throttle_us))


def heartbeat(seq: int) -> bytes:
    return encode(T_HEARTBEAT, seq)


def config(seq: int, neutral_steering_us: int, neutral_throttle_us: int, min_us: int, max_us: int) -> bytes:
    return encode(T_CONFIG, seq, _CONFIG.pack(neutral_steering_us, neutral_throttle_us, min_us, max_us))


def rc_config(seq: int, flags: int, kill_threshold_us: int = 1500) -> bytes:
    return encode(T_RC_CONFIG, seq, _RC_CONFIG.pack(flags, kill_threshold_us))


def decode_cmd(frame: Frame) -> tuple[int, int]:
    return _CMD.unpack(frame.payload)


def decode_ack(frame: Frame) -> Ack:
    return Ack(*_ACK.unpack(frame.payload))


def decode_telemetry(frame: Frame) -> Telemetry:
    return Telemetry(*_TELEMETRY.unpack(frame.payload))


def decode_rc(frame: Frame) -> RcReport:
    return RcReport(*_RC.unpack(frame.payload))


def decode_reply(frame: Frame) -> Ack | Telemetry | RcReport | None:
    """An ACK, TELEMETRY or RC frame as a dataclass; None for anything else or a wrong size."""
    try:
        if frame.type == T_ACK:
            return decode_ack(frame)
        if frame.type == T_TELEMETRY:
            return decode_telemetry(frame)
        if frame.type == T_RC:
            return decode_rc(frame)
    except struct.error:
        return None
    return None


class Parser:
    """Incremental frame parser: the same algorithm as the firmware's ``ep_parser_next``.

    Bytes may arrive in any chunking. A candidate frame that fails (CRC, or a length
    over the cap) costs only its first byte: the search restarts at the next byte, so
    a false sync in line noise never swallows the real frame behind it. Failures are
    counted in ``bad_crc``/``bad_len``."""

    def __init__(self) -> None:
        self.bad_crc = 0
        self.bad_len = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        while True:
            i = buf.find(SYNC)
            if i < 0:  # keep a lone 0xAA at the end: it may be the start of a sync
                del buf[: len(buf) - (1 if buf.endswith(b"\xaa") else 0)]
                break
            del buf[:i]
            if len(buf) < 5:
                break
            n = buf[4]
            if n > MAX_PAYLOAD:
                self.bad_len += 1
                del buf[:1]
                continue
            if len(buf) < n + OVERHEAD:
                break
            if crc16(bytes(buf[2 : 5 + n])) != int.from_bytes(buf[5 + n : 7 + n], "little"):
                self.bad_crc += 1
                del buf[:1]
                continue
            out.append(Frame(buf[2], buf[3], bytes(buf[5 : 5 + n])))
            del buf[: n + OVERHEAD]
        return out
