"""The model package: one signed file that the cloud pushes and every runtime loads.

A package (``.eppkg``) is a zip archive (deflated). The manifest names the runtime that
runs it (``runtime``: ``torch``, the default of packages that name none, or ``onnx``):

``manifest.json``
    version, parent, architecture, input spec, quantisation, runtime, thresholds,
    metrics, training data ids, and the sha256 of every other member.
``signature.json``
    ``{"alg": "ed25519", "key_id": ..., "sig": base64}`` over the exact manifest bytes.
    The manifest carries the members' hashes, so the signature covers them too.

torch packages (format ``edgepilot-model/1``):

``weights.pt``
    the ``state_dict`` written by ``torch.save`` (hash: ``weights_sha256``); read back
    with ``torch.load(weights_only=True)``, which refuses to unpickle anything but tensors
    and plain containers, so a package cannot run code when it is opened.
``script/stage<k>.pt`` (int8 packages)
    each inference segment as a frozen TorchScript program (``torch.jit.save``), hashed in
    the manifest (``script_sha256``). Loading these needs no ``torch.fx`` tracing, which
    patches ``nn.Module.__call__`` process-wide while it runs and so breaks inference on
    other threads: this is what lets a car hot-swap an int8 model between two frames.

ONNX packages (format ``edgepilot-model/2``: a reader that predates it says "unknown
package format" instead of failing on a missing member):

``onnx/segment<k>.onnx``
    each inference segment as its own ONNX graph (int8 QDQ), hashed in the manifest
    (``onnx_sha256``). No ``weights.pt``: nothing in the package needs torch.

This module does not need torch: verifying and reading any package works on a car
install without it; only the weights of a torch package are then refused (with the fix).

Loading checks, in order: the archive opens, the signature verifies against one of the
trusted public keys, every member's hash matches the manifest. Any failure is an
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

FORMAT = "edgepilot-model/1"  # torch weights (+ TorchScript programs)
FORMAT_ONNX = "edgepilot-model/2"  # ONNX graphs, no torch member
FORMATS = (FORMAT, FORMAT_ONNX)
RUNTIMES = ("torch", "onnx")
MANIFEST, WEIGHTS, SIGNATURE = "manifest.json", "weights.pt", "signature.json"
MAX_MEMBER = 256 << 20  # refuse absurd members before reading them into memory


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


# -- packages ----------------------------------------------------------------------------


@dataclass
class Package:
    manifest: dict[str, Any]
    state: dict[str, Any]  # torch weights ({} for an ONNX package)
    path: Path | None = None
    scripts: list[bytes] | None = None  # frozen TorchScript segments (torch int8 packages)
    onnx: list[bytes] | None = None  # ONNX graphs, one per segment (ONNX packages)
    weights: bytes | None = field(default=None, repr=False)  # verified weights.pt bytes

    @property
    def runtime(self) -> str:
        return runtime_of(self.manifest)


def runtime_of(manifest: dict[str, Any]) -> str:
    """The runtime a package names; packages from before the field are torch packages."""
    return str(manifest.get("runtime") or "torch")


def script_name(k: int) -> str:
    return f"script/stage{k}.pt"


def onnx_name(k: int) -> str:
    return f"onnx/segment{k}.onnx"


def torch_module() -> Any:
    """``torch``, or an EdgepilotError that says how to get it (a car install has none)."""
    try:
        import torch
    except ImportError:
        raise EdgepilotError(
            "this needs torch, which this install lacks (the car's install runs ONNX packages "
            "only): install edgepilot with the train extra, or compress the package for the "
            "car with `edgepilot compress PKG --out PKG` (ONNX by default)"
        ) from None
    return torch


def save_package(
    path: str | Path,
    manifest: dict[str, Any],
    state: dict[str, Any] | None,
    key: Ed25519PrivateKey,
    scripts: list[bytes] | None = None,
    *,
    onnx: list[bytes] | None = None,
) -> Path:
    """Write one signed file; fills in format, runtime and hashes. A torch package:
    ``state`` (+ ``scripts``); an ONNX package: ``onnx`` (one graph per segment) and no
    state."""
    m = dict(manifest)
    for k in ("script_sha256", "onnx_sha256", "weights_sha256", "weights_bytes"):
        m.pop(k, None)
    members: list[tuple[str, bytes]] = []
    if onnx:
        if state or scripts:
            raise EdgepilotError("an ONNX package carries no torch weights or programs")
        m.update(format=FORMAT_ONNX, runtime="onnx")
        m["onnx_sha256"] = [hashlib.sha256(b).hexdigest() for b in onnx]
        members += [(onnx_name(k), b) for k, b in enumerate(onnx)]
    else:
        buf = io.BytesIO()
        torch_module().save(state or {}, buf)
        weights = buf.getvalue()
        m.update(format=FORMAT, runtime="torch")
        m["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        m["weights_bytes"] = len(weights)
        members.append((WEIGHTS, weights))
        if scripts:
            m["script_sha256"] = [hashlib.sha256(b).hexdigest() for b in scripts]
            members += [(script_name(k), b) for k, b in enumerate(scripts)]
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
        for name, b in members:
            z.writestr(name, b)
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


def verify_package(path: str | Path, trusted_keys: list[str] | None = None) -> Package:
    """Open and verify a package (signature, then every member's hash) without loading
    torch weights: ``state`` stays empty. Works without torch. EdgepilotError on any fault."""
    keys = [parse_public_key(k) for k in (default_trusted_keys() if trusted_keys is None else trusted_keys)]
    if not keys:
        raise EdgepilotError(f"{path}: no trusted public keys to verify it with (see `edgepilot keys`)")
    with _open(path) as z:
        mbytes = _member(z, path, MANIFEST)
        names = set(z.namelist())
        weights = _member(z, path, WEIGHTS) if WEIGHTS in names else None
        scripts = _numbered(z, path, names, "script/", script_name)
        graphs = _numbered(z, path, names, "onnx/", onnx_name)
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
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise EdgepilotError(f"{path}: unknown package format {fmt!r} (this edgepilot reads {FORMATS})")
    runtime = runtime_of(manifest)
    if runtime not in RUNTIMES:
        raise EdgepilotError(f"{path}: unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if runtime == "onnx":
        _check_hashes(path, graphs, manifest.get("onnx_sha256"), "ONNX graphs", required=True)
        if weights is not None or scripts:
            raise EdgepilotError(f"{path}: an ONNX package must not carry torch members")
    else:
        if weights is None:
            raise EdgepilotError(f"{path}: package lacks {WEIGHTS}")
        digest = hashlib.sha256(weights).hexdigest()
        if digest != manifest.get("weights_sha256"):
            raise EdgepilotError(
                f"{path}: weights hash mismatch (sha256 {digest[:12]}, manifest says "
                f"{str(manifest.get('weights_sha256'))[:12]}): the file is damaged or tampered"
            )
        _check_hashes(path, scripts, manifest.get("script_sha256"), "TorchScript stages", required=False)
    return Package(manifest, {}, Path(path), scripts, graphs, weights)


def load_package(path: str | Path, trusted_keys: list[str] | None = None) -> Package:
    """Verify a package and read its torch weights (``state``) if it has any. An ONNX
    package loads without torch; a torch package's weights need torch."""
    return load_weights(verify_package(path, trusted_keys))


def load_weights(pkg: Package) -> Package:
    """Fill in ``state`` from the verified ``weights.pt`` bytes (torch packages)."""
    if pkg.weights is None or pkg.state:
        return pkg
    torch = torch_module()
    try:
        with warnings.catch_warnings():  # int8 tensors: TypedStorage / quantized-creation deprecations
            warnings.simplefilter("ignore", UserWarning)
            pkg.state = torch.load(io.BytesIO(pkg.weights), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling refusal is a bad package
        raise EdgepilotError(f"{pkg.path}: weights do not load safely ({type(e).__name__})") from None
    return pkg


def _numbered(
    z: zipfile.ZipFile, path: str | Path, names: set[str], prefix: str, name: Any
) -> list[bytes] | None:
    """Members ``name(0)``, ``name(1)``, ... (as many as there are under ``prefix``)."""
    n = sum(1 for m in names if m.startswith(prefix))
    return [_member(z, path, name(k)) for k in range(n)] if n else None


def _check_hashes(
    path: str | Path, blobs: list[bytes] | None, want: Any, what: str, *, required: bool
) -> None:
    if blobs is None and want is None and not required:
        return
    got = [hashlib.sha256(b).hexdigest() for b in blobs or []]
    if not isinstance(want, list) or not got or got != want:
        raise EdgepilotError(f"{path}: {what} hash mismatch with the manifest: the file is damaged or tampered")


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
