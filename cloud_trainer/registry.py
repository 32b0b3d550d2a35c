"""The model registry: every version with its manifest, a ``current`` per target, promote/rollback.

Layout in the store (``cloud_trainer.store``)::

    models/<target>/<version>/package.eppkg   the signed package, byte for byte as pushed
    models/<target>/<version>/manifest.json   registry manifest (below)
    models/car/<version>/tails.pt             the car model's split-mode tails, when trained
    models/car/<version>/fp32.eppkg           the fp32 package an int8 car model was compressed
                                              from (federated fine-tuning starts there)
    models/<target>/current.json              {"version": ..., "history": [older currents]}

The registry manifest repeats what the package's own manifest says (parent, thresholds,
metrics, training data, signature key id) and adds what only the cloud knows: the package
sha256 and size, the logs it was trained on, the gate's verdict and the report. A package
is verified (Ed25519 + weights hash) before it is registered, so nothing unsigned can be
promoted. ``history`` is a stack: promote pushes the old current, rollback pops it — a
rollback after a rollback walks further back, never in a circle.

CLI: ``edgepilot models list|promote|rollback`` (``cli_list``, ``cli_promote``,
``cli_rollback``); promote and rollback push the new current to the fleet when a broker
is reachable (``cloud_trainer.push``). ``change_model`` is the one path of a change: the
CLI and the cloud trainer (running the dashboard's ``fleet.ModelChange``) both take it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_trainer.store import Store, open_store
from edgepilot import EdgepilotError
from edgepilot.schema.fleet import check_name

log = logging.getLogger(__name__)

TARGETS = ("car", "edge")


def _target(target: str) -> str:
    if target not in TARGETS:
        raise EdgepilotError(f"target must be one of {TARGETS}, got {target!r}")
    return target


class Registry:
    def __init__(self, store: Store, trusted_keys: list[str] | None = None) -> None:
        self.store = store
        self.trusted_keys = trusted_keys

    # -- keys ------------------------------------------------------------------------------
    @staticmethod
    def _dir(target: str, version: str) -> str:
        return f"models/{_target(target)}/{check_name(version, 'version')}"

    def package_key(self, target: str, version: str) -> str:
        return self._dir(target, version) + "/package.eppkg"

    def package_path(self, target: str, version: str) -> Path:
        try:
            return self.store.local_file(self.package_key(target, version))
        except KeyError:
            raise EdgepilotError(f"no {target} model version {version!r} in the registry") from None

    # -- add / read ------------------------------------------------------------------------
    def add(
        self,
        target: str,
        package: str | Path,
        *,
        data: list[str] | None = None,
        gate: dict[str, Any] | None = None,
        report: str | None = None,
    ) -> dict[str, Any]:
        """Verify ``package`` and register it (not current yet). Returns its registry manifest."""
        from edgepilot.model.package import load_package

        pkg = load_package(package, self.trusted_keys)  # EdgepilotError when unsigned/tampered
        m = pkg.manifest
        version = check_name(str(m.get("version")), "version")
        raw = Path(package).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        mkey = self._dir(target, version) + "/manifest.json"
        if self.store.exists(mkey):
            old = json.loads(self.store.get(mkey))
            if old["sha256"] != sha:
                raise EdgepilotError(f"{target} version {version} is already registered with other bytes")
            return old
        import zipfile

        with zipfile.ZipFile(package) as z:
            sig = json.loads(z.read("signature.json"))
        entry = {
            "target": target,
            "version": version,
            "parent": m.get("parent"),
            "arch": (m.get("arch") or {}).get("name"),
            "quant": m.get("quant", "fp32"),
            "sha256": sha,
            "size": len(raw),
            "data": data if data is not None else (m.get("training") or {}).get("sessions", []),
            "metrics": m.get("metrics", {}),
            "thresholds": m.get("thresholds", {}),
            "signature": {"alg": sig.get("alg"), "key_id": sig.get("key_id"), "sig": sig.get("sig")},
            "gate": gate,
            "report": report,
            "registered": time.time(),
        }
        self.store.put(self.package_key(target, version), raw)
        self.store.put(mkey, json.dumps(entry, indent=1, default=str).encode())
        log.info("registered %s model %s (%d bytes)", target, version, len(raw))
        return entry

    # -- split-mode tails of a car model ----------------------------------------------------
    def tails_key(self, version: str) -> str:
        return self._dir("car", version) + "/tails.pt"

    def add_tails(self, version: str, path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
        """Keep the tails file of registered car model ``version`` next to its package; the
        manifest's ``tails`` says what they are (split points, validation MAE, sha256)."""
        raw = Path(path).read_bytes()
        self.get("car", version)  # the car model must be registered first
        self.store.put(self.tails_key(version), raw)
        meta = {k: v for k, v in info.items() if k != "path"}
        meta.update(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
        log.info("registered tails of car model %s (%d bytes)", version, len(raw))
        return self.update("car", version, tails=meta)

    def tails_path(self, version: str) -> Path | None:
        """The tails file of car model ``version``, or None when it has none."""
        key = self.tails_key(version)
        return self.store.local_file(key) if self.store.exists(key) else None

    def source_key(self, version: str) -> str:
        return self._dir("car", version) + "/fp32.eppkg"

    def add_source(self, version: str, path: str | Path) -> dict[str, Any]:
        """Keep the fp32 package that registered int8 car model ``version`` was compressed
        from: federated fine-tuning starts from it (int8 weights cannot be trained)."""
        from edgepilot.model.package import load_package

        pkg = load_package(path, self.trusted_keys)  # only a verified package becomes a source
        raw = Path(path).read_bytes()
        self.store.put(self.source_key(version), raw)
        meta = {
            "version": pkg.manifest.get("version"),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "size": len(raw),
        }
        return self.update("car", version, source=meta)

    def source_path(self, version: str) -> Path | None:
        """The fp32 source of car model ``version``, or None when it has none kept."""
        key = self.source_key(version)
        return self.store.local_file(key) if self.store.exists(key) else None

    def get(self, target: str, version: str) -> dict[str, Any]:
        try:
            return json.loads(self.store.get(self._dir(target, version) + "/manifest.json"))
        except KeyError:
            raise EdgepilotError(f"no {target} model version {version!r} in the registry") from None

    def update(self, target: str, version: str, **fields: Any) -> dict[str, Any]:
        entry = self.get(target, version)
        entry.update(fields)
        self.store.put(self._dir(target, version) + "/manifest.json", json.dumps(entry, indent=1).encode())
        return entry

    def versions(self, target: str) -> list[dict[str, Any]]:
        out = []
        for key in self.store.list(f"models/{_target(target)}/"):
            if key.endswith("/manifest.json"):
                out.append(json.loads(self.store.get(key)))
        return sorted(out, key=lambda e: e.get("registered", 0))

    def _pointer(self, target: str) -> dict[str, Any]:
        key = f"models/{_target(target)}/current.json"
        return json.loads(self.store.get(key)) if self.store.exists(key) else {"version": None, "history": []}

    def current(self, target: str) -> str | None:
        return self._pointer(target)["version"]

    def pointer(self, target: str) -> dict[str, Any]:
        """``current.json``: version, history (the rollback stack), rolled_back, changed."""
        return self._pointer(target)

    def history(self, target: str) -> list[str]:
        return list(self._pointer(target)["history"])

    def next_counter(self, target: str) -> int:
        """The next announcement counter for ``target``: above every one issued, and at least
        the time in ms (so a lost store or a second trainer still issues newer ones)."""
        key = f"models/{target}/counter"
        last = int(self.store.get(key)) if self.store.exists(key) else 0
        counter = max(last + 1, int(time.time() * 1000))
        self.store.put(key, str(counter).encode())
        return counter

    # -- promote / rollback ----------------------------------------------------------------
    def promote(self, target: str, version: str) -> dict[str, Any]:
        entry = self.get(target, version)  # must exist
        p = self._pointer(target)
        if p["version"] == version:
            return entry
        if p["version"] is not None:
            p["history"].append(p["version"])
        p["version"] = version
        p["changed"] = time.time()
        self.store.put(f"models/{target}/current.json", json.dumps(p, indent=1).encode())
        log.info("%s current -> %s", target, version)
        return entry

    def rollback(self, target: str) -> dict[str, Any]:
        p = self._pointer(target)
        if not p["history"]:
            raise EdgepilotError(f"no earlier {target} model to roll back to (current: {p['version']})")
        bad = p["version"]
        p["version"] = p["history"].pop()
        p["changed"] = time.time()
        p.setdefault("rolled_back", []).append(bad)
        self.store.put(f"models/{target}/current.json", json.dumps(p, indent=1).encode())
        log.warning("%s rolled back: %s -> %s", target, bad, p["version"])
        return self.get(target, p["version"])


# -- CLI ---------------------------------------------------------------------------------


def _open(args: Any) -> tuple[Registry, Any]:
    from edgepilot.config import load_profile

    prof = load_profile(getattr(args, "profile", None), default="cloud")
    store = open_store(getattr(args, "store", None) or prof.cloud.store)
    return Registry(store, prof.model.trusted_keys or None), prof


def _push(args: Any, prof: Any, reg: Registry, target: str, rollback: bool) -> bool:
    """Announce the new current on the broker; False (with a warning) when none answers."""
    from cloud_trainer.push import push_current
    from edgepilot.mqtt import Connection, broker_config

    cfg = broker_config(prof.broker, getattr(args, "broker", None))
    conn = Connection(cfg, f"cloud-cli-{int(time.time() * 1000) % 10**9}")
    try:
        if not conn.start(wait_s=3.0, required=False):
            log.warning("no broker at %s: registry changed, fleet not told (run `edgepilot cloud`)", cfg.url)
            return False
        push_current(conn, reg, target, rollback=rollback)
        return True
    finally:
        conn.close()


def cli_list(args: Any) -> dict[str, Any]:
    reg, _ = _open(args)
    cur = reg.current(args.target)
    rows = [
        {
            "version": e["version"],
            "current": e["version"] == cur,
            "parent": e.get("parent"),
            "quant": e.get("quant"),
            "size": e.get("size"),
            "val_steering_mae": (e.get("metrics") or {}).get("val_steering_mae"),
            "gate": (e.get("gate") or {}).get("passed"),
        }
        for e in reg.versions(args.target)
    ]
    if not getattr(args, "json", False):
        from edgepilot.progress import table

        print(
            table(
                [[r["version"], "*" if r["current"] else "", r["quant"], r["size"], r["gate"]] for r in rows],
                ["version", "current", "quant", "bytes", "gate"],
            )
        )
    return {"target": args.target, "current": cur, "history": reg.history(args.target), "versions": rows}


def change_model(
    reg: Registry, action: str, target: str, version: str | None, push: Callable[[str, bool], bool]
) -> dict[str, Any]:
    """Promote ``version`` of ``target``, or roll ``target`` back, then tell the fleet with
    ``push(target, rollback)`` (True when the announcement went out). The one path of every
    model change: ``edgepilot models promote|rollback`` and the cloud trainer's executor of
    ``fleet.ModelChange`` (the dashboard's buttons) both call it."""
    before = reg.current(target)
    if action == "promote":
        if not version:
            raise EdgepilotError("promote needs a version")
        entry = reg.promote(target, version)
    elif action == "rollback":
        entry = reg.rollback(target)
    else:
        raise EdgepilotError(f"unknown model change {action!r} (promote or rollback)")
    pushed = push(target, action == "rollback")
    out = {"target": target, "current": entry["version"], "pushed": pushed}
    if action == "rollback":
        out["rolled_back"] = before
    return {**out, "previous": before}


def cli_promote(args: Any) -> dict[str, Any]:
    reg, prof = _open(args)
    res = change_model(reg, "promote", args.target, args.version, lambda t, rb: _push(args, prof, reg, t, rb))
    return {k: res[k] for k in ("target", "current", "pushed")}


def cli_rollback(args: Any) -> dict[str, Any]:
    reg, prof = _open(args)
    res = change_model(reg, "rollback", args.target, None, lambda t, rb: _push(args, prof, reg, t, rb))
    return {k: res[k] for k in ("target", "current", "rolled_back", "pushed")}
