"""Held-out accuracy on the digits over seeds: the batchnorm + dropout example beside
the dense one (issue 11).

For each spec (default: examples/digits_bn_dropout.toml and examples/digits.toml) the
module symgrad generates is trained with its own defaults (the spec's [training]) in
float32 on the fixed stratified 80/20 split of ``symgrad.datasets.digits_split()``
(X scaled by 1/16, random_state 0), once per seed 0..4: the seed draws the initial
parameters (``init_params(seed)``), the shuffling and the dropout masks
(``train(..., seed=seed)``). Accuracy is that of ``predict`` on the 360 held-out images
(inference: running statistics, no dropout). Printed per seed and as mean ± std (the
population std over the seeds, as benchmarks/sklearn_digits.py).

Usage: ``python benchmarks/layers_accuracy.py [--seeds 5] [--json PATH] [SPEC ...]``

Not a timing measurement: the training times are printed for orientation only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, as a script

import numpy as np  # noqa: E402
from bench_common import ROOT, format_table  # noqa: E402

DEFAULT_SPECS = (ROOT / "examples" / "digits_bn_dropout.toml", ROOT / "examples" / "digits.toml")
BAR = 0.972  # the dense example's held-out accuracy with seed 0 (README, the demo)


def generated(spec_path: Path, workdir: Path):
    """Generate and import the module of ``spec_path``; (module, spec)."""
    from symgrad.codegen import generate_source, load_module
    from symgrad.spec import load_spec

    spec = load_spec(spec_path)
    out = workdir / f"{spec.name}.py"
    out.write_text(generate_source(spec), encoding="utf-8")
    return load_module(out), spec


def accuracy_over_seeds(spec_path: Path, seeds, workdir: Path) -> dict[str, Any]:
    """Train the generated module of ``spec_path`` once per seed; JSON-able result."""
    from symgrad.datasets import digits_split

    mod, spec = generated(spec_path, workdir)
    d = digits_split(np.float32)
    t = spec.training
    runs = []
    for seed in seeds:
        params = mod.init_params(seed, np.float32)
        t0 = time.perf_counter()
        mod.train(params, d["X_train"], d["Y_train"], seed=seed, verbose=False)
        seconds = time.perf_counter() - t0
        correct = int(np.sum(mod.predict(params, d["X_test"]) == d["y_test"]))
        runs.append({"seed": seed, "accuracy": correct / len(d["y_test"]),
                     "correct": correct, "train_s": seconds})
    acc = [r["accuracy"] for r in runs]
    return {
        "spec": str(spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path),
        "name": spec.name,
        "training": {"optimizer": t.optimizer, "learning_rate": t.learning_rate,
                     "batch_size": t.batch_size, "epochs": t.epochs},
        "held_out": len(d["y_test"]),
        "runs": runs,
        "mean": statistics.fmean(acc),
        "std": float(np.std(acc)),
    }


def format_results(results: list[dict[str, Any]]) -> str:
    seeds = [r["seed"] for r in results[0]["runs"]]
    headers = ["spec", "training", *(f"seed {s}" for s in seeds), "mean ± std"]
    rows = []
    for res in results:
        t = res["training"]
        rows.append([
            res["spec"],
            f"{t['optimizer']} η={t['learning_rate']:g} batch {t['batch_size']}, "
            f"{t['epochs']} epochs",
            *(f"{r['accuracy']:.2%}" for r in res["runs"]),
            f"{res['mean']:.2%} ± {res['std']:.2%}",
        ])
    held_out = results[0]["held_out"]
    return (f"Held-out accuracy on the digits ({held_out} images), float32, seeds "
            f"{seeds[0]}–{seeds[-1]} (init, shuffling, dropout masks)\n"
            + format_table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*", type=Path, default=list(DEFAULT_SPECS))
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..SEEDS-1 (default 5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="symgrad-accuracy-") as tmp:
        results = [accuracy_over_seeds(p.resolve(), range(args.seeds), Path(tmp))
                   for p in args.specs]
    print(format_results(results))
    first = results[0]
    verdict = "reaches" if first["mean"] >= BAR else "misses"
    print(f"\n{first['spec']} {verdict} the dense example's {BAR:.1%}: "
          f"mean {first['mean']:.2%} over {args.seeds} seeds")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
