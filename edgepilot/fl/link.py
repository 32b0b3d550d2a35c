"""The federated link's transport: TLS on Flower's gRPC, and when plaintext is allowed.

- The server serves TLS when it has a certificate and its key (``[fl] tls_cert``,
  ``tls_key``; Flower takes them with a CA as ``certificates=(ca, cert, key)``); the files
  are read and checked here first (they exist, parse, the key is the certificate's, it has
  not expired), so a mistake is one line naming the file, not a gRPC trace.
- A client turns TLS on with the CA that signed the server's certificate (``[fl] tls_ca``,
  ``--tls-ca``; Flower's ``root_certificates``) and checks the handshake itself before
  Flower connects (``probe``): a server it cannot verify, a TLS server it talks plaintext
  to or a plaintext server it expects TLS from are each named as such, where Flower would
  retry and then report a dropped stream.
- On loopback both may go plaintext (the tests, the demo, the benchmark: nothing crosses a
  network). Anywhere else the server refuses to start without TLS and client keys
  (``edgepilot.fl.auth``), and a client refuses to connect without a CA, unless
  ``insecure`` says so.

No Flower, no torch here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgepilot import EdgepilotError
from edgepilot.config import FlLinkConfig
from edgepilot.fl.auth import Trust, load_trust

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "ip6-localhost")


@dataclass
class ServerLink:
    """Where and how the server serves: its address, Flower's ``certificates`` (None:
    plaintext) and the client keys it checks updates against (None: cars are who they say)."""

    address: str
    certificates: tuple[bytes, bytes, bytes] | None = None
    trust: Trust | None = None


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    try:
        if not sep or not host:
            raise ValueError
        return host.strip("[]"), int(port)
    except ValueError:
        raise EdgepilotError(f"address {address!r}: expected HOST:PORT") from None


def is_loopback(address: str) -> bool:
    """``address`` (HOST:PORT) is on this machine only."""
    host, _ = split_address(address)
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise EdgepilotError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise EdgepilotError(f"{what} {path}: {e.strerror}") from None


def read_certificates(path: str, what: str) -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of ``path`` and the certificates in it; an error naming ``what`` otherwise."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise EdgepilotError(f"{what} {path}: not a PEM certificate") from None
    now = datetime.now(UTC)
    for c in certs:
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise EdgepilotError(
                f"{what} {path}: valid from {c.not_valid_before_utc:%Y-%m-%d} to "
                f"{c.not_valid_after_utc:%Y-%m-%d}, not now"
            )
    return data, certs


def server_certificates(
    cert: str | None, key: str | None, ca: str | None
) -> tuple[bytes, bytes, bytes] | None:
    """Flower's ``certificates`` (CA, certificate chain, key) from the files, checked; None
    without a certificate and key. Without a CA the chain stands in: Flower wants three
    parts, but asks cars for no certificate, so the server never verifies against it."""
    if not cert and not key:
        if ca:
            raise EdgepilotError(
                "[fl] tls_ca alone does not turn TLS on for the server: give tls_cert and tls_key"
            )
        return None
    if not (cert and key):
        raise EdgepilotError(
            "the federated server's TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)"
        )
    chain, certs = read_certificates(cert, "tls_cert")
    key_pem = _read(key, "tls_key")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise EdgepilotError(f"tls_key {key}: not an unencrypted PEM private key ({e})") from None
    mine = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*mine) != certs[0].public_key().public_bytes(*mine):
        raise EdgepilotError(f"tls_key {key} is not the key of the certificate in {cert}")
    root = read_certificates(ca, "tls_ca")[0] if ca else chain
    return root, chain, key_pem


def server_link(cfg: FlLinkConfig) -> ServerLink:
    """The server's link from its settings; off loopback, no plaintext and no anonymous
    cars unless ``insecure``."""
    split_address(cfg.listen)
    certs = server_certificates(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
    trust = load_trust(cfg.client_keys) if cfg.client_keys else None
    needs = (("TLS (--tls-cert/--tls-key)", certs), ("client keys (--client-keys)", trust))
    missing = [what for what, have in needs if have is None]
    if missing and not is_loopback(cfg.listen):
        if not cfg.insecure:
            raise EdgepilotError(
                f"refusing to serve federated learning on {cfg.listen} without {' and '.join(missing)}: "
                "anyone on the network could read the model or send updates as any car (docs/deploy.md"
                "#federated-learning-certificates-and-client-keys; --insecure on a network you trust)"
            )
        log.warning("federated server on %s without %s (--insecure)", cfg.listen, " and ".join(missing))
    if trust is None:
        log.warning("federated server: no client keys, so a car is whoever it says it is")
    else:
        log.info("federated server takes signed updates only: %s", trust.describe())
    return ServerLink(cfg.listen, certs, trust)


def client_root_certificates(server: str, ca: str | None, insecure: bool) -> bytes | None:
    """Flower's ``root_certificates`` for a client (None: plaintext), checked; a server that
    is not on this machine needs a CA unless ``insecure``."""
    if ca:
        return read_certificates(ca, "tls_ca")[0]
    if not is_loopback(server):
        if not insecure:
            raise EdgepilotError(
                f"refusing to connect to the federated server {server} in plaintext: give the CA that "
                "signed its certificate (--tls-ca FILE, [fl] tls_ca), or --insecure on a network you trust"
            )
        log.warning("plaintext to the federated server %s (--insecure)", server)
    return None


def probe(server: str, root: bytes | None, ca: str | None, timeout_s: float = 10.0) -> None:
    """One TLS handshake (or none) with the server before Flower connects; a clear error
    when the two ends do not agree on TLS or the server's certificate does not verify."""
    host, port = split_address(server)
    if root is None:
        if _speaks_tls(host, port, timeout_s):
            raise EdgepilotError(
                f"the federated server at {server} speaks TLS: give the CA that signed its certificate "
                "(--tls-ca FILE, [fl] tls_ca)"
            )
        return
    ctx = ssl.create_default_context(cadata=root.decode("ascii", "replace"))
    ctx.set_alpn_protocols(["h2"])  # gRPC's
    try:
        _handshake(host, port, ctx, timeout_s)
    except ssl.SSLCertVerificationError as e:
        raise EdgepilotError(
            f"the federated server at {server}: its certificate does not verify against {ca} "
            f"({e.verify_message}); is it the CA that signed the server's certificate, for {host}?"
        ) from None
    except (ssl.SSLError, OSError) as e:
        raise EdgepilotError(
            f"no TLS handshake with the federated server at {server} ({type(e).__name__}: {e}): "
            "does it run without certificates? (then drop --tls-ca, on loopback only)"
        ) from None


def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TLS handshake with anything (unverified) succeeds at ``host:port``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        _handshake(host, port, ctx, timeout_s)
    except (ssl.SSLError, OSError):
        return False
    return True


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> None:
    with (
        socket.create_connection((host, port), timeout=timeout_s) as raw,
        ctx.wrap_socket(raw, server_hostname=host),
    ):
        pass
