"""Progress bars and result printing shared by every command.

Progress bars go to stderr and switch off when stderr is not a terminal (the
contract); results are dicts that the CLI prints as a table and, with ``--json``, as
one JSON object on the last line of stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(
    iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"
) -> tqdm:
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=False,
    )


def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    """A plain aligned text table (no dependency, readable over SSH)."""
    cells = [[_fmt(c) for c in r] for r in ([header] if header else []) + rows]
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def flat_rows(result: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """A result dict as ``key value`` rows, nested dicts flattened with dots."""
    rows: list[list[Any]] = []
    for k, v in result.items():
        if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            rows.extend(flat_rows(v, f"{prefix}{k}."))
        elif isinstance(v, (dict, list)):
            continue  # big structures are for --json
        else:
            rows.append([f"{prefix}{k}", v])
    return rows
