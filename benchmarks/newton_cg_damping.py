"""Newton-CG's defaults (issue 15): initial damping, a damping floor, CG's warm start and the
curvature minibatch, judged by passes over the data and the loss, never by wall time.

The workloads are benchmarks/second_order.py's (float32): the 784-256-10 relu network on
synthetic MNIST-shaped rows and the digits 64-32-10 tanh network, both cross-entropy with
l2 = 1e-4, generated with ``optimizer = "newton_cg"``. Each variant trains from
init_params(seed=0) until its passes (history["passes"]: a loss, a gradient or a curvature
product over all rows counting one, a product over a share of the rows that share) reach the
budget; the loss over all rows after each update is train()'s val_loss with X_val = X (not
counted). A variant is a module setting of the generated module: ``damping`` (train()'s
argument: the first λ), ``_DAMPING_FLOOR`` (λ never below it), ``_CG_DECAY`` (CG starts from
that times the last direction, Martens 2010's warm start; 0: from 0) and ``_CURVATURE_SHARE``
(the products on that share of the rows, at least 256). Reported per variant: the loss at
25, 50 and the full budget of passes, and the passes to reach the target, the loss the
baseline (damping 1, no floor, no warm start, all rows) ends at. The η d/4, η d/16 retries
after a rise are in every variant (the baseline's figures are those of the code before them:
it never rose). The chosen defaults: the "(chosen)" row.

Writes benchmarks/results/newton_cg_damping.{txt,json}. Usage:
``python benchmarks/newton_cg_damping.py [--rows N] [--passes P] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, as a script

import numpy as np  # noqa: E402
from bench_common import RESULTS_DIR, format_table  # noqa: E402
from second_order import generated, networks  # noqa: E402

BASELINE = {"damping": 1.0, "floor": 0.0, "decay": 0.0, "share": 1.0}
VARIANTS: list[tuple[str, dict[str, float]]] = [
    ("baseline (before)", {}),
    ("damping 0.1", {"damping": 0.1}),
    ("damping 0.01", {"damping": 0.01}),
    ("damping 0.001", {"damping": 0.001}),
    ("floor 1e-3", {"floor": 1e-3}),
    ("damping 0.01, floor 1e-3", {"damping": 0.01, "floor": 1e-3}),
    ("warm 0.95", {"decay": 0.95}),
    ("damping 0.01, warm 0.95", {"damping": 0.01, "decay": 0.95}),
    ("curvature 1/4", {"share": 0.25}),
    ("curvature 1/10", {"share": 0.1}),
    ("damping 0.1, curvature 1/10", {"damping": 0.1, "share": 0.1}),
    ("damping 0.01, curvature 1/10", {"damping": 0.01, "share": 0.1}),
    ("damping 0.1, warm 0.95, curvature 1/10", {"damping": 0.1, "decay": 0.95, "share": 0.1}),
    ("damping 0.01, warm 0.95, curvature 1/10", {"damping": 0.01, "decay": 0.95, "share": 0.1}),
    ("damping 0.1, floor 1e-3, warm 0.95, curvature 1/10 (chosen)",
     {"damping": 0.1, "floor": 1e-3, "decay": 0.95, "share": 0.1}),
    ("damping 0.01, floor 1e-3, warm 0.95, curvature 1/10",
     {"damping": 0.01, "floor": 1e-3, "decay": 0.95, "share": 0.1}),
]
MARKS = (25, 50)  # passes at which the loss is also reported


class _Done(Exception):
    """Raised by the report function when the passes reach the budget."""


def run_variant(mod, X, Y, setting: dict[str, float], passes: float) -> dict[str, Any]:
    """Train one variant until its passes reach the budget: (passes, loss) after each update
    (train()'s report function is replaced, through mod._progress, by one that keeps the
    history and stops the run at the budget)."""
    s = {**BASELINE, **setting}
    saved = (mod._DAMPING_FLOOR, mod._CG_DECAY, mod._CURVATURE_SHARE, mod._progress)
    mod._DAMPING_FLOOR, mod._CG_DECAY, mod._CURVATURE_SHARE = s["floor"], s["decay"], s["share"]
    seen: dict[str, Any] = {}

    def report(epoch, history):
        seen["history"] = history
        if history["passes"][-1] >= passes:
            raise _Done

    mod._progress = lambda progress, verbose, epochs: (report, lambda: None)
    params = mod.init_params(seed=0, dtype=X.dtype)
    first = float(mod.loss(params, X, Y))
    try:
        history = mod.train(params, X, Y, optimizer="newton_cg", epochs=10**6,
                            damping=s["damping"], X_val=X, Y_val=Y)
    except _Done:
        history = seen["history"]
    finally:
        mod._DAMPING_FLOOR, mod._CG_DECAY, mod._CURVATURE_SHARE, mod._progress = saved
    points = [(0.0, first)] + [(float(p), float(v)) for p, v in
                               zip(history["passes"], history["val_loss"], strict=False)]
    return {"setting": s, "points": points, "damping": list(history["damping"]),
            "stopped": history.get("stopped", "")}


def loss_at(points, p: float) -> float:
    """The loss after the last update within p passes."""
    return min((loss for n, loss in points if n <= p), default=points[0][1])


def passes_to(points, target: float) -> float | None:
    return next((n for n, loss in points if loss <= target), None)


def study(key: str, work: dict, passes: float, log) -> dict[str, Any]:
    mod = generated(work["spec"])
    X, Y = work["X"], work["Y"]
    out = {"title": work["title"], "passes": passes, "variants": []}
    for label, setting in VARIANTS:
        log(f"  {key}: {label} …")
        res = run_variant(mod, X, Y, setting, passes)
        res["label"] = label
        out["variants"].append(res)
    return out


def format_study(res: dict) -> str:
    base = res["variants"][0]["points"]
    target = loss_at(base, res["passes"])
    rows = []
    for v in res["variants"]:
        pts = v["points"]
        reach = passes_to(pts, target)
        rows.append([v["label"], *(f"{loss_at(pts, m):.4g}" for m in (*MARKS, res["passes"])),
                     "-" if reach is None else f"{reach:.0f}",
                     str(len(pts) - 1), f"{v['damping'][-1]:.3g}" if v["damping"] else "-"])
    heads = ["variant", *(f"loss at {m} passes" for m in (*MARKS, res["passes"])),
             f"passes to {target:.4g}", "updates", "last λ"]
    return f"{res['title']}: Newton-CG variants by passes over the data\n" + format_table(
        heads, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000, help="rows of the synthetic data")
    ap.add_argument("--passes", type=float, default=120.0, help="passes per variant")
    ap.add_argument("--quick", action="store_true", help="1,000 rows, 20 passes")
    ap.add_argument("--only", choices=("mnist", "digits"), default=None)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    rows, passes = (1000, 20.0) if args.quick else (args.rows, args.passes)

    def log(m):
        print(m, file=sys.stderr, flush=True)

    results: dict[str, Any] = {"rows": rows, "passes": passes, "variants": VARIANTS,
                               "load_average_at_start": os.getloadavg(), "studies": {}}
    texts = []
    for key, work in networks(rows).items():
        if args.only and key != args.only:
            continue
        res = study(key, work, passes, log)
        results["studies"][key] = res
        texts.append(format_study(res))
    text = "\n\n".join(texts) + "\n"
    results["table"] = text
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "newton_cg_damping.txt").write_text(text, encoding="utf-8")
    (args.out / "newton_cg_damping.json").write_text(
        json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
