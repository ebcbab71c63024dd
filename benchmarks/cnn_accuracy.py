"""The digits CNN's training settings, chosen by cross-validation on the training rows
(issue 12: "trains in one command and beats the dense example", ≥ 98.5 % held-out).

examples/digits_cnn.toml (8×8×1 → conv 3×3, 16 filters, padding 1, relu → maxpool 2 →
flatten → dense 10 softmax; He-normal conv kernel, Glorot-uniform dense weights, zero
biases: the module's init_params) is generated once per l2 value and trained in float32
with each candidate setting of SETTINGS: learning rate, epochs, batch size, Adam's betas,
l2 and a learning-rate schedule ("cosine": η_t = η (1 + cos(π (t − 1)/T))/2 over the T
updates of the run, written here around the module's own Adam update since [training] has
no schedule key; a candidate, to be added to the spec only if it is chosen).

1. Cross-validation: stratified K-fold (default 5, ``StratifiedKFold(shuffle=True,
   random_state=0)``) of the 1,437 training rows of ``symgrad.datasets.digits_split()``;
   each setting is trained on K − 1 folds and scored on the remaining one, once per
   CV seed (default 0..3: init_params(seed) and train(seed=seed)). Every setting sees the
   same folds and seeds, so differences between settings are paired.
2. The setting with the highest CV mean accuracy is chosen (nothing else decides).
3. Only then, the chosen setting is trained on all training rows with seeds 0..4 and
   scored once on the 360 held-out rows (which no step above reads): mean ± population
   std over the seeds, the same statistic as benchmarks/layers_accuracy.py.

Usage: ``python benchmarks/cnn_accuracy.py [--folds 5] [--cv-seeds 4] [--seeds 5]
[--out benchmarks/results/cnn_accuracy]`` (writes OUT.txt and OUT.json); ``--smoke``: two
settings, 2 folds, 1 seed, 2 epochs (the test's run). The training times are printed for
orientation (the machine may be shared: the load average is recorded beside them).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, as a script

import numpy as np  # noqa: E402
from bench_common import RESULTS_DIR, ROOT, format_table  # noqa: E402

SPEC = ROOT / "examples" / "digits_cnn.toml"
GOAL = 0.985  # issue 12: the same network in PyTorch, 98.50 % ± 0.58 % over 5 seeds
DENSE = 0.9739  # examples/digits.toml over seeds 0–4 (README, layers_accuracy.py)

# The candidates (a user would accept any of them): the keys of train() plus l2 (the
# spec's [regularization]) and schedule. Missing keys take BASE's values.
BASE = {"learning_rate": 0.01, "epochs": 45, "batch_size": 32, "beta1": 0.9,
        "beta2": 0.999, "l2": 0.0, "schedule": "constant"}
# Drawn up in two rounds, both on the CV figures alone: the first 27 (η up to 0.03, the others
# around the example's 0.01 and 0.02), then, as η = 0.03 led at the edge of that grid, larger
# and intermediate η and the other keys around 0.03. Then one run of all of them, reported.
SETTINGS: list[dict[str, Any]] = [
    *({"learning_rate": lr, "epochs": ep}
      for lr in (0.005, 0.01, 0.02, 0.03) for ep in (30, 45, 60)),
    *({"learning_rate": lr, "batch_size": bs} for lr in (0.01, 0.02) for bs in (16, 64)),
    *({"learning_rate": lr, "beta2": 0.99} for lr in (0.01, 0.02)),
    *({"learning_rate": lr, "l2": l2} for lr in (0.01, 0.02) for l2 in (1e-4, 1e-3)),
    *({"learning_rate": lr, "schedule": "cosine"} for lr in (0.01, 0.02, 0.03)),
    {"learning_rate": 0.02, "epochs": 60, "schedule": "cosine"},
    # the second round
    *({"learning_rate": lr, "epochs": ep}
      for lr in (0.025, 0.035, 0.04, 0.05, 0.07) for ep in (30, 45, 60)),
    *({"learning_rate": 0.03, "batch_size": bs} for bs in (16, 64)),
    {"learning_rate": 0.03, "beta2": 0.99},
    {"learning_rate": 0.03, "l2": 1e-4},
    *({"learning_rate": lr, "schedule": "cosine"} for lr in (0.05, 0.07)),
]


def setting_of(candidate: dict[str, Any]) -> dict[str, Any]:
    unknown = set(candidate) - set(BASE)
    if unknown:
        raise ValueError(f"unknown setting keys {sorted(unknown)}")
    return {**BASE, **candidate}


def describe(s: dict[str, Any]) -> str:
    parts = [f"η={s['learning_rate']:g}", f"{s['epochs']} ep", f"batch {s['batch_size']}"]
    if (s["beta1"], s["beta2"]) != (BASE["beta1"], BASE["beta2"]):
        parts.append(f"β=({s['beta1']:g}, {s['beta2']:g})")
    if s["l2"]:
        parts.append(f"l2 {s['l2']:g}")
    if s["schedule"] != "constant":
        parts.append(s["schedule"])
    return ", ".join(parts)


@functools.cache
def _source(l2: float) -> str:
    from symgrad.codegen import generate_source
    from symgrad.spec import load_spec

    spec = load_spec(SPEC)
    return generate_source(spec if l2 == spec.l2 else dataclasses.replace(spec, l2=l2))


class Modules:
    """The generated module of the example, one per l2 value (l2 is part of the module)."""

    def __init__(self) -> None:
        from symgrad.spec import load_spec

        self.spec = load_spec(SPEC)
        self._made: dict[float, Any] = {}

    def get(self, l2: float):
        if l2 not in self._made:
            from symgrad.codegen import load_module

            self._made[l2] = load_module(_source(l2))
        return self._made[l2]


def train_and_score(mod, s: dict[str, Any], seed: int, X, Y, X_eval, y_eval) -> tuple[int, float]:
    """Train init_params(seed) on X, Y with setting s; (correct on X_eval, seconds)."""
    params = mod.init_params(seed, np.float32)
    update, slots = mod._UPDATES["adam"]
    if s["schedule"] == "cosine":
        total = s["epochs"] * -(-len(X) // s["batch_size"])

        def cosine(params, grads, new, state, t, lr, hp):
            update(params, grads, new, state, t,
                   lr * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / total)), hp)

        mod._UPDATES["adam"] = (cosine, slots)
    elif s["schedule"] != "constant":
        raise ValueError(f"unknown schedule {s['schedule']!r}")
    try:
        t0 = time.perf_counter()
        hist = mod.train(params, X, Y, optimizer="adam", learning_rate=s["learning_rate"],
                         epochs=s["epochs"], batch_size=s["batch_size"], beta1=s["beta1"],
                         beta2=s["beta2"], seed=seed, verbose=False)
        seconds = time.perf_counter() - t0
    finally:
        mod._UPDATES["adam"] = (update, slots)
    if "stopped" in hist:
        raise RuntimeError(f"{describe(s)}, seed {seed}: {hist['stopped']}")
    return int(np.sum(mod.predict(params, X_eval) == y_eval)), seconds


def cross_validate(modules: Modules, s: dict[str, Any], folds, seeds, X, Y, y) -> dict[str, Any]:
    runs = []
    for f, (tr, va) in enumerate(folds):
        for seed in seeds:
            correct, seconds = train_and_score(modules.get(s["l2"]), s, seed, X[tr], Y[tr],
                                               X[va], y[va])
            runs.append({"fold": f, "seed": seed, "accuracy": correct / len(va),
                         "train_s": seconds})
    acc = [r["accuracy"] for r in runs]
    return {"setting": s, "runs": runs, "mean": statistics.fmean(acc),
            "std": float(np.std(acc)),
            "train_s": statistics.median(r["train_s"] for r in runs)}


def held_out(modules: Modules, s: dict[str, Any], seeds, d) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        correct, seconds = train_and_score(modules.get(s["l2"]), s, seed, d["X_train"],
                                           d["Y_train"], d["X_test"], d["y_test"])
        runs.append({"seed": seed, "correct": correct, "accuracy": correct / len(d["y_test"]),
                     "train_s": seconds})
    acc = [r["accuracy"] for r in runs]
    return {"setting": s, "held_out": len(d["y_test"]), "runs": runs,
            "mean": statistics.fmean(acc), "std": float(np.std(acc)),
            "train_s": statistics.median(r["train_s"] for r in runs)}


def example_setting(spec) -> dict[str, Any]:
    """The setting examples/digits_cnn.toml trains with (schedule: constant, no key)."""
    t = spec.training
    return {"learning_rate": t.learning_rate, "epochs": t.epochs, "batch_size": t.batch_size,
            "beta1": t.beta1, "beta2": t.beta2, "l2": spec.l2,
            "schedule": getattr(t, "lr_schedule", "constant")}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(cv: list[dict[str, Any]], chosen: dict[str, Any], test: dict[str, Any],
           meta: dict[str, Any]) -> str:
    base = next((c for c in cv if c["setting"] == meta["example"]), None)
    rows = []
    for c in sorted(cv, key=lambda c: -c["mean"]):
        diff = ""
        if base is not None:
            pairs = [a["accuracy"] - b["accuracy"] for a, b in zip(c["runs"], base["runs"],
                                                                   strict=True)]
            diff = f"{statistics.fmean(pairs):+.2%}"
        rows.append([describe(c["setting"]) + (" ◀ chosen" if c is chosen else ""),
                     f"{c['mean']:.2%} ± {c['std']:.2%}", diff, f"{c['train_s']:.2f}"])
    k, seeds = meta["folds"], meta["cv_seeds"]
    out = [
        f"Digits CNN ({SPEC.relative_to(ROOT)}), float32, Adam; He-normal conv kernel, "
        "Glorot-uniform dense weights (init_params)",
        f"1. {k}-fold stratified cross-validation on the {meta['train_rows']} training rows "
        f"only, CV seeds {seeds[0]}–{seeds[-1]} ({k * len(seeds)} runs per setting, the same "
        "folds and seeds for every setting)",
        "   mean ± std over the runs; Δ: mean paired difference from "
        f"{describe(meta['example'])} (the example's setting before this study); s: median training time per run",
        format_table(["setting", "CV accuracy", "Δ", "s/run"], rows),
        "",
        f"2. chosen (highest CV mean): {describe(chosen['setting'])} — CV {chosen['mean']:.2%}",
    ]
    if test is None:
        return "\n".join(out)
    out += [
        "",
        f"3. held-out ({test['held_out']} rows, read only here), the chosen setting trained on "
        f"all {meta['train_rows']} training rows:",
        format_table(["seed", "held-out accuracy", "correct", "train s"],
                     [[str(r["seed"]), f"{r['accuracy']:.2%}",
                       f"{r['correct']}/{test['held_out']}", f"{r['train_s']:.2f}"]
                      for r in test["runs"]]),
        f"mean ± std over seeds {test['runs'][0]['seed']}–{test['runs'][-1]['seed']}: "
        f"{test['mean']:.2%} ± {test['std']:.2%} (goal ≥ {GOAL:.1%}: "
        f"{'met' if test['mean'] >= GOAL else 'missed'}; PyTorch's same network 98.50 % ± "
        f"0.58 %; the dense example {DENSE:.2%}), median {test['train_s']:.2f} s of training",
        "",
        f"load average (1, 5, 15 min): before {meta['load_before']}, after CV "
        f"{meta['load_cv']}, after held-out {meta['load_after']}; "
        f"{meta['cv_seconds']:.0f} s of cross-validation",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cv-seeds", type=int, default=4, help="CV seeds 0..N-1 (default 4)")
    ap.add_argument("--seeds", type=int, default=5, help="held-out seeds 0..N-1 (default 5)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cnn_accuracy",
                    help="writes OUT.txt and OUT.json")
    ap.add_argument("--smoke", action="store_true", help="a tiny run (the test's)")
    ap.add_argument("--cv-only", action="store_true",
                    help="steps 1 and 2 only: the held-out rows are not scored")
    args = ap.parse_args(argv)
    if args.folds < 2 or args.cv_seeds < 1 or args.seeds < 1:
        ap.error("--folds ≥ 2, --cv-seeds ≥ 1 and --seeds ≥ 1")
    from sklearn.model_selection import StratifiedKFold

    from symgrad.datasets import digits_split

    settings = [setting_of(c) for c in SETTINGS]
    if args.smoke:
        settings = [setting_of({"epochs": 2}), setting_of({"epochs": 2, "schedule": "cosine"})]
    d = digits_split(np.float32)
    X, Y, y = d["X_train"], d["Y_train"], d["y_train"]
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(X, y))
    cv_seeds = list(range(args.cv_seeds))
    modules = Modules()
    example = example_setting(modules.spec)
    meta: dict[str, Any] = {"folds": args.folds, "cv_seeds": cv_seeds, "train_rows": len(y),
                            "load_before": load(), "example": example}
    t0 = time.perf_counter()
    cv = []
    for s in settings:
        cv.append(cross_validate(modules, s, folds, cv_seeds, X, Y, y))
        print(f"CV {describe(s)}: {cv[-1]['mean']:.2%}", file=sys.stderr, flush=True)
    meta["cv_seconds"] = time.perf_counter() - t0
    meta["load_cv"] = load()
    chosen = max(cv, key=lambda c: c["mean"])  # the first of equals: SETTINGS' order
    if args.cv_only:
        print(report(cv, chosen, None, meta))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "cv": cv, "chosen": chosen["setting"]}, indent=2) + "\n",
            encoding="utf-8")
        return 0
    test = held_out(modules, chosen["setting"], range(args.seeds), d)
    meta["load_after"] = load()
    text = report(cv, chosen, test, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"meta": meta, "cv": cv, "chosen": chosen["setting"], "held_out": test},
        indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
