"""A lean load generator for saturating edge nodes: raw MQTT v5 over plain sockets.

Why not the car's own ``OffloadClient``: on a 2-core machine, eight paho clients in one
interpreter (each with its network thread, all sharing one GIL) spend more CPU per request
than the edge node they are meant to saturate, so "saturated throughput" measured with them
is the load generator's ceiling, and a faster edge cannot show. This generator speaks just
enough MQTT v5 (CONNECT, SUBSCRIBE, PUBLISH at QoS 0 with Response Topic and Correlation
Data, the replies' PUBLISH) from one thread with ``selectors``: the request packet is built
once per car and only its correlation bytes change, and a reply is counted by reading its
fixed header and its Correlation Data. It sends the same bytes on the wire as the car does
(``wire.encode_request``), so the edge does exactly the same work per request.

Plain ``mqtt://`` without credentials only (a benchmark on loopback); the cars' client is
the one that handles TLS, auth and reconnects.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgepilot import EdgepilotError
from edgepilot.config import BrokerConfig
from edgepilot.imaging import encode_jpeg
from edgepilot.mqtt import parse_url
from edgepilot.schema import wire


def bench_frame(seed: int = 0) -> bytes:
    """A camera-like 160x120 JPEG: smooth gradients plus texture (what JPEG sees on a road)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:120, 0:160].astype(np.float32)
    base = np.stack([x * 0.8 + 40, y * 1.2 + 30, (x + y) * 0.5 + 20], axis=2)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (120, 160, 3)).astype(np.float32), (5, 5), 0)
    img = np.clip(base + noise, 0, 255).astype(np.uint8)
    return encode_jpeg(img, 90)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    # protocol name, level 5, flags: clean start, keepalive, no properties; payload: client id
    return _packet(
        0x10, _s("MQTT") + bytes([5, 0x02]) + struct.pack("!H", keepalive) + b"\x00" + _s(client_id)
    )


def subscribe_packet(topic: str, packet_id: int = 1) -> bytes:
    return _packet(0x82, struct.pack("!H", packet_id) + b"\x00" + _s(topic) + b"\x00")


@dataclass
class _Car:
    sock: socket.socket
    head: bytes  # PUBLISH fixed header + topic + properties up to the correlation bytes
    tail: bytes  # the request payload
    sent: dict[int, float] = field(default_factory=dict)  # correlation -> perf_counter at send
    buf: bytearray = field(default_factory=bytearray)


def _request_parts(car_id: str, payload: bytes) -> tuple[bytes, bytes]:
    """PUBLISH to the car's infer topic with Response Topic, Correlation Data (8 bytes, put
    in by the caller) and Message Expiry; returns (bytes before the correlation, payload)."""
    topic = _s(wire.infer_topic(car_id))
    props_wo_corr = b"\x08" + _s(wire.reply_topic(car_id)) + b"\x02" + struct.pack("!I", 5)
    props = props_wo_corr + b"\x09" + struct.pack("!H", 8)  # + 8 correlation bytes
    props_len = len(props) + 8
    var = topic + _varint(props_len) + props
    rem = len(var) + 8 + len(payload)
    return bytes([0x30]) + _varint(rem) + var, payload


def _varint_at(buf: bytearray, i: int) -> tuple[int, int] | None:
    """The MQTT variable-length integer at ``buf[i:]`` and the index after it; None when
    the buffer ends inside it."""
    value, mult = 0, 1
    while i < len(buf):
        b = buf[i]
        value += (b & 0x7F) * mult
        mult <<= 7
        i += 1
        if not b & 0x80:
            return value, i
    return None


def _read_packets(car: _Car, on_publish: Callable[[int | None], None]) -> int:
    """Parse whole packets from the car's buffer; call ``on_publish(correlation)`` for each
    PUBLISH that carries one. Returns how many were handled."""
    buf, n, i = car.buf, 0, 0
    while True:
        if len(buf) - i < 2:
            break
        first = buf[i]
        got = _varint_at(buf, i + 1)
        if got is None:  # the remaining length itself is not complete yet
            break
        rem, j = got
        end = j + rem
        if end > len(buf):
            break
        if first >> 4 == 3:  # PUBLISH (QoS 0: no packet id)
            tlen = struct.unpack_from("!H", buf, j)[0]
            plen, k = _varint_at(buf, j + 2 + tlen) or (0, end)
            p, pend, corr = k, k + plen, None
            while p < pend:  # properties: find Correlation Data (0x09)
                pid = buf[p]
                if pid == 0x09:
                    ln = struct.unpack_from("!H", buf, p + 1)[0]
                    corr = int.from_bytes(buf[p + 3 : p + 3 + ln], "big")
                    break
                if pid in (0x01,):  # byte
                    p += 2
                elif pid in (0x02,):  # four-byte int
                    p += 5
                elif pid in (0x03, 0x08):  # UTF-8 string
                    p += 3 + struct.unpack_from("!H", buf, p + 1)[0]
                else:  # anything else: stop looking (the edge sends only the above)
                    break
            on_publish(corr)
            n += 1
        i = end
    del buf[:i]
    return n


def _read_one(s: socket.socket) -> tuple[int, bytes]:
    """One whole packet (blocking): (first byte, body)."""

    def exact(n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = s.recv(n - len(got))
            if not chunk:
                raise EdgepilotError("load generator: the broker closed the connection")
            got += chunk
        return got

    first = exact(1)[0]
    rem, mult = 0, 1
    while True:
        b = exact(1)[0]
        rem += (b & 0x7F) * mult
        mult <<= 7
        if not b & 0x80:
            break
    return first, exact(rem)


def _open(addr: tuple[str, int], client_id: str, reply: str, timeout: float) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(client_id))
    first, body = _read_one(s)
    if first != 0x20 or len(body) < 2 or body[1] != 0:
        raise EdgepilotError(f"load generator: broker refused client {client_id}")
    s.sendall(subscribe_packet(reply))
    first, body = _read_one(s)
    if first != 0x90 or body[-1] > 2:
        raise EdgepilotError(f"load generator: subscription to {reply} refused")
    s.setblocking(False)
    return s


@dataclass
class _Tally:
    """The requests in flight (numbered across the fleet) and the answers counted so far."""

    seq: int = 0
    answered: int = 0
    rtts: list[float] = field(default_factory=list)  # seconds

    def send(self, car: _Car) -> None:
        self.seq += 1
        car.sent[self.seq] = time.perf_counter()
        car.sock.sendall(car.head + self.seq.to_bytes(8, "big") + car.tail)

    def receive(self, car: _Car) -> None:
        """Whatever the broker sent ``car``: each answer counted and replaced by a new request."""
        try:
            data = car.sock.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            raise EdgepilotError("load generator: the broker closed a connection")
        car.buf += data
        done: list[int | None] = []
        _read_packets(car, done.append)
        t = time.perf_counter()
        for corr in done:
            t0 = car.sent.pop(corr, None) if corr is not None else None
            if t0 is None:
                continue
            self.answered += 1
            self.rtts.append(t - t0)
            self.send(car)

    def resend_stale(self, fleet: list[_Car], now: float) -> None:
        """Lost requests (dropped by a full queue): sent again, to keep the window full."""
        for car in fleet:
            stale = [c for c, t0 in car.sent.items() if now - t0 > 2.0]
            for c in stale:
                del car.sent[c]
                self.send(car)


def saturate(
    cfg: BrokerConfig,
    payload_for: Callable[[str], bytes],
    seconds: float = 5.0,
    window: int = 64,
    cars: int = 8,
) -> dict[str, float]:
    """Keep ``window`` requests in flight across ``cars`` connections for ``seconds`` (after
    one second of warm-up); answered requests/s and the round trip's median.

    ``payload_for(car_id) -> bytes``: the request payload of a car (``wire.encode_request``
    with that car id, which the edge checks against the topic)."""
    addr = parse_url(cfg.url)
    if addr.tls or cfg.username:
        raise EdgepilotError("the load generator speaks plain mqtt:// without credentials only")
    sel = selectors.DefaultSelector()
    tag = time.time_ns() % 10**8
    fleet: list[_Car] = []
    for i in range(cars):
        car_id = f"load-{tag}-{i}"
        sock = _open((addr.host, addr.port), car_id, wire.reply_topic(car_id), 5.0)
        head, tail = _request_parts(car_id, payload_for(car_id))
        car = _Car(sock, head, tail)
        fleet.append(car)
        sel.register(sock, selectors.EVENT_READ, car)
    tally = _Tally()
    t_measure = time.perf_counter() + 1.0
    try:
        for k in range(window):
            tally.send(fleet[k % cars])
        t_measure = _pump(sel, fleet, tally, t_measure, t_measure + seconds)
    finally:
        for car in fleet:
            sel.unregister(car.sock)
            car.sock.close()
        sel.close()
    elapsed = time.perf_counter() - t_measure
    rtts = sorted(tally.rtts)
    return {
        "answered_per_s": tally.answered / elapsed if elapsed > 0 else 0.0,
        "rtt_ms_p50": rtts[len(rtts) // 2] * 1e3 if rtts else float("nan"),
        "answered": tally.answered,
    }


def _pump(
    sel: selectors.BaseSelector, fleet: list[_Car], tally: _Tally, t_measure: float, t_end: float
) -> float:
    """Answer answers with requests until ``t_end``; the tally restarts at ``t_measure``
    (the warm-up is over), and the moment it did is returned."""
    measuring = False
    while (now := time.perf_counter()) < t_end:
        if not measuring and now >= t_measure:
            measuring, tally.answered, tally.rtts, t_measure = True, 0, [], now
        for key, _ in sel.select(0.5):
            tally.receive(key.data)
        tally.resend_stale(fleet, now)
    return t_measure
