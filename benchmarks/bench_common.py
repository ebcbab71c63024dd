"""Shared helpers of the benchmark scripts: paths, spec writing, statistics, tables.

The scripts in ``benchmarks/`` run from a source checkout (``python benchmarks/run.py``)
as well as from an installed symgrad; this module makes ``import symgrad`` work in
both cases.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"

if importlib.util.find_spec("symgrad") is None:  # source checkout, not installed
    sys.path.insert(0, str(ROOT))


def has_module(name: str) -> bool:
    """True if ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def symgrad_env(bytecode: bool = False) -> dict[str, str]:
    """Environment for ``python -m symgrad`` subprocesses: this checkout comes first.

    ``bytecode``: let Python write ``__pycache__`` (PYTHONDONTWRITEBYTECODE removed), as
    on a user's machine; otherwise symgrad's own modules would be compiled from source on
    every run where that variable is set (as in this workplace and its CI)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def spec_toml(
    name: str,
    inputs: int,
    layers: Sequence[tuple[int, str] | dict[str, Any]],
    *,
    loss: str = "cross_entropy",
    optimizer: str = "sgd",
    learning_rate: float = 0.01,
    batch_size: int = 32,
) -> str:
    """A network spec in symgrad's TOML format (DESIGN.md, "Spec format"). A layer is
    ``(units, activation)`` (a dense layer) or the keys of its ``[[layer]]`` table
    (``{"type": "batchnorm", "activation": "relu"}``, ``{"type": "add", "inputs": [...]}``)."""
    lines = ["[network]", f'name = "{name}"', f"inputs = {inputs}", ""]
    for layer in layers:
        if not isinstance(layer, dict):
            units, activation = layer
            layer = {"units": units, "activation": activation}
        lines += ["[[layer]]", *(f"{k} = {_toml_value(v)}" for k, v in layer.items()), ""]
    lines += ["[loss]", f'kind = "{loss}"', ""]
    lines += [
        "[training]",
        f'optimizer = "{optimizer}"',
        f"learning_rate = {learning_rate!r}",
        f"batch_size = {batch_size}",
        "epochs = 1",
        "seed = 0",
        "",
    ]
    return "\n".join(lines)


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of timings (seconds)."""
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "n": len(times),
    }


def fmt_seconds(t: float | None) -> str:
    """A duration with a unit that keeps three significant digits readable."""
    if t is None:
        return "-"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} µs"


def fmt_range(lo: float, hi: float) -> str:
    return f"{fmt_seconds(lo)} – {fmt_seconds(hi)}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}×"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])
