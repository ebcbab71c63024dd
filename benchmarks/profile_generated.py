"""Where does an epoch of a generated module's ``train()`` spend its time?

Every simple statement (assignment, augmented assignment, expression) inside the
module's functions is wrapped with a timer, by rewriting the module's syntax tree; time
is exclusive (a statement that calls another instrumented function is not charged for
that function's statements). Each statement is labelled with the formula comment above
it, so the table reads like the generated code. Times are per epoch and also "per 1 s
of matrix multiplication", the unit of DESIGN's notes.

The timers cost some 0.1–0.5 µs per statement executed; that cost is measured on a
trivial statement and subtracted, from each statement's time and from the untimed rest
(loop, calls, control flow: instrumented epoch − timers − statements).

Usage: ``python benchmarks/profile_generated.py W1 [--threads 1] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import tempfile
import time
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import training_bench as tb
from bench_common import fmt_seconds, format_table

SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)


class _Instrument(ast.NodeTransformer):
    """Wrap the simple statements of every function in exclusive timers."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines()
        self.sites: dict[int, dict[str, Any]] = {}
        self.func = "<module>"

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        outer, self.func = self.func, node.name
        node.body = self._block(node.body)
        self.func = outer
        return node

    def _block(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef):
                out.append(self.visit_FunctionDef(stmt))
            elif isinstance(stmt, SIMPLE) and not _is_docstring(stmt):
                out.extend(self._wrap(stmt))
            else:
                for attr in ("body", "orelse", "finalbody"):
                    if isinstance(getattr(stmt, attr, None), list):
                        setattr(stmt, attr, self._block(getattr(stmt, attr)))
                for handler in getattr(stmt, "handlers", []):
                    handler.body = self._block(handler.body)
                out.append(stmt)
        return out

    def _wrap(self, stmt: ast.stmt) -> list[ast.stmt]:
        site = len(self.sites)
        text = " ".join(
            line.strip() for line in self.lines[stmt.lineno - 1: stmt.end_lineno]
        )
        self.sites[site] = {
            "function": self.func,
            "line": stmt.lineno,
            "code": text,
            "formula": self._formula(stmt.lineno),
        }
        before = ast.parse("_t0 = _pc()\n_stack.append(0.0)").body
        # A statement's own time excludes its instrumented callees; the parent is
        # charged the callee's time including the bookkeeping, so the timers' own cost
        # lands in no statement.
        after = ast.parse(
            f"_acc[{site}] += _pc() - _t0 - _stack.pop()\n"
            f"_n[{site}] += 1\n"
            "if _stack:\n    _stack[-1] += _pc() - _t0"
        ).body
        return [*before, stmt, *after]

    def _formula(self, lineno: int) -> str:
        """The nearest comment above the statement, within the same block of code."""
        for i in range(lineno - 2, max(lineno - 12, -1), -1):
            line = self.lines[i].strip()
            if line.startswith("#"):
                return line.lstrip("# ").strip()
            if not line or line.startswith(("def ", "for ", "with ", "if ", "return")):
                break
        return ""


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def instrument_source(source: str, filename: str, name: str):
    """(module, sites, acc, n): the instrumented module, the statements, and the
    accumulated own time and execution count per statement."""
    tool = _Instrument(source)
    tree = ast.fix_missing_locations(tool.visit(ast.parse(source)))
    mod = types.ModuleType(name)
    acc: dict[int, float] = defaultdict(float)
    n: dict[int, int] = defaultdict(int)
    mod.__dict__.update(_pc=time.perf_counter, _acc=acc, _n=n, _stack=[], __file__=filename)
    exec(compile(tree, filename, "exec"), mod.__dict__)  # our own generated file
    return mod, tool.sites, acc, n


_CALIBRATION = """
def run(k):
    for _ in range(k):
        x = 0
"""


def timer_cost(k: int = 20_000) -> tuple[float, float]:
    """(inside, total): seconds per instrumented statement that the timers add to the
    statement's own time, and to the wall time, measured on a trivial statement."""
    plain = types.ModuleType("_calibration_plain")
    exec(compile(_CALIBRATION, "<calibration>", "exec"), plain.__dict__)
    mod, _, acc, _ = instrument_source(_CALIBRATION, "<calibration>", "_calibration")
    best_in, best_total = float("inf"), float("inf")
    for _ in range(5):
        acc.clear()
        t0 = time.perf_counter()
        mod.run(k)
        t1 = time.perf_counter()
        plain.run(k)
        t2 = time.perf_counter()
        best_in = min(best_in, acc[0] / k)
        best_total = min(best_total, ((t1 - t0) - (t2 - t1)) / k)
    return best_in, max(best_total, best_in)


def category(site: dict[str, Any]) -> str:
    code = site["code"]
    if "matmul(" in code or "np.dot(" in code or " @ " in code:
        return "matmul"
    if "np.take(" in code:
        return "batch gather"
    return site["formula"] or code


def profile_generated(
    w: tb.Workload, workdir: Path, dtype=np.float32, epochs: int = 5
) -> dict[str, Any]:
    """Instrumented epochs of the generated module's train(); JSON-able result."""
    data = tb.make_data(w)
    ctx = tb.Context(w, data, workdir)
    plain = tb.generated_module(ctx)
    path = Path(plain.__file__)
    mod, sites, acc, counts = instrument_source(
        path.read_text(encoding="utf-8"), str(path), f"_instrumented_{path.stem}"
    )
    cost_in, cost_total = timer_cost()
    X, Y = data.as_dtype(dtype)

    cpu: list[float] = []

    def epoch(m, samples: list[dict[int, float]]) -> float:
        """Median epoch time; each epoch's statement times appended to samples, its
        process CPU time to cpu."""
        params = m.init_params(seed=0, dtype=dtype)
        m.train(params, X, Y, epochs=1, batch_size=w.batch_size,
                learning_rate=w.learning_rate, optimizer="sgd", verbose=False)  # warm-up
        times = []
        for _ in range(epochs):
            acc.clear()
            counts.clear()
            c0, t0 = time.process_time(), time.perf_counter()
            m.train(params, X, Y, epochs=1, batch_size=w.batch_size,
                    learning_rate=w.learning_rate, optimizer="sgd", verbose=False)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            samples.append(dict(acc))
        return statistics.median(times)

    samples: list[dict[int, float]] = []
    plain_s = epoch(plain, [])
    cpu.clear()
    total = epoch(mod, samples)
    # per statement, the median over the epochs (a preemption lands in one statement),
    # less the timers' own cost
    per_epoch = {
        k: max(statistics.median(s.get(k, 0.0) for s in samples) - counts[k] * cost_in, 0.0)
        for k in samples[0]
    }
    executed = sum(counts.values())
    untimed = total - executed * cost_total - sum(per_epoch.values())
    matmul = sum(t for k, t in per_epoch.items() if category(sites[k]) == "matmul")
    rows = []
    for k, t in sorted(per_epoch.items(), key=lambda kv: -kv[1]):
        s = sites[k]
        rows.append({**s, "category": category(s), "seconds": t})
    by_cat: dict[str, float] = defaultdict(float)
    for r in rows:
        by_cat[r["category"]] += r["seconds"]
    return {
        "workload": w.key,
        "dtype": np.dtype(dtype).name,
        "epoch_plain_s": plain_s,
        "epoch_instrumented_s": total,
        "epoch_instrumented_cpu_s": statistics.median(cpu),
        "matmul_s": matmul,
        "untimed_s": max(untimed, 0.0),
        "statements_executed": executed,
        "timer_cost_s": {"inside": cost_in, "total": cost_total},
        "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "statements": rows,
    }


def format_profile(res: dict[str, Any], top: int = 14) -> str:
    m = res["matmul_s"] or float("nan")
    head = (
        f"{res['workload']} generated {res['dtype']}: where an epoch goes "
        f"(plain {fmt_seconds(res['epoch_plain_s'])}, instrumented "
        f"{fmt_seconds(res['epoch_instrumented_s'])}, its process CPU time "
        f"{fmt_seconds(res['epoch_instrumented_cpu_s'])}; per 1 s of matmul)"
    )
    rows = []
    for cat, t in list(res["by_category"].items())[:top]:
        rows.append([cat[:70], fmt_seconds(t), f"{t / m:.2f}"])
    rows.append(["(loop, calls, control flow: the untimed rest)",
                 fmt_seconds(res["untimed_s"]),
                 f"{res['untimed_s'] / m:.2f}"])
    rest = list(res["by_category"].values())[top:]
    if rest:
        rows.append([f"({len(rest)} more)", fmt_seconds(sum(rest)), f"{sum(rest) / m:.2f}"])
    headers = ["statement (its formula; matmuls apart)", "per epoch", "per 1 s matmul"]
    return head + "\n" + format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", nargs="?", default="W1", choices=("W1", "W2", "W3", "W6"))
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--float64", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        print(tb.limit_threads(args.threads), file=sys.stderr)
    w = tb.make_workloads(args.full)[args.workload]
    with tempfile.TemporaryDirectory() as tmp:
        res = profile_generated(w, Path(tmp), np.float64 if args.float64 else np.float32,
                                args.epochs)
    print(format_profile(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
