"""The registry and the retraining runs as the dashboard shows them, read from the store.

Read-only: the dashboard never writes the store (a change goes to the cloud trainer as a
``fleet.ModelChange``). ``runs/<run>/summary.json`` is written once per run, so a run read
once is kept; the registry is re-read whole (a few small manifests per target).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cloud_trainer.registry import TARGETS, Registry
from cloud_trainer.store import Store
from edgepilot import EdgepilotError

MAX_RUNS = 12
_PLOT = re.compile(r"^[A-Za-z0-9._-]{1,128}\.png$")
_RUN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def plot_key(run: str, name: str) -> str:
    """The store key of a run's plot; refuses anything but ``runs/<run>/<name>.png``."""
    if not _RUN.match(run) or run in (".", "..") or not _PLOT.match(name):
        raise EdgepilotError(f"no such plot: {run}/{name}")
    return f"runs/{run}/{name}"


class StoreView:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = Registry(store)
        self._runs: dict[str, dict[str, Any]] = {}

    # -- registry -----------------------------------------------------------------------------
    def registry_state(self) -> dict[str, Any]:
        return {t: self._target(t) for t in TARGETS}

    def _target(self, target: str) -> dict[str, Any]:
        pointer = self.registry.pointer(target)
        versions = []
        for e in self.registry.versions(target):
            gate = e.get("gate") or {}
            versions.append(
                {
                    "version": e["version"],
                    "registered": e.get("registered"),
                    "parent": e.get("parent"),
                    "arch": e.get("arch"),
                    "quant": e.get("quant"),
                    "size": e.get("size"),
                    "val_steering_mae": (e.get("metrics") or {}).get("val_steering_mae"),
                    "gate": gate.get("passed"),
                    "sessions": len(e.get("data") or []),
                    "report": e.get("report"),
                    "tails": bool(e.get("tails")),
                }
            )
        return {
            "current": pointer.get("version"),
            "history": list(pointer.get("history", [])),
            "rolled_back": list(pointer.get("rolled_back", [])),
            "changed": pointer.get("changed"),
            "versions": versions,
        }

    # -- runs -----------------------------------------------------------------------------------
    def runs_state(self, limit: int = MAX_RUNS) -> list[dict[str, Any]]:
        """The newest ``limit`` runs that wrote a report, newest first."""
        keys = self.store.list("runs/")
        ids = sorted({k.split("/")[1] for k in keys if k.count("/") == 2}, reverse=True)[:limit]
        out = []
        for run in ids:
            plots = sorted(
                k.split("/")[2] for k in keys if k.startswith(f"runs/{run}/") and k.endswith(".png")
            )
            got = self._run(run)
            if got is not None:
                out.append({**got, "plots": plots})
        return out

    def _run(self, run: str) -> dict[str, Any] | None:
        if run not in self._runs:
            key = f"runs/{run}/summary.json"
            if not self.store.exists(key):
                return None
            try:
                self._runs[run] = run_card(json.loads(self.store.get(key)))
            except (ValueError, KeyError, TypeError) as e:
                return {"run": run, "error": f"unreadable summary.json: {e}"}
        return self._runs[run]

    def plot(self, run: str, name: str) -> bytes:
        try:
            return self.store.get(plot_key(run, name))
        except KeyError:
            raise EdgepilotError(f"no such plot: {run}/{name}") from None


def run_card(res: dict[str, Any]) -> dict[str, Any]:
    """A run's summary (``retrain``'s results) as the page shows it: data, per target the
    candidate against the current model, each gate check, and why it was (not) promoted."""
    targets = {}
    for target, r in (res.get("targets") or {}).items():
        gate = r.get("gate") or {}
        targets[target] = {
            "passed": bool(gate.get("passed")),
            "against": gate.get("against"),
            "candidate": figures(r.get("candidate")),
            "current": figures(r.get("current")),
            "checks": gate.get("checks") or [],
            "why": why(gate),
            "with_car": with_car(r.get("with_car")),
        }
    return {
        "run": res.get("run"),
        "train": res.get("train") or [],
        "heldout": res.get("heldout") or [],
        "promoted": [t for t, g in targets.items() if g["passed"]],
        "targets": targets,
        "compress": res.get("compress"),
        "tails": res.get("tails"),
        "elapsed_s": res.get("elapsed_s"),
        "report": f"runs/{res.get('run')}/report.md",
    }


def figures(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate's figures of one evaluated model (open loop, closed loop, latency)."""
    if not ev:
        return None
    cl = ev.get("closed_loop") or {}
    return {
        "version": ev.get("version"),
        "steering_mae": ev.get("steering_mae"),
        "latency_p50_ms": (ev.get("latency_ms") or {}).get("p50"),
        "offload_rate": ev.get("offload_rate"),
        "autonomy": cl.get("autonomy"),
        "mean_abs_cte_m": cl.get("mean_abs_cte_m"),
        "interventions": cl.get("interventions"),
    }


def with_car(pair: dict[str, Any] | None) -> dict[str, Any] | None:
    """An edge candidate's checks with the car (``retrain.judge_pair``): the held-out frames
    the car would offload, and the car alone and with this edge model answering them."""
    if not pair:
        return None
    keep = ("autonomy", "mean_abs_cte_m", "interventions")
    out: dict[str, Any] = {"car": pair.get("car"), "offloaded": pair.get("offloaded")}
    if pair.get("with_edge"):  # no closed-loop drives without evaluation tracks
        alone, both = pair.get("alone") or {}, pair["with_edge"]
        out.update(alone={k: alone.get(k) for k in keep}, with_edge={k: both.get(k) for k in keep})
    return out


def why(gate: dict[str, Any]) -> str:
    """One line: why the gate promoted the candidate or kept the current model."""
    checks = gate.get("checks") or []
    if gate.get("passed"):
        base = f"promoted: all {len(checks)} checks passed"
        return base + ("" if gate.get("against") else " (no current model: only the checks that need none)")
    failed = [c for c in checks if not c.get("passed")]
    if not failed:
        return "kept the current model"
    parts = []
    for c in failed:
        rel = ">" if any(u in c.get("check", "") for u in ("_mae", "_ms", "_cte_m")) else "<"
        parts.append(f"{c.get('check')} {_num(c.get('value'))} {rel} limit {_num(c.get('limit'))}")
    return "kept the current model: " + "; ".join(parts)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
