"""The secured broker's logins and ACLs, derived from the table of topics.

``launch/make-broker-auth`` calls this. Every client gets its own login (its car id, edge
node id, "cloud", ...), a random password written to ``<id>.pass`` (mode 0600, never on a
command line) and one role whose ACL is exactly the rows of ``edgepilot.schema.topics``
where that kind of client appears: a car may publish only under its own id and read only
its own replies; only edge nodes may join the edge's shared subscription, only the cloud
the cloud's. The result is a Mosquitto dynamic-security file (``dynamic-security.json``):
unlike the stock ACL file, the dynamic-security plugin checks a shared subscription
against the ACL (``$share/<group>/...`` is the topic it checks), which is what keeps a car
from taking a share of other cars' requests or uploads.

Passwords are hashed as the plugin expects: PBKDF2-HMAC-SHA512 over a random 12-byte salt.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepilot import EdgepilotError
from edgepilot.schema.topics import ROLES, TOPICS, Topic

DYNSEC_FILE = "dynamic-security.json"
RATE_EXEMPT_FILE = "ratelimit-exempt"  # the logins the broker's rate limit leaves alone
UNLIMITED_ROLES = ("edge", "cloud")  # their replies and pushes grow with the fleet: not a car's rate
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # no ':' : a login's client ids are "<id>" and "<id>:..."
ITERATIONS = 101_000


@dataclass(frozen=True)
class Client:
    role: str
    id: str


def _topic(t: Topic, role: str, own: str) -> str:
    """The row's pattern for this client: its own id where the row says <car>/<node> and
    the client is that car/node; a wildcard level elsewhere."""
    pat = t.full
    pat = pat.replace("<car>", own if role == "car" else "+")
    pat = pat.replace("<node>", own if role == "edge" else "+")
    return re.sub(r"<[a-z]+>", "+", pat)


def acls(role: str, own: str) -> list[dict[str, Any]]:
    """The dynamic-security ACL of one client: allow-list only (everything else is denied)."""
    out: list[dict[str, Any]] = []
    for t in TOPICS:
        topic = _topic(t, role, own)
        if role in t.publishers:
            out.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
        if role in t.subscribers:
            sub = f"$share/{t.shared}/{topic}" if t.shared else topic
            out.append({"acltype": "subscribePattern", "topic": sub, "allow": True})
            out.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
    return out


def _hash(password: str) -> dict[str, Any]:
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": ITERATIONS,
    }


def _password(out: Path, client_id: str) -> str:
    """The client's password: kept when its file exists (re-running adds clients without
    changing the others'), else a new random one in a 0600 file."""
    path = out / f"{client_id}.pass"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def dynsec_config(clients: list[Client], passwords: dict[str, str]) -> dict[str, Any]:
    return {
        "clients": [
            {"username": c.id, "textName": f"edgepilot {c.role}", **_hash(passwords[c.id]), "roles": [{"rolename": c.id}]}
            for c in clients
        ],
        "roles": [{"rolename": c.id, "acls": acls(c.role, c.id)} for c in clients],
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def make_auth(out: str | Path, clients: list[Client]) -> Path:
    """Write ``OUT/dynamic-security.json``, one ``OUT/<id>.pass`` per client and
    ``OUT/ratelimit-exempt`` (the edge nodes' and the cloud's logins, one a line, read by
    the broker's rate limit: launch/mosquitto-secure.conf), all 0600."""
    out = Path(out)
    if not clients:
        raise EdgepilotError("make-broker-auth: name at least one client (--car, --edge, --cloud, ...)")
    for c in clients:
        if c.role not in ROLES:
            raise EdgepilotError(f"make-broker-auth: unknown role {c.role!r} (one of {', '.join(ROLES)})")
        if not _ID.match(c.id):
            raise EdgepilotError(f"make-broker-auth: bad id {c.id!r} (1-64 of A-Z a-z 0-9 . _ -)")
    if len({c.id for c in clients}) != len(clients):
        raise EdgepilotError("make-broker-auth: every client needs its own id")
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    passwords = {c.id: _password(out, c.id) for c in clients}
    path = out / DYNSEC_FILE
    write_private(path, json.dumps(dynsec_config(clients, passwords), indent=1))
    write_private(out / RATE_EXEMPT_FILE, "".join(f"{c.id}\n" for c in clients if c.role in UNLIMITED_ROLES))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="launch/make-broker-auth",
        description="Logins and ACLs of the secured broker (Mosquitto's dynamic-security plugin).",
    )
    ap.add_argument("out", metavar="OUTDIR")
    for role in ROLES:
        ap.add_argument(f"--{role}", action="append", default=[], metavar="ID", help=f"a {role} client")
    a = ap.parse_args(argv)
    clients = [Client(role, cid) for role in ROLES for cid in getattr(a, role)]
    try:
        path = make_auth(a.out, clients)
    except EdgepilotError as e:
        print(e, file=sys.stderr)
        return 2
    counts = ", ".join(f"{sum(c.role == r for c in clients)} {r}" for r in ROLES)
    print(f"[make-broker-auth] {path}: {counts}; passwords in {a.out}/<id>.pass (0600)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
