"""``make bench``: symgrad's performance report (issue 6).

1. Installs the optional contenders into this interpreter's environment if they are
   missing (torch 2.13.0 CPU, jax + jaxlib, scikit-learn); ``--no-install`` skips that.
2. ``symgrad derive`` / ``symgrad generate`` wall time (benchmarks/derive_bench.py).
3. One epoch of mini-batch SGD on W1, W2, W3 and W6 (batchnorm and a residual skip,
   issue 11) for every contender, paired and interleaved (benchmarks/training_bench.py):
   median s/epoch, min–max, ratio to the GEMM floor and to the hand-written numpy reference.
   With the generated module available, a per-statement profile of its epoch
   (benchmarks/profile_generated.py): where the time beyond the matmuls goes.
4. Gradient-check cost: the generated module's full central-difference check of the
   digits network, and ``symgrad check --method directional`` on W1's network.
5. The goal ratios of issues 6, 11 and 12 for the generated module, checked against this
   run (W6: JAX's ratio stated beside them; W5: PyTorch eager's).
6. W4 and W5 (issue 12, benchmarks/conv_bench.py): the digits CNN and a CIFAR-sized one,
   7 repetitions by default, and a trajectory check: the epoch-1 losses of every
   implementation from the same initial parameters over the same batches.

Second-order training (issue 15, benchmarks/second_order.py), last: loss against time and
passes for SGD, Adam, L-BFGS and Newton-CG, its plot, and the cost of one hvp against
torch.func's (``--no-second-order`` skips it; so do --quick and --tiny).

Results are also written as JSON (benchmarks/results/latest.json by default).

Usage: ``python benchmarks/run.py [--full] [--quick] [--no-install] [--reps 5]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, as a script

import backend_bench as bb  # noqa: E402
import conv_bench as cb  # noqa: E402
import derive_bench  # noqa: E402
import numpy as np  # noqa: E402
import second_order  # noqa: E402
import training_bench as tb  # noqa: E402
from bench_common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    fmt_ratio,
    fmt_seconds,
    format_table,
    has_module,
    symgrad_env,
)
from profile_generated import format_profile, profile_generated  # noqa: E402

# module to import → what to pip install. torch: exactly this pin (a CPU build is on
# disk here; another version would pull a multi-GB CUDA build).
OPTIONAL = (
    ("torch", ["torch==2.13.0"]),
    ("jax", ["jax", "jaxlib"]),
    ("sklearn", ["scikit-learn"]),
)
CONTENDER_GROUPS = {
    "numpy": (tb.FLOOR, tb.HAND),
    "kernels": (cb.KERNELS,),  # W4/W5: the network on the generated modules' conv kernels
    "generated": ("generated f32", "generated f64"),
    "torch": ("PyTorch eager",),
    "jax": ("JAX jit step", "JAX jit scan"),
    "sklearn": ("scikit-learn",),
    "backends": bb.CONTENDERS,  # issue 16: the torch backend, the Array API design it beat
}
GEN = "generated f32"
# The goals for the generated module (float32, SGD), per workload (W1–W3 issue 6's, W6
# issue 11's, W4/W5 issue 12's): the ratio to the GEMM floor it must not exceed (None:
# none), and the contenders it must beat.
GOALS = {
    "W1": (1.45, (tb.HAND, "PyTorch eager", "JAX jit step")),
    "W2": (3.0, (tb.HAND, "PyTorch eager")),
    "W3": (1.30, (tb.HAND,)),
    "W4": (None, (tb.HAND, "PyTorch eager", "JAX jit step")),
    "W5": (2.5, (tb.HAND, "JAX jit step")),
    "W6": (1.5, (tb.HAND, "PyTorch eager")),
}
# Contenders whose ratio to the generated module is stated beside the goals, no goal.
STATED = {"W5": ("PyTorch eager",), "W6": ("JAX jit step",)}
# W4/W5: the same goals are also stated for the network on the conv kernels alone (what
# the generated module can reach), marked "info".
KERNEL_GOALS = ("W4", "W5")
DEFAULT_WORKLOADS = "W1,W2,W3,W4,W5,W6"
CONV_REPS = 7  # W4/W5: medians of 7 paired repetitions (issue 12)


def ensure_contenders(install: bool, log) -> list[str]:
    """pip-install missing optional contenders into this interpreter's environment."""
    notes = []
    for module, packages in OPTIONAL:
        if has_module(module):
            continue
        if not install:
            notes.append(f"{module}: not installed (--no-install)")
            continue
        log(f"installing {' '.join(packages)} …")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *packages],
            capture_output=True, text=True, check=False,
        )
        importlib.invalidate_caches()
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            notes.append(f"{module}: pip install {' '.join(packages)} failed: {last[:200]}")
        else:
            notes.append(f"{module}: installed {' '.join(packages)}")
    return notes


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_at_start": os.getloadavg(),
    }
    for module in ("torch", "jax", "sklearn", "sympy"):
        if has_module(module):
            try:
                from importlib.metadata import version

                info[module] = version({"sklearn": "scikit-learn"}.get(module, module))
            except Exception:  # metadata missing: not important for a benchmark
                info[module] = "?"
    if has_module("threadpoolctl"):
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "architecture", "version")}
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=False).stdout.strip()
        info["git"] = sha or None
    except OSError:
        info["git"] = None
    return info


def _fmt_load(load: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in load) + " (1, 5, 15 min)"


def format_meta(meta: dict[str, Any]) -> str:
    blas = ", ".join(
        f"{b['internal_api']} {b['architecture']} {b['num_threads']} threads"
        for b in meta.get("blas", [])
    )
    parts = [f"python {meta['python']}", f"numpy {meta['numpy']}" + (f" ({blas})" if blas else "")]
    parts += [f"{m} {meta[m]}" for m in ("torch", "jax", "sklearn") if m in meta]
    return (f"symgrad benchmarks, {meta['time']}, git {meta.get('git')}, {meta['cpus']} cpus; "
            + "; ".join(parts))


# --------------------------------------------------------------------------
# Gradient-check cost
# --------------------------------------------------------------------------


def gradcheck_digits(workdir: Path) -> list[dict[str, Any]]:
    """The digits network (64-32-10 tanh, float64, the 1,437 training samples): time the
    generated module's own ``check_gradients``, and a full central-difference check of
    every parameter entry against the module's ``loss_and_grad``."""
    names = (
        "generated check_gradients, digits 64-32-10 tanh",
        "full central differences, digits 64-32-10 tanh (every entry)",
    )
    w = tb.make_workloads()["W2"]
    ctx = tb.Context(w, tb.make_data(w), workdir)
    try:
        mod = tb.generated_module(ctx)
    except tb.Skipped as e:
        return [{"check": n, "status": f"skipped: {e}"} for n in names]
    from symgrad.datasets import digits_split

    d = digits_split(np.float64)
    X, Y = d["X_train"], d["Y_train"]
    params = mod.init_params(seed=0, dtype=np.float64)
    n_params = sum(int(p.size) for p in params.values())
    out = []
    if hasattr(mod, "check_gradients"):
        t0 = time.perf_counter()
        errors = mod.check_gradients(params, X, Y)
        dt = time.perf_counter() - t0
        out.append({"check": names[0], "seconds": dt, "parameters": n_params,
                    "max_rel_error": max(float(v) for v in errors.values()),
                    "status": "the module's own choice of entries"})
    else:
        out.append({"check": names[0], "status": "skipped: the module has no check_gradients"})
    t0 = time.perf_counter()
    worst = full_central_difference(mod, params, X, Y)
    out.append({"check": names[1], "seconds": time.perf_counter() - t0,
                "parameters": n_params, "samples": len(X), "max_rel_error": worst})
    return out


def full_central_difference(mod, params: dict[str, np.ndarray], X, Y) -> float:
    """Central differences of ``mod.loss`` for every entry of every parameter, compared
    with ``mod.loss_and_grad``; the largest |a − n| / max(|a|, |n|, 1e-12)."""
    _, grads = mod.loss_and_grad(params, X, Y)
    worst = 0.0
    for name, p in params.items():
        flat, g = p.reshape(-1), grads[name].reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            h = 1e-5 * max(1.0, abs(old))
            flat[i] = old + h
            f_plus = mod.loss(params, X, Y)
            flat[i] = old - h
            f_minus = mod.loss(params, X, Y)
            flat[i] = old
            num = (f_plus - f_minus) / (2 * h)
            worst = max(worst, abs(g[i] - num) / max(abs(g[i]), abs(num), 1e-12))
    return float(worst)


def gradcheck_directional(workdir: Path) -> dict[str, Any]:
    """Whole-process time of ``symgrad check W1.toml --method directional``."""
    w = tb.make_workloads()["W1"]
    name = f"directional, W1 {'-'.join(map(str, w.sizes))} (symgrad check, whole process)"
    if not has_module("symgrad.check"):
        return {"check": name, "status": "skipped: symgrad check does not exist yet"}
    spec = workdir / "w1_check.toml"
    spec.write_text(w.toml(), encoding="utf-8")
    cmd = [sys.executable, "-m", "symgrad", "check", str(spec), "--method", "directional"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=symgrad_env(), capture_output=True, text=True,
                          check=False)
    dt = time.perf_counter() - t0
    out = (proc.stdout + proc.stderr).strip().splitlines()
    entry = {"check": name, "seconds": dt, "exit_code": proc.returncode,
             "parameters": sum(a * b + b for a, b in zip(w.sizes, w.sizes[1:], strict=False))}
    errors = [float(m[1]) for line in out if (m := _PARAM_ROW.match(line))]
    if errors:
        entry["max_rel_error"] = max(errors)
    if out:
        entry["summary"] = out[-1]
    if proc.returncode not in (0, 1):
        entry["status"] = f"failed (exit {proc.returncode}): {out[-1] if out else ''}"[:200]
    return entry


# a parameter row of `symgrad check`'s table: name, (shape), max rel. error, ...
_PARAM_ROW = re.compile(r"^[Wb]\d+\s+\([^)]*\)\s+([0-9.]+(?:e[+-]?\d+)?)\b")


def format_gradchecks(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        if "status" in r and "seconds" not in r:
            table.append([r["check"], "-", "-", "-", r["status"][:80]])
            continue
        err = r.get("max_rel_error")
        verdict = r.get("status", "")
        if "exit_code" in r and not verdict:
            verdict = "pass" if r["exit_code"] == 0 else f"exit {r['exit_code']}"
        table.append([
            r["check"], fmt_seconds(r["seconds"]), f"{r.get('parameters', 0):,}",
            "-" if err is None else f"{err:.1e}", verdict,
        ])
    return "Gradient-check cost\n" + format_table(
        ["check", "wall time", "parameters", "max rel. error", "note"], table
    )


# --------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------


def evaluate_goals(workloads: list[dict[str, Any]], contender: str = GEN,
                   label: str = "generated") -> list[dict[str, Any]]:
    """The goals of issues 6, 11 and 12 for the generated module (float32), checked on this
    run. ``contender``/``label``: the same goals for another row (stated as "info")."""
    goals = []
    info = contender != GEN

    def goal(key, text, ok, value):
        if info:
            text = f"{label}: {text}"
            value = value if ok is None else f"{value} ({'met' if ok else 'missed'})"
            ok = "info"
        goals.append({"workload": key, "goal": text, "ok": ok, "value": value})

    def paired(gen, r):
        return statistics.median(g / t for g, t in zip(gen["times"], r["times"], strict=True))

    for res in workloads:
        key = res["workload"]
        if key not in GOALS or (info and key not in KERNEL_GOALS):
            continue
        limit, rivals = GOALS[key]
        rows = {r["contender"]: r for r in res["rows"]}
        gen = rows.get(contender, {})
        floor_goal = "beside the GEMM floor (no goal)" if limit is None else f"≤ {limit}× GEMM floor"
        if "median" not in gen:
            goal(key, floor_goal, None, gen.get("status", "not measured"))
            continue
        if limit is None:
            goals.append({"workload": key, "goal": (f"{label}: " if info else "") + floor_goal,
                          "ok": "info", "value": fmt_ratio(gen["ratio_floor"])})
        else:
            goal(key, floor_goal, gen["ratio_floor"] <= limit, fmt_ratio(gen["ratio_floor"]))
        for rival in rivals:
            r = rows.get(rival, {})
            if "times" not in r or len(r["times"]) != len(gen["times"]):
                goal(key, f"faster than {rival}", None, r.get("status", "not measured"))
                continue
            ratio = paired(gen, r)
            goal(key, f"faster than {rival}", ratio < 1, f"{label}/{rival} = {ratio:.2f}")
        for rival in STATED.get(key, ()):
            r = rows.get(rival, {})
            if "times" not in r or len(r["times"]) != len(gen["times"]):
                value = r.get("status", "not measured")
            else:
                value = f"{label}/{rival} = {paired(gen, r):.2f}"
            goals.append({"workload": key, "goal": (f"{label}: " if info else "")
                          + f"beside {rival} (no goal)", "ok": "info", "value": value})
    return goals


def format_goals(goals: list[dict[str, Any]]) -> str:
    lines = ["Goals for the generated module (float32, SGD; W1–W3 issue 6, W4–W5 issue 12, "
             "W6 issue 11), this run:"]
    for g in goals:
        mark = {True: "ok", False: "MISSED", None: "n/a", "info": "info"}[g["ok"]]
        lines.append(f"  [{mark:6s}] {g['workload']}: {g['goal']}: {g['value']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="W1 with N=60,000 and W3 with 20,000")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small N, 2 repetitions, 1 derive run, no gradient checks")
    ap.add_argument("--no-install", action="store_true", help="do not pip-install contenders")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions (default 5, W4/W5 7, quick 2)")
    ap.add_argument("--workloads", default=None,
                    help=f"comma-separated subset (default {DEFAULT_WORKLOADS}; with --tiny: "
                         "T, T4, T5, T6)")
    ap.add_argument("--contenders", default=",".join(CONTENDER_GROUPS),
                    help=f"comma-separated subset of {', '.join(CONTENDER_GROUPS)}")
    ap.add_argument("--no-derive", action="store_true", help="skip the derive/generate table")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the per-statement profile of the generated module")
    ap.add_argument("--no-gradcheck", action="store_true", help="skip the gradient-check cost")
    ap.add_argument("--no-second-order", action="store_true",
                    help="skip the second-order training and hvp cost (second_order.py)")
    ap.add_argument("--no-trajectory", action="store_true",
                    help="W4/W5: skip the epoch-1 loss comparison of the implementations")
    ap.add_argument("--pause", type=float, default=tb.PAUSE_S,
                    help="seconds of sleep before each timed epoch (idle thread pools)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit numpy BLAS, torch (and XLA when 1) to this many threads")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny workloads (for tests): T a dense chain (default), T4/T5 W4's "
                         "and W5's shapes, T6 W6's")
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reps = args.reps or (2 if args.quick else 5)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def emit(text: str) -> None:
        print(text + "\n", flush=True)

    results: dict[str, Any] = {"install": ensure_contenders(not args.no_install, log)}
    results["meta"] = machine_info()
    results["meta"].update(full=args.full, quick=args.quick, reps=reps)
    for note in results["install"]:
        log(note)
    emit(format_meta(results["meta"]))
    emit(f"load average at start: {_fmt_load(os.getloadavg())}")
    load = os.getloadavg()[0]
    if load > 0.5:
        emit(f"warning: load average {load:.1f} at start — other processes share the "
             f"{os.cpu_count()} cores; multi-threaded BLAS timings are unreliable")
    if args.threads:
        results["meta"]["threads"] = tb.limit_threads(args.threads)
        log(results["meta"]["threads"])

    if not args.no_derive:
        cases = derive_bench.default_cases(args.quick)
        res = derive_bench.run(1 if args.quick else 5, cases, generate=True,
                               profile="never" if args.quick else "on-miss", log=log)
        results["derive"] = res
        emit(res["table"])

    contenders: tuple[str, ...] = ()
    for group in args.contenders.split(","):
        if group.strip() not in CONTENDER_GROUPS:
            raise SystemExit(f"unknown contender group {group!r}; use {', '.join(CONTENDER_GROUPS)}")
        contenders += CONTENDER_GROUPS[group.strip()]
    if tb.FLOOR not in contenders:  # every ratio is to the floor
        contenders = (tb.FLOOR, *contenders)
    if args.tiny:
        available, chosen = {**tb.tiny_workloads(), **cb.tiny_workloads()}, args.workloads or "T"
    else:
        available = {**tb.make_workloads(args.full, args.quick), **cb.make_workloads(args.quick)}
        available = {k: available[k] for k in sorted(available)}
        chosen = args.workloads or DEFAULT_WORKLOADS
    keys = [k.strip() for k in chosen.split(",")]
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise SystemExit(f"unknown workload {unknown[0]!r}; use {', '.join(available)}"
                         + ("" if args.tiny else " (T, T4, T5, T6 with --tiny)"))
    workloads = [available[k] for k in keys]

    results["workloads"] = []
    with tempfile.TemporaryDirectory(prefix="symgrad-bench-") as tmp:
        workdir = Path(tmp)
        for w in workloads:
            conv = isinstance(w, cb.ConvWorkload)
            preparers = cb.PREPARERS if conv else {**tb.PREPARERS, **bb.PREPARERS}
            # each workload's own contenders (no scikit-learn CNN, no float64 W4/W5)
            mine = tuple(c for c in contenders if c in preparers)
            w_reps = args.reps or (2 if args.quick else CONV_REPS if conv else reps)
            log(f"{w.title}: preparing {len(mine)} contenders …")
            res = tb.run_workload(w, w_reps, workdir, mine, log=log, pause=args.pause,
                                  preparers=preparers)
            res["table"] = tb.format_workload(res)
            res["load_average"] = os.getloadavg()
            results["workloads"].append(res)
            emit(res["table"] + f"\nload average after it: {_fmt_load(res['load_average'])}")
            if conv and not args.no_trajectory:
                log(f"{w.key}: trajectory check …")
                traj = cb.trajectory_check(w, tb.make_data(w), workdir, log=log,
                                           generated=GEN in mine)
                res["trajectory"] = traj
                emit(cb.format_trajectory(traj))
            gen_ok = any(r["contender"] == GEN and "median" in r for r in res["rows"])
            if gen_ok and not (conv or args.quick or args.tiny or args.no_profile):
                log(f"{w.key}: profiling the generated module's epoch …")
                prof = profile_generated(w, workdir)
                results.setdefault("profile_generated", []).append(prof)
                emit(format_profile(prof))
        if not (args.quick or args.no_gradcheck or args.tiny):
            log("gradient checks …")
            results["gradcheck"] = [*gradcheck_digits(workdir), gradcheck_directional(workdir)]
            emit(format_gradchecks(results["gradcheck"]))
        if not (args.quick or args.tiny or args.no_second_order):
            log("second-order training and the cost of hvp (second_order.py) …")
            second = second_order.run(log=log)
            results["second_order"] = {k: second[k] for k in ("budget_s", "rows", "hvp", "plot")}
            emit(second["table"])

    results["meta"]["load_average_at_end"] = os.getloadavg()
    results["goals"] = evaluate_goals(results["workloads"])
    results["goals"] += evaluate_goals(results["workloads"], cb.KERNELS, "numpy + conv kernels")
    if results["goals"]:
        emit(format_goals(results["goals"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    tmp_json.replace(args.json)
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
