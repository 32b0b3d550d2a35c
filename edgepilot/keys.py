"""The fleet's Ed25519 keys: one pair signs model packages, another signs announcements.

Two roles, two pairs (after Uptane/TUF's separation of roles): ``signing`` signs the
packages themselves (checked when a package loads), ``announce`` signs the announcements
that say which version the fleet should run, with their counter and expiry (checked
before a byte of a package is fetched). A leaked announcement key alone cannot make a car
run a package nobody signed; a leaked package key alone cannot make a car swap. Both live
in ``keys/`` (``<role>.key`` 0600, ``<role>.pub``); the receivers trust ``.pub`` files named
in their profile. Rotation: docs/deploy.md#keys.

Federated learning adds one pair per client (``edgepilot keys --car ID`` / ``--node ID``,
``keys/cars/<id>.key``, ``keys/nodes/<id>.key``): a car signs its own weight updates, an
edge node the updates it trains for the cars it is listed for; the federated server trusts
their ``.pub`` files (``edgepilot.fl.auth``, docs/federated.md "The link").

No torch here: the car's install without torch verifies announcements and packages.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgepilot import EdgepilotError

log = logging.getLogger(__name__)

PACKAGES, ANNOUNCEMENTS = "signing", "announce"
PRIVATE, PUBLIC = f"{PACKAGES}.key", f"{PACKAGES}.pub"
CLIENT_DIRS = {"car": "cars", "node": "nodes"}  # a federated client's pair, by kind: keys/<dir>/<id>.key
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as the broker's logins; ids become file names


def check_client_id(name: str, what: str = "id") -> str:
    """``name`` when it can name a car or node (and its key file), else an error."""
    if not isinstance(name, str) or not _CLIENT_ID.match(name) or name in (".", ".."):
        raise EdgepilotError(f"{what} {name!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return name


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_key_dir() -> Path:
    """``keys/`` of the current directory when it exists, else of the repository."""
    here = Path("keys")
    return here if here.is_dir() else repo_root() / "keys"


def make_keys(out: str | Path, force: bool = False, role: str = PACKAGES) -> tuple[Path, Path]:
    """Write a fresh Ed25519 pair ``<role>.key``/``<role>.pub`` into ``out``; refuses to
    overwrite unless ``force``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    priv, pub = out / f"{role}.key", out / f"{role}.pub"
    if priv.exists() and not force:
        raise EdgepilotError(f"{priv} exists; pass --force to replace it (what it signed stops verifying)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_text(public_key_text(key.public_key()) + "\n")
    return priv, pub


def public_key_text(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(
    path: str | Path | None = None, *, create: bool = False, role: str = PACKAGES
) -> Ed25519PrivateKey:
    """The private key at ``path`` (default: ``keys/<role>.key``).

    With ``create`` and no key at the default place, a pair is made first (a fresh
    checkout can train and sign at once; receivers must then trust ``keys/<role>.pub``)."""
    p = Path(path) if path else default_key_dir() / f"{role}.key"
    if not p.exists() and create and path is None:
        log.warning("no %s key at %s; making a new pair (edgepilot keys)", role, p)
        make_keys(p.parent, role=role)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except FileNotFoundError:
        raise EdgepilotError(f"{p}: no {role} key (make one with `edgepilot keys`)") from None
    except (ValueError, TypeError) as e:
        raise EdgepilotError(f"{p}: not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgepilotError(f"{p}: not an Ed25519 key")
    return key


def parse_public_key(item: str | Path) -> Ed25519PublicKey:
    """A trusted key given as a ``.pub`` file path or as its base64 text."""
    text = str(item).strip()
    p = Path(text)
    if len(text) < 200 and p.suffix == ".pub" or p.is_file():
        try:
            text = p.read_text().strip()
        except OSError as e:
            raise EdgepilotError(f"trusted key {p}: {e.strerror}") from None
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise EdgepilotError(f"trusted key {item!s:.60}: not a base64 Ed25519 public key") from None


def default_trusted_keys(role: str = PACKAGES) -> list[str]:
    """``keys/<role>.pub`` (and rotated ones, ``keys/<role>-*.pub``) when they exist."""
    d = default_key_dir()
    return [str(p) for p in sorted(d.glob(f"{role}.pub")) + sorted(d.glob(f"{role}-*.pub"))]


def make_client_keys(
    out: str | Path, kind: str, name: str, force: bool = False, acts_for: list[str] | None = None
) -> dict[str, object]:
    """A federated client's pair: ``out/cars/<name>.key|.pub`` for a car, ``out/nodes/<name>.*``
    for an edge node, and with ``acts_for`` the node's ``<name>.cars`` (the cars it may train
    for; the server reads it beside the ``.pub``)."""
    sub = Path(out) / CLIENT_DIRS[kind]
    priv, pub = make_keys(sub, force=force, role=check_client_id(name, kind))
    made: dict[str, object] = {
        kind: name,
        "private": str(priv),
        "public": str(pub),
        "key_id": key_id(load_private_key(priv).public_key()),
    }
    if acts_for:
        cars = [check_client_id(c, "car") for c in acts_for]
        lst = sub / f"{name}.cars"
        lst.write_text("".join(f"{c}\n" for c in cars))
        made.update(cars=cars, cars_file=str(lst))
    return made


def cli(args: object) -> dict[str, object]:
    """``edgepilot keys``: the package pair and the announcement pair (or one ``--role``), or
    a federated client's pair (``--car ID``, ``--node ID [--for CARS]``)."""
    out_dir, force = getattr(args, "out", "keys"), getattr(args, "force", False)
    acts_for = [c for c in (getattr(args, "for_cars", None) or "").split(",") if c]
    if acts_for and not getattr(args, "node", None):
        raise EdgepilotError("--for names the cars an edge node trains for: give it with --node ID")
    for kind in ("car", "node"):
        if getattr(args, kind, None):
            return make_client_keys(out_dir, kind, getattr(args, kind), force, acts_for)
    roles = [getattr(args, "role", None)] if getattr(args, "role", None) else [PACKAGES, ANNOUNCEMENTS]
    out: dict[str, object] = {}
    for role in roles:
        priv, pub = make_keys(out_dir, force=force, role=role)
        made = {"private": str(priv), "public": str(pub), "key_id": key_id(load_private_key(priv).public_key())}
        if role == PACKAGES:
            out.update(made)
        else:
            out[role] = made
    return out
