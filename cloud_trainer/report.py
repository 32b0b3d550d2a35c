"""A short report per retraining run: markdown + plots, kept in the store.

``runs/<run>/report.md``, ``runs/<run>/compare.png``, ``runs/<run>/summary.json``, and the
run's training curves (``curve-car.png``, ``curve-edge.png``) and closed-loop trajectories
of the gate (``trajectory-car-candidate-<track>.png``, ``...-current-...``):
what was trained on what, candidate vs current on every gate metric, and the verdict —
enough to answer "why did (or didn't) the fleet get a new model?" a week later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud_trainer.store import Store


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    car = results["targets"].get("car", {})
    cand, cur = car.get("candidate") or {}, car.get("current") or {}
    metrics = [("held-out steering MAE", lambda d: d.get("steering_mae"))]
    metrics.append(("latency p50 (ms)", lambda d: (d.get("latency_ms") or {}).get("p50")))
    if "closed_loop" in cand:
        metrics.append(("sim autonomy", lambda d: (d.get("closed_loop") or {}).get("autonomy")))
        metrics.append(("sim mean |CTE| (m)", lambda d: (d.get("closed_loop") or {}).get("mean_abs_cte_m")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
    for ax, (name, get) in zip(list(axes) if len(metrics) > 1 else [axes], metrics, strict=False):
        vals = [get(cur) if cur else None, get(cand)]
        ax.bar(["current", "candidate"], [v or 0.0 for v in vals], color=["#999999", "#2a7ab0"])
        ax.set_title(name, fontsize=9)
    verdict = car.get("gate", {}).get("passed")
    fig.suptitle(f"{results['run']}: car model {'PROMOTED' if verdict else 'kept current'}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Retraining run {results['run']}", ""]
    lines += [
        f"- training sessions ({len(results['train'])}): " + ", ".join(f"`{k}`" for k in results["train"]),
        f"- held-out sessions ({len(results['heldout'])}): "
        + ", ".join(f"`{k}`" for k in results["heldout"]),
    ]
    for key in ("edge_train", "car_train", "federated", "compress", "tails"):
        if key in results:
            lines.append(
                f"- {key.replace('_', ' ')}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in results[key].items())
            )
    lines.append("")
    for target, r in results["targets"].items():
        g = r["gate"]
        lines += [f"## {target} model: {'passed — promoted' if g['passed'] else 'FAILED — current kept'}", ""]
        lines.append(
            f"candidate `{r['candidate']['version']}` against `{g.get('against') or 'no current model'}`"
        )
        lines += ["", "| check | candidate | limit | passed |", "|---|---|---|---|"]
        for c in g["checks"]:
            lines.append(
                f"| {c['check']} | {_fmt(c['value'])} | {_fmt(c['limit'])} | {'yes' if c['passed'] else 'NO'} |"
            )
        cl = r["candidate"].get("closed_loop")
        if cl:
            lines += ["", "closed loop per track (candidate):", ""]
            for name, s in cl["tracks"].items():
                lines.append(f"- {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in s.items()))
        pair = r.get("with_car")
        off = (pair or {}).get("offloaded")
        if off:
            lines += ["", f"held-out frames car `{pair['car']}` would offload: {off['frames']} of {off['of']}"]
            if "edge_mae" in off:
                lines[-1] += f", MAE there: edge {_fmt(off['edge_mae'])}, car's own {_fmt(off['car_mae'])}"
        if pair and pair.get("with_edge"):
            lines += ["", f"closed loop with car `{pair['car']}` answering its offloaded frames:", ""]
            for who in ("alone", "with_edge"):
                lines.append(f"- {who.replace('_', ' ')}: " + ", ".join(
                    f"{k} {_fmt(pair[who].get(k))}" for k in ("autonomy", "mean_abs_cte_m", "interventions")
                ))
        lines.append("")
    lines += ["![candidate vs current](compare.png)", ""]
    lines += [f"![{name}]({name}.png)" for name in results.get("plots", [])]
    return "\n".join(lines)


def write_report(
    store: Store, run_id: str, results: dict[str, Any], workdir: Path, plots: dict[str, Path] | None = None
) -> str:
    """Write the run's report into the store, with ``plots`` (name -> PNG: the training
    curves, the gate's trajectories) beside it as ``runs/<run>/<name>.png``; returns the
    report's key."""
    png = plot(results, workdir / "compare.png")
    prefix = f"runs/{run_id}"
    kept = []
    for name, path in sorted((plots or {}).items()):
        if path.exists():
            store.put_file(f"{prefix}/{name}.png", path)
            kept.append(name)
    results["plots"] = kept
    store.put(f"{prefix}/report.md", markdown(results).encode())
    store.put_file(f"{prefix}/compare.png", png)
    store.put(f"{prefix}/summary.json", json.dumps(results, indent=1, default=str).encode())
    return f"{prefix}/report.md"
