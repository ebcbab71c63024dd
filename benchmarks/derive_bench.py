"""Whole-process wall time of ``symgrad derive`` and ``symgrad generate``.

Each measurement is one ``python -m symgrad derive SPEC`` subprocess, interpreter start
included, as a user would type it. Networks: depth 2, 10 and 50 (tanh hidden layers,
softmax + cross-entropy output, every width 8), and the 10-layer net with every width
×500 (4000). Runs are interleaved (round-robin over the networks, the order rotated
each round); medians of ``--runs`` rounds with min–max.

Targets (issue 2): the 10-layer net derives in < 1.5 s; ×500 widths within 20% of ×1;
cost roughly linear in depth. When a target is missed, ``--profile`` (or the automatic
profile in ``run.py``) shows where the time goes: import time per package and the
functions with the most cumulative time under cProfile.

Usage: ``python benchmarks/derive_bench.py [--runs 5] [--no-generate] [--profile]``
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import (
    ROOT,
    fmt_range,
    fmt_seconds,
    format_table,
    has_module,
    spec_toml,
    summarize,
    symgrad_env,
)

BASE_WIDTH = 8
WIDE_FACTOR = 500
DERIVE_TARGET_S = 1.5
WIDTH_TOLERANCE = 1.20
# "roughly linear": going from 10 to 50 layers costs at most twice what the per-layer
# cost from 2 to 10 layers predicts, give or take 10% of the 10-layer time (noise).
LINEAR_FACTOR = 2.0
NOISE_FRACTION = 0.10
# Time with bytecode caches (__pycache__) written and used, as on a user's machine; the
# first, untimed run of each command writes them. False: the environment as it is.
BYTECODE_CACHE = True


@dataclass(frozen=True)
class Case:
    label: str
    depth: int
    width: int

    def toml(self) -> str:
        layers = [(self.width, "tanh")] * (self.depth - 1) + [(self.width, "softmax")]
        return spec_toml(f"bench_{self.label}", self.width, layers)


def default_cases(quick: bool = False) -> list[Case]:
    w = BASE_WIDTH
    cases = [Case("depth2", 2, w), Case("depth10", 10, w)]
    if not quick:
        cases.append(Case("depth50", 50, w))
    cases.append(Case("depth10_x500", 10, w * WIDE_FACTOR))
    return cases


def write_specs(cases: list[Case], workdir: Path) -> dict[str, Path]:
    paths = {}
    for case in cases:
        path = workdir / f"{case.label}.toml"
        path.write_text(case.toml(), encoding="utf-8")
        paths[case.label] = path
    return paths


def _command(kind: str, spec: Path, workdir: Path) -> list[str]:
    if kind == "derive":
        return [sys.executable, "-m", "symgrad", "derive", str(spec)]
    out = workdir / f"gen_{spec.stem}.py"
    return [sys.executable, "-m", "symgrad", "generate", str(spec), "-o", str(out), "--force"]


def time_command(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall time and CPU time (user + system) of one subprocess. CPU time barely moves
    when other processes share the cores, so it tells load from a real slowdown."""
    env = symgrad_env(bytecode=BYTECODE_CACHE)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, proc


def time_cases(
    kind: str, cases: list[Case], specs: dict[str, Path], workdir: Path, runs: int,
    warmup: bool = True, baselines: bool = True,
) -> dict[str, dict[str, Any]]:
    """Interleaved runs of ``symgrad <kind>`` for every case; per-case summaries.
    ``baselines`` adds ``python -c pass`` and ``python -c 'import sympy'`` (derive only)."""
    times: dict[str, list[float]] = {c.label: [] for c in cases}
    cpu: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, str] = {}
    base_cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import sympy'": [sys.executable, "-c", "import sympy"],
    }
    if kind == "derive" and baselines:
        times.update({name: [] for name in base_cmds})
    labels = list(times)
    for label in labels if warmup else []:  # untimed: bytecode caches, file-system caches
        if label not in base_cmds:
            time_command(_command(kind, specs[label], workdir))
    for r in range(runs):
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:
            if label in errors:
                continue
            if label in base_cmds:
                cmd = base_cmds[label]
            else:
                cmd = _command(kind, specs[label], workdir)
            dt, dcpu, proc = time_command(cmd)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                errors[label] = f"exit {proc.returncode}: {lines[-1] if lines else ''}"
                continue
            times[label].append(dt)
            cpu[label].append(dcpu)
    by_case = {c.label: c for c in cases}
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        entry: dict[str, Any] = {}
        case = by_case.get(label)
        if case is not None:
            entry.update(depth=case.depth, width=case.width)
        if label in errors:
            entry["error"] = errors[label]
        elif times[label]:
            entry.update(summarize(times[label]))
            entry["cpu_median"] = statistics.median(cpu[label])
        out[label] = entry
    return out


def evaluate_targets(derive: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pass/miss verdicts for the three derive targets, on wall time (the target) and,
    as a cross-check on a busy machine, on CPU time."""
    targets: list[dict[str, Any]] = []
    for clock, key in (("wall", "median"), ("CPU", "cpu_median")):
        for t in _targets(derive, key):
            targets.append({**t, "clock": clock})
    return targets


def _targets(derive: dict[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    def med(label: str) -> float | None:
        return derive.get(label, {}).get(key)

    targets: list[dict[str, Any]] = []
    t2, t10, t50, twide = med("depth2"), med("depth10"), med("depth50"), med("depth10_x500")
    if t10 is not None:
        targets.append({
            "target": f"10-layer derive < {DERIVE_TARGET_S} s",
            "value": f"{t10:.2f} s",
            "ok": t10 < DERIVE_TARGET_S,
        })
    if t10 is not None and twide is not None:
        ratio = twide / t10
        targets.append({
            "target": f"×{WIDE_FACTOR} widths within {WIDTH_TOLERANCE - 1:.0%} of ×1",
            "value": f"×{WIDE_FACTOR}/×1 = {ratio:.2f}",
            "ok": ratio <= WIDTH_TOLERANCE,
            "ratio": ratio,
        })
    if t2 is not None and t10 is not None and t50 is not None:
        s_lo = (t10 - t2) / 8
        s_hi = (t50 - t10) / 40
        # extra cost 10→50 at most LINEAR_FACTOR × the linear extrapolation of 2→10,
        # plus a noise allowance
        ok = t50 - t10 <= LINEAR_FACTOR * 40 * max(s_lo, 0.0) + NOISE_FRACTION * t10
        targets.append({
            "target": "roughly linear in depth",
            "value": (
                f"{s_lo * 1e3:.1f} ms/layer (2→10), {s_hi * 1e3:.1f} ms/layer (10→50); "
                f"50/10 = {t50 / t10:.2f}, 10/2 = {t10 / t2:.2f}"
            ),
            "ok": ok,
            "per_layer_s": {"2-10": s_lo, "10-50": s_hi},
        })
    return targets


def growth(timings: dict[str, dict[str, Any]]) -> str | None:
    """×500/×1 and per-layer growth of a set of timings, as one line."""

    def med(label: str) -> float | None:
        return timings.get(label, {}).get("median")

    t2, t10, t50, twide = med("depth2"), med("depth10"), med("depth50"), med("depth10_x500")
    parts = []
    if t10 is not None and twide is not None:
        parts.append(f"×{WIDE_FACTOR}/×1 = {twide / t10:.2f}")
    if t2 is not None and t10 is not None:
        parts.append(f"{(t10 - t2) / 8 * 1e3:.1f} ms/layer (2→10)")
    if t10 is not None and t50 is not None:
        parts.append(f"{(t50 - t10) / 40 * 1e3:.1f} ms/layer (10→50), 50/10 = {t50 / t10:.2f}")
    return "; ".join(parts) or None


def format_timing_table(derive: dict[str, Any], generate: dict[str, Any] | None) -> str:
    headers = ["network", "depth", "width", "derive median", "derive min–max", "CPU"]
    if generate:
        headers += ["generate median", "generate min–max", "CPU"]
    rows = []
    for label, d in derive.items():
        row = [label, str(d.get("depth", "")), str(d.get("width", ""))]
        row += _cells(d)
        if generate:
            row += _cells(generate.get(label, {})) if "depth" in d else ["", "", ""]
        rows.append(row)
    return format_table(headers, rows)


def _cells(d: dict[str, Any]) -> list[str]:
    if "error" in d:
        return ["failed", d["error"][:60], ""]
    if "median" not in d:
        return ["-", "-", "-"]
    return [fmt_seconds(d["median"]), fmt_range(d["min"], d["max"]),
            fmt_seconds(d.get("cpu_median"))]


# --------------------------------------------------------------------------
# Profiling: where does the time of one `symgrad derive` go?
# --------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(spec: Path, top: int = 12) -> str:
    """``python -X importtime``: self time per top-level package, and which symgrad
    module pulls in each expensive third-party import."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "symgrad", "derive", str(spec)],
        cwd=ROOT, env=symgrad_env(BYTECODE_CACHE), capture_output=True, text=True,
        check=False,
    )
    entries = []  # (self_us, cum_us, depth, name) in the order printed (children first)
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            entries.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    per_pkg: dict[str, int] = defaultdict(int)
    for self_us, _, _, name in entries:
        per_pkg[name.split(".")[0]] += self_us
    total = sum(per_pkg.values())
    lines = [f"import time, total {total / 1e3:.0f} ms (self time summed per top-level package):"]
    for pkg, us in sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {pkg:28s} {us / 1e3:7.0f} ms")
    # A child is printed before its parent; the parent is the next entry with a smaller depth.
    edges = []
    for i, (_, cum, depth, name) in enumerate(entries):
        if name.startswith("symgrad"):
            continue
        parent = next((e for e in entries[i + 1:] if e[2] < depth), None)
        if parent is not None and parent[3].startswith("symgrad") and cum >= 20_000:
            edges.append((cum, name, parent[3]))
    if edges:
        lines.append("expensive third-party imports made by symgrad modules (cumulative):")
        for cum, name, parent in sorted(edges, reverse=True)[:top]:
            lines.append(f"  {name:28s} {cum / 1e3:7.0f} ms  imported by {parent}")
    return "\n".join(lines)


def cprofile_summary(spec: Path, top: int = 18) -> str:
    """cProfile of one derive run: functions by cumulative time (symgrad's own first)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "derive.prof"
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "symgrad", "derive",
             str(spec)],
            cwd=ROOT, env=symgrad_env(BYTECODE_CACHE), capture_output=True, text=True,
        check=False,
        )
        if not out.exists():
            return "cProfile: no profile written"
        stats = pstats.Stats(str(out))
    rows = []
    for (filename, lineno, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append((cumtime, tottime, ncalls, _short(filename), lineno, func))
    total = max((r[0] for r in rows), default=0.0)
    lines = [f"cProfile, {total:.2f} s in total; top functions by cumulative time:"]
    lines.append(f"  {'cumulative':>10} {'own':>8} {'calls':>8}  function")
    interesting = [r for r in rows if "symgrad" in r[3] or "sympy" in r[3]]
    for cum, tot, ncalls, filename, lineno, func in sorted(interesting, reverse=True)[:top]:
        lines.append(f"  {cum:9.3f}s {tot:7.3f}s {ncalls:8d}  {filename}:{lineno}({func})")
    lazy = run_time_imports(stats)
    if lazy:
        lines.append("imports made at run time (an import statement inside a function):")
        for ct, (filename, lineno, func) in lazy[: top // 3]:
            lines.append(f"  {ct:9.3f}s  in {_short(filename)}:{lineno}({func})")
    lines.append("top functions by own time:")
    for cum, tot, ncalls, filename, lineno, func in sorted(
        rows, key=lambda r: -r[1]
    )[: top // 2]:
        lines.append(f"  {cum:9.3f}s {tot:7.3f}s {ncalls:8d}  {filename}:{lineno}({func})")
    return "\n".join(lines)


def run_time_imports(stats: pstats.Stats) -> list[tuple[float, tuple[str, int, str]]]:
    """Functions that import a module while running (not at module level), with the
    cumulative time those imports took, largest first."""
    per_caller: dict[tuple[str, int, str], float] = defaultdict(float)
    for (filename, _, func), entry in stats.stats.items():
        if "importlib._bootstrap" not in filename or func not in (
            "_find_and_load", "_handle_fromlist"
        ):
            continue
        for caller, (_, _, _, ct) in entry[4].items():
            if caller[0].startswith("<frozen") or caller[0] == "~" or caller[2] == "<module>":
                continue
            per_caller[caller] += ct
    return sorted(((ct, c) for c, ct in per_caller.items() if ct >= 0.01), reverse=True)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def profile_derive(spec: Path) -> str:
    return import_profile(spec) + "\n" + cprofile_summary(spec)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def run(
    runs: int = 5,
    cases: list[Case] | None = None,
    generate: bool = True,
    profile: str = "on-miss",
    log=print,
    warmup: bool = True,
    baselines: bool = True,
) -> dict[str, Any]:
    """Time derive (and generate) for ``cases``; return a JSON-able result with a
    ``table`` (text) entry. ``profile``: "always", "on-miss" or "never"; ``warmup``: one
    untimed run per command first; ``baselines``: also time bare interpreter start and
    ``import sympy``."""
    cases = cases if cases is not None else default_cases()
    result: dict[str, Any] = {"runs": runs, "python": sys.executable, "notes": []}
    if BYTECODE_CACHE:
        result["notes"].append(
            ("after one untimed run per command; " if warmup else "")
            + "bytecode caches on (PYTHONDONTWRITEBYTECODE unset for these runs)"
        )
    with tempfile.TemporaryDirectory(prefix="symgrad-derive-bench-") as tmp:
        workdir = Path(tmp)
        specs = write_specs(cases, workdir)
        log(f"derive: {len(cases)} networks × {runs} runs (whole process) …")
        result["derive"] = time_cases("derive", cases, specs, workdir, runs, warmup, baselines)
        gen = None
        if not generate:
            result["notes"].append("generate: not timed (disabled)")
        elif not has_module("symgrad.codegen"):
            result["notes"].append("generate: skipped, symgrad.codegen does not exist yet")
        else:
            log(f"generate: {len(cases)} networks × {runs} runs …")
            gen = time_cases("generate", cases, specs, workdir, runs, warmup)
            result["generate"] = gen
        result["targets"] = evaluate_targets(result["derive"])
        missed = [t for t in result["targets"] if not t["ok"] and t["clock"] == "wall"]
        if profile == "always" or (profile == "on-miss" and missed):
            label = "depth50" if "depth50" in specs else "depth10"
            if missed and all("×" in t["target"] for t in missed) and "depth10_x500" in specs:
                label = "depth10_x500"
            log(f"profiling derive of {label} …")
            result["profile"] = {"network": label, "text": profile_derive(specs[label])}
    result["table"] = format_report(result)
    return result


def format_report(result: dict[str, Any]) -> str:
    parts = [
        f"symgrad derive / generate, whole process: wall time, median of {result['runs']} "
        "interleaved runs (CPU: median user+system time of the same runs)",
        format_timing_table(result["derive"], result.get("generate")),
    ]
    parts += [f"note: {n}" for n in result.get("notes", [])]
    if result.get("targets"):
        parts.append("targets:")
        for t in result["targets"]:
            mark = "ok" if t["ok"] else "MISSED"
            parts.append(f"  [{mark}] {t['target']} ({t['clock']}): {t['value']}")
    if result.get("generate") and growth(result["generate"]):
        parts.append(f"generate growth: {growth(result['generate'])}")
    if "profile" in result:
        parts.append(f"profile of `symgrad derive` ({result['profile']['network']}):")
        parts.append(result["profile"]["text"])
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip depth 50, 1 run")
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--profile", choices=("always", "on-miss", "never"), default="on-miss")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE as the environment has it")
    args = ap.parse_args(argv)
    global BYTECODE_CACHE
    BYTECODE_CACHE = not args.no_bytecode_cache
    runs = 1 if args.quick else args.runs
    res = run(runs, default_cases(args.quick), not args.no_generate, args.profile,
              log=lambda m: print(m, file=sys.stderr))
    print(res["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
