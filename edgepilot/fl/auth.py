"""Who sent an update: node authentication on the federated link, at the application level.

Flower's legacy gRPC API knows connections, not cars, and TLS proves only who the server
is. So every update is signed, and the server checks the signature before it decodes a
byte of the update:

- each round, the server gives every connection its own fresh random ``nonce`` in the fit
  config and remembers which connection got which (``"signed": true`` says it will check);
- the client answers with, in its metrics, the car the update is for (``car``), who signs
  (``signer``: ``car:<id>``, a car for itself, or ``node:<id>``, an edge node training for a
  car) and an Ed25519 signature (``sig``) over ``signed_message``: the signer, the car, the
  round, the nonce, the SHA-256 of the encoded update and the sample count (its weight in
  the average, so nobody on the way can reweigh it);
- the server verifies against the public keys it trusts (``Trust``, a directory:
  ``cars/<car>.pub``; ``nodes/<node>.pub`` with ``nodes/<node>.cars``, the cars that node may
  act for).

A car signs only for itself; a node only for the cars it is listed for. An update replayed
in a later round, or on another connection, was signed over another nonce and does not
verify.

Before it sends a connection the global model, a server with client keys challenges it
(``GetPropertiesIns`` with ``challenge``: the connection's nonce for the round): the client
answers with its car and signer and a signature over ``hello_message`` (signer, car, round,
nonce, under its own domain ``HELLO_DOMAIN``), checked by ``Trust.verify_hello`` with the
same keys and rules as an update. The update of that round is then signed over the same
nonce: the two domains keep a hello from passing for an update and back, and both are bound
to the one connection and round, so a second nonce would prove nothing more.

The keys are made by ``edgepilot keys --car ID`` / ``--node ID`` (``edgepilot.keys``).

No torch, no Flower here: both ends, and their tests, use it as plain functions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgepilot import EdgepilotError
from edgepilot.keys import CLIENT_DIRS, check_client_id, default_key_dir, load_private_key, parse_public_key

log = logging.getLogger(__name__)

DOMAIN = "edgepilot-fl-update/1"  # a car's key signs nothing else that could pass for this
HELLO_DOMAIN = "edgepilot-fl-hello/1"  # the challenge's answer: never mistaken for an update
KINDS = CLIENT_DIRS  # "car" -> "cars", "node" -> "nodes"
CARS, NODES = KINDS["car"], KINDS["node"]
check_id = check_client_id


class AuthError(EdgepilotError):
    """An update whose sender the server cannot establish."""


def new_nonce() -> str:
    return secrets.token_hex(16)


def signed_message(signer: str, car: str, rnd: int, nonce: str, payload: bytes, samples: int) -> bytes:
    """What a client signs for one update. Newline-separated: ids cannot hold one."""
    digest = hashlib.sha256(payload).hexdigest()
    return "\n".join([DOMAIN, signer, car, str(int(rnd)), nonce, digest, str(int(samples))]).encode()


def hello_message(signer: str, car: str, rnd: int, nonce: str) -> bytes:
    """What a client signs to answer the server's challenge (no update yet: nothing to hash)."""
    return "\n".join([HELLO_DOMAIN, signer, car, str(int(rnd)), nonce]).encode()


@dataclass(frozen=True)
class Identity:
    """A client's signing identity: ``car:<id>`` or ``node:<id>`` and its private key."""

    signer: str
    key: Ed25519PrivateKey = field(repr=False)

    def sign(self, car: str, rnd: int, nonce: str, payload: bytes, samples: int) -> dict[str, str]:
        """The metrics that carry the signature of one update."""
        return self._signed(signed_message(self.signer, car, rnd, nonce, payload, samples))

    def hello(self, car: str, rnd: int, nonce: str) -> dict[str, str]:
        """The properties that answer the server's challenge for round ``rnd``."""
        return self._signed(hello_message(self.signer, car, rnd, nonce))

    def _signed(self, message: bytes) -> dict[str, str]:
        return {"signer": self.signer, "sig": base64.b64encode(self.key.sign(message)).decode()}


def key_path(kind: str, name: str) -> Path:
    """Where ``edgepilot keys --car/--node`` puts a client's private key by default."""
    return default_key_dir() / KINDS[kind] / f"{check_id(name, kind)}.key"


def load_identity(kind: str, name: str, path: str | None) -> Identity | None:
    """The identity ``kind:name`` signs as, with the key at ``path`` (an error when it is not
    there) or at the default place (None when there is none: the client sends unsigned)."""
    check_id(name, kind)
    p = Path(path) if path else key_path(kind, name)
    if path is not None and not p.exists():
        raise EdgepilotError(f"{p}: no such key (make one with `edgepilot keys --{kind} {name}`)")
    if path is None and not p.exists():
        log.warning(
            "no key for %s %s at %s: updates go unsigned (a server with client keys refuses them; "
            "make one with `edgepilot keys --%s %s`)",
            kind,
            name,
            p,
            kind,
            name,
        )
        return None
    return Identity(f"{kind}:{name}", load_private_key(p, role=f"{kind} {name}"))


@dataclass
class Trust:
    """The public keys a federated server takes updates from."""

    cars: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    nodes: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    acts_for: dict[str, frozenset[str]] = field(default_factory=dict)  # node -> cars it may train for
    where: str = ""
    broken: str = ""  # why the keys in ``where`` no longer load: nobody is trusted until they do

    def describe(self) -> str:
        if self.broken:
            return f"no keys trusted: {self.broken}"
        return f"{len(self.cars)} car key(s), {len(self.nodes)} node key(s) from {self.where}"

    def reloaded(self) -> Trust:
        """The keys in ``where`` as they are now, so that removing a car's ``.pub`` revokes it
        without restarting the server. Keys that no longer load trust nobody (fail closed)."""
        if not self.where:
            return self
        try:
            return load_trust(self.where)
        except (EdgepilotError, OSError, ValueError) as e:
            return Trust(where=self.where, broken=str(e)[:300])

    def verify(
        self, metrics: dict[str, Any], rnd: int, nonce: str | None, payload: bytes, samples: int
    ) -> str:
        """The car an update is for, once its signature checks out against the nonce this
        server gave its connection for round ``rnd``; ``AuthError`` says why not."""
        car, signer, pub = self._claim(metrics, "unsigned update (this server takes signed updates only)")
        if nonce is None:
            raise AuthError("no nonce was given to this connection this round")
        if metrics.get("nonce") != nonce or metrics.get("round") != rnd:
            raise AuthError(
                f"stale nonce: signed for round {metrics.get('round')!r} under another nonce than this "
                f"connection was given for round {rnd} (a replayed update?)"
            )
        _verify(
            pub,
            metrics["sig"],
            signed_message(signer, car, rnd, nonce, payload, samples),
            f"the signature does not verify with {signer}'s key (signed with another key, "
            "or the update was altered)",
        )
        return car

    def verify_hello(self, props: dict[str, Any], rnd: int, nonce: str) -> str:
        """The car a connection answers the challenge for, once its signature over this
        round's ``nonce`` checks out; ``AuthError`` says why not."""
        car, signer, pub = self._claim(
            props, "unsigned answer to the challenge (this server sends its model to signed cars only)"
        )
        if props.get("nonce") != nonce or props.get("round") != rnd:
            raise AuthError(f"the answer is for another challenge than round {rnd}'s on this connection")
        _verify(
            pub,
            props["sig"],
            hello_message(signer, car, rnd, nonce),
            f"the answer to the challenge does not verify with {signer}'s key",
        )
        return car

    def _claim(self, fields: dict[str, Any], unsigned: str) -> tuple[str, str, Ed25519PublicKey]:
        """(car, signer, the signer's key) that signed ``fields`` claim, if this server
        trusts that signer for that car; ``unsigned``: what to say when nothing is signed."""
        if self.broken:
            raise AuthError(f"the server's client keys do not load ({self.broken})")
        car, signer, sig = (fields.get(k) for k in ("car", "signer", "sig"))
        if not sig or not signer:
            raise AuthError(unsigned)
        try:
            check_id(car, "car")
        except EdgepilotError:
            raise AuthError(f"names no valid car ({car!r})") from None
        return str(car), str(signer), self._key_for(str(signer), str(car))

    def _key_for(self, signer: str, car: str) -> Ed25519PublicKey:
        kind, _, name = signer.partition(":")
        if kind == "car":
            if name != car:
                raise AuthError(f"car {name} signs for car {car}: a car signs only its own updates")
            if car not in self.cars:
                raise AuthError(f"unknown car {car}: no {CARS}/{car}.pub among the client keys")
            return self.cars[car]
        if kind == "node":
            if name not in self.nodes:
                raise AuthError(f"unknown node {name}: no {NODES}/{name}.pub among the client keys")
            if car not in self.acts_for.get(name, frozenset()):
                raise AuthError(f"node {name} may not train for car {car} (not in {NODES}/{name}.cars)")
            return self.nodes[name]
        raise AuthError(f"signer {signer!r} is neither car:<id> nor node:<id>")


def _verify(pub: Ed25519PublicKey, sig: Any, message: bytes, failure: str) -> None:
    """``sig`` (base64) is ``pub``'s signature of ``message``; else ``AuthError(failure)``."""
    try:
        pub.verify(base64.b64decode(str(sig), validate=True), message)
    except (InvalidSignature, binascii.Error, ValueError):
        raise AuthError(failure) from None


def load_trust(directory: str | Path) -> Trust:
    """The client keys in ``directory``: ``cars/*.pub``, ``nodes/*.pub`` and ``nodes/*.cars``
    (one car id a line, ``#`` comments)."""
    d = Path(directory)
    if not d.is_dir():
        raise EdgepilotError(f"client keys {d}: no such directory")
    trust = Trust(where=str(d))
    for kind, table in ((CARS, trust.cars), (NODES, trust.nodes)):
        for pub in sorted((d / kind).glob("*.pub")):
            table[check_id(pub.stem, f"{pub}:")] = parse_public_key(pub)
    for lst in sorted((d / NODES).glob("*.cars")):
        if lst.stem not in trust.nodes:
            raise EdgepilotError(f"{lst}: lists cars for node {lst.stem}, which has no {lst.stem}.pub")
        lines = (ln.split("#", 1)[0].strip() for ln in lst.read_text().splitlines())
        trust.acts_for[lst.stem] = frozenset(check_id(c, f"{lst}: car") for c in lines if c)
    if not trust.cars and not trust.nodes:
        raise EdgepilotError(
            f"client keys {d}: no {CARS}/*.pub or {NODES}/*.pub (make them with `edgepilot keys --car ID`)"
        )
    return trust
