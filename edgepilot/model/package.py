"""The model package: one signed file that the cloud pushes and every runtime loads.

A package (``.eppkg``) is a zip archive (deflated) of three members:

``manifest.json``
    version, parent, architecture, input spec, quantisation, thresholds, metrics,
    training data ids, and ``weights_sha256``: the hash of ``weights.pt``.
``weights.pt``
    the ``state_dict`` written by ``torch.save``; read back with
    ``torch.load(weights_only=True)``, which refuses to unpickle anything but tensors and
    plain containers, so a package cannot run code when it is opened.
``signature.json``
    ``{"alg": "ed25519", "key_id": ..., "sig": base64}`` over the exact manifest bytes.
    The manifest carries the weights' hash, so the signature covers the weights too.

``script/stage<k>.pt`` (int8 packages)
    each inference stage as a frozen TorchScript program (``torch.jit.save``), hashed in
    the manifest (``script_sha256``). Loading these needs no ``torch.fx`` tracing, which
    patches ``nn.Module.__call__`` process-wide while it runs and so breaks inference on
    other threads: this is what lets a car hot-swap an int8 model between two frames.

Loading checks, in order: the archive opens, the signature verifies against one of the
trusted public keys, the weights' hash matches the manifest. Any failure is an
``EdgepilotError`` with a one-line reason (the CLI prints it without a traceback).

Keys: ``signing.key`` (PKCS#8 PEM, private: git-ignored) and ``signing.pub`` (one line,
base64 of the 32 raw bytes, easy to paste into a profile's ``trusted_keys``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgepilot import EdgepilotError
from edgepilot.keys import (  # noqa: F401 - the package's signing keys, re-exported for its callers
    PRIVATE,
    PUBLIC,
    default_key_dir,
    default_trusted_keys,
    key_id,
    load_private_key,
    make_keys,
    parse_public_key,
    public_key_text,
)

log = logging.getLogger(__name__)

FORMAT = "edgepilot-model/1"
MANIFEST, WEIGHTS, SIGNATURE = "manifest.json", "weights.pt", "signature.json"
MAX_MEMBER = 256 << 20  # refuse absurd members before reading them into memory


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


# -- packages ----------------------------------------------------------------------------


@dataclass
class Package:
    manifest: dict[str, Any]
    state: dict[str, Any]
    path: Path | None = None
    scripts: list[bytes] | None = None  # frozen TorchScript stages (int8 packages)


def script_name(k: int) -> str:
    return f"script/stage{k}.pt"


def save_package(
    path: str | Path,
    manifest: dict[str, Any],
    state: dict[str, Any],
    key: Ed25519PrivateKey,
    scripts: list[bytes] | None = None,
) -> Path:
    """Write ``manifest`` + ``state`` (+ TorchScript stages) as one signed file; fills in
    format and hashes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    m = dict(manifest)
    m.pop("script_sha256", None)
    m["format"] = FORMAT
    m["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    m["weights_bytes"] = len(weights)
    if scripts:
        m["script_sha256"] = [hashlib.sha256(b).hexdigest() for b in scripts]
    mbytes = json.dumps(m, indent=1, sort_keys=True, default=_json_default).encode()
    sig = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "sig": base64.b64encode(key.sign(mbytes)).decode(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(MANIFEST, mbytes)
        z.writestr(WEIGHTS, weights)
        for k, b in enumerate(scripts or []):
            z.writestr(script_name(k), b)
        z.writestr(SIGNATURE, json.dumps(sig))
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest only, *unverified* (for listings; never for loading weights)."""
    with _open(path) as z:
        raw = _member(z, path, MANIFEST)
    try:
        m = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise EdgepilotError(f"{path}: manifest is not JSON") from None
    if not isinstance(m, dict):
        raise EdgepilotError(f"{path}: manifest is not a JSON object")
    return m


def load_package(path: str | Path, trusted_keys: list[str] | None = None) -> Package:
    """Open, verify (signature, then hash) and read a package. EdgepilotError on any fault."""
    keys = [parse_public_key(k) for k in (default_trusted_keys() if trusted_keys is None else trusted_keys)]
    if not keys:
        raise EdgepilotError(f"{path}: no trusted public keys to verify it with (see `edgepilot keys`)")
    with _open(path) as z:
        mbytes = _member(z, path, MANIFEST)
        weights = _member(z, path, WEIGHTS)
        names = [n for n in z.namelist() if n.startswith("script/")]
        scripts = [_member(z, path, script_name(k)) for k in range(len(names))] if names else None
        try:
            sig = json.loads(_member(z, path, SIGNATURE))
            raw_sig = base64.b64decode(sig["sig"], validate=True)
        except (ValueError, KeyError, TypeError, RecursionError):
            raise EdgepilotError(f"{path}: signature block is malformed") from None
    if not any(_verifies(k, raw_sig, mbytes) for k in keys):
        raise EdgepilotError(
            f"{path}: signature does not verify with any trusted key "
            f"(signed by key {sig.get('key_id', '?')}; tampered or foreign package)"
        )
    try:
        manifest = json.loads(mbytes)
    except json.JSONDecodeError:
        raise EdgepilotError(f"{path}: manifest is not JSON") from None
    if manifest.get("format") != FORMAT:
        raise EdgepilotError(f"{path}: unknown package format {manifest.get('format')!r}")
    digest = hashlib.sha256(weights).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise EdgepilotError(
            f"{path}: weights hash mismatch (sha256 {digest[:12]}, manifest says "
            f"{str(manifest.get('weights_sha256'))[:12]}): the file is damaged or tampered"
        )
    want = manifest.get("script_sha256")
    if scripts is not None or want is not None:
        got = [hashlib.sha256(b).hexdigest() for b in scripts or []]
        if not isinstance(want, list) or got != want:
            raise EdgepilotError(
                f"{path}: TorchScript stages do not match the manifest: the file is damaged or tampered"
            )
    try:
        with warnings.catch_warnings():  # int8 tensors: TypedStorage / quantized-creation deprecations
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling refusal is a bad package
        raise EdgepilotError(f"{path}: weights do not load safely ({type(e).__name__})") from None
    return Package(manifest, state, Path(path), scripts)


def _verifies(key: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        key.verify(sig, data)
        return True
    except InvalidSignature:
        return False


def _open(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise EdgepilotError(f"{path}: no such model package") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise EdgepilotError(f"{path}: not a model package ({e})") from None


def _member(z: zipfile.ZipFile, path: str | Path, name: str) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise EdgepilotError(f"{path}: package lacks {name}") from None
    if info.file_size > MAX_MEMBER:
        raise EdgepilotError(f"{path}: {name} is implausibly large ({info.file_size} bytes)")
    try:
        return z.read(name)
    # a damaged or foreign archive: an unknown compression method (NotImplementedError),
    # an encrypted member (RuntimeError), a corrupt deflate stream (zlib.error), a cut one
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
        EOFError,
        zlib.error,
    ) as e:
        raise EdgepilotError(f"{path}: {name} is damaged ({e})") from None
