"""Read a packed driving log without trusting it: every header checked first, then extracted.

The car packs a log as a plain USTAR tar (``vehicle.upload.pack_log``): regular files with
short relative names, nothing else. This reader accepts exactly that and nothing more, and
the same code walks the headers for the check and for the extraction, so what was checked
is what gets written. Why not ``tarfile``: given a GNU sparse member it expands the size
the sparse map claims (a 10 KiB tar becomes 1 GiB of zeros), and it reads a pax or GNU
long-name header's data whole into memory, whatever size that header names.

- ``check`` walks the 512-byte headers, seeking over the data: every member must be a
  regular file (type ``0``) of the POSIX ustar format with a plain relative name
  (``a-z A-Z 0-9 . _ -`` in ``/``-separated parts, none hidden, no ``..``, not absolute),
  within the per-member cap; the sum of the sizes within the total cap, the count within
  the member cap, every member's data inside the file, every checksum right, and
  ``meta.json`` + ``records.jsonl`` present. Memory: one header, whatever the tar holds.
- ``extract`` walks again, checking each header again, and streams each member into the
  store in pieces of ``PIECE`` bytes: exactly the size its checked header names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cloud_trainer.store import Store
from edgepilot import EdgepilotError

BLOCK = 512
PIECE = 1 << 20  # bytes read and written at a time while extracting
REQUIRED = ("meta.json", "records.jsonl")
RECORDS = "records.jsonl"
_ZERO = bytes(BLOCK)
_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_TYPES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a GNU sparse file",
    b"x": "a pax header",
    b"g": "a pax global header",
    b"L": "a GNU long name",
    b"K": "a GNU long link name",
}


@dataclass(frozen=True)
class TarLimits:
    max_bytes: int  # all members together
    max_member_bytes: int
    max_members: int


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    offset: int  # where its data starts in the tar


def refuse(why: str) -> EdgepilotError:
    return EdgepilotError(f"upload is not a packed log ({why})")


def _text(field: bytes, what: str) -> str:
    raw = field.split(b"\0", 1)[0]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise refuse(f"{what} is not ASCII: {raw[:60]!r}") from None


def _octal(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256: only for sizes far over any cap
        raise refuse(f"{what} is in base-256 (over 8 GiB)")
    text = _text(field, what).strip(" ")
    try:
        return int(text or "0", 8)
    except ValueError:
        raise refuse(f"{what} is not an octal number: {text[:20]!r}") from None


def _parse(hdr: bytes, offset: int) -> Member:
    if hdr[257:262] != b"ustar":
        raise refuse(f"no tar header at byte {offset - BLOCK}")
    kind = hdr[156:157]
    name = _text(hdr[:100], "a member name")
    if kind not in (b"0", b"\0"):
        what = _TYPES.get(kind, f"of type {kind!r}")
        raise refuse(f"member {name!r} is {what}; only regular files are allowed")
    if hdr[257:265] != b"ustar\x0000":
        raise refuse(f"member {name!r} is not in the POSIX ustar format")
    stored = _octal(hdr[148:156], "a header checksum")
    rest = hdr[:148] + hdr[156:]
    unsigned = sum(rest) + 8 * 32  # the checksum field counts as spaces
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)  # some old tars sum signed bytes
    if stored not in (unsigned, signed):
        raise refuse(f"member {name!r}: header checksum mismatch")
    prefix = _text(hdr[345:500], "a member name prefix")
    if prefix:
        name = f"{prefix}/{name}"
    parts = name.split("/")
    # hidden names are markers (ours, the car's): a packed log never holds one
    if not _NAME.match(name) or any(p.startswith(".") for p in parts):
        raise refuse(f"member {name!r}: only plain relative names, no '..', hidden or absolute ones")
    return Member(name, _octal(hdr[124:136], f"member {name!r}: size"), offset)


def members(f: BinaryIO, size: int, limits: TarLimits) -> Iterator[Member]:
    """The members of the tar of ``size`` bytes in ``f``, each checked before it is yielded."""
    pos = count = total = 0
    while pos < size:  # a tar may end without its end-of-archive blocks, as tarfile allows
        f.seek(pos)
        hdr = f.read(BLOCK)
        if len(hdr) != BLOCK:
            raise refuse("it ends inside a header")
        if hdr == _ZERO:  # end of archive
            return
        m = _parse(hdr, pos + BLOCK)
        count += 1
        total += m.size
        if m.size > limits.max_member_bytes:
            raise refuse(f"member {m.name!r} is {m.size} bytes, over the {limits.max_member_bytes}-byte cap")
        if total > limits.max_bytes:
            raise refuse(f"its members hold over {limits.max_bytes} bytes (the cap)")
        if count > limits.max_members:
            raise refuse(f"it holds over {limits.max_members} members (the cap)")
        if m.offset + m.size > size:
            raise refuse(f"member {m.name!r} runs past the end of the tar")
        yield m
        pos = m.offset + -(-m.size // BLOCK) * BLOCK


def check(f: BinaryIO, size: int, limits: TarLimits) -> None:
    """Raise EdgepilotError unless the tar is a driving log within ``limits``."""
    missing = set(REQUIRED)
    for m in members(f, size, limits):
        missing.discard(m.name)
    if missing:
        raise EdgepilotError(f"upload is not a driving log: no {sorted(missing)[0]}")


class RecordCounter:
    """Counts the records of ``records.jsonl`` as it streams by: the lines that are not
    blank and not delete operations (``"op"``), without holding a line in memory."""

    def __init__(self) -> None:
        self.records = 0
        self._blank = True
        self._op = False
        self._tail = b""  # the last bytes of the current line: '"op"' may span two pieces

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for j, part in enumerate(lines):
            self._blank = self._blank and not part.strip()
            self._op = self._op or b'"op"' in self._tail + part
            self._tail = (self._tail + part)[-3:]
            if j < len(lines) - 1:
                self.end_line()

    def end_line(self) -> None:
        if not self._blank and not self._op:
            self.records += 1
        self._blank, self._op, self._tail = True, False, b""


def extract(f: BinaryIO, size: int, limits: TarLimits, store: Store, prefix: str) -> int:
    """Write every member under ``prefix/``; returns the record count. Call ``check`` first.

    The walk checks every header again as it goes (the file is read anew: what is written is
    what passes here, whatever an earlier pass saw), and each member gets exactly the bytes
    its checked header names, streamed: a member stopped midway leaves no object."""
    counter = RecordCounter()

    def pieces(m: Member) -> Iterator[bytes]:
        f.seek(m.offset)
        left = m.size
        while left:
            piece = f.read(min(PIECE, left))
            if not piece:
                raise refuse(f"member {m.name!r} is cut short")
            left -= len(piece)
            if m.name == RECORDS:
                counter.feed(piece)
            yield piece

    for m in members(f, size, limits):
        store.put_stream(f"{prefix}/{m.name}", pieces(m))
    counter.end_line()
    return counter.records
