"""check: the gradient of a generated module against differences of its own loss.

    symgrad check SPEC.toml|MODULE.py [--method central|complex|directional|taylor]
                  [--tol T] [--seed S] [--directions K]

The module is untrusted (DESIGN, "The generated module"): its ``loss_and_grad`` is compared
with numbers computed from its ``loss`` alone, never with anything it says about itself.
For a SPEC the module is generated in memory and checked the same way; its loss is also
compared with the derivation's equations evaluated numerically (``Node.numeric``), and the
complex step, where it applies, differentiates the derivation rather than the module.

Methods (float64 throughout; data, parameters and directions drawn from ``--seed``):

* ``central``: every entry θ_j, by the five-point central difference
  (L(θ − 2h) − 8 L(θ − h) + 8 L(θ + h) − L(θ + 2h)) / 12h, truncation error O(h⁴), with
  h = 10⁻³ max(1, |θ_j|).  Where that disagrees, the entry is retried with h = 10⁻⁴ … 10⁻⁶
  (a kink of relu or |·| within 2h): a smaller step is further from kinks, a larger one is
  further from rounding; the entry passes if one of them agrees.
* ``complex``: ∂L/∂θ_j = Im L(θ + i h e_j) / h with h = 10⁻³⁰: no difference of nearly
  equal numbers, so the reference is exact to rounding.  Only for analytic losses (no relu,
  |·|, huber, l1 penalty); otherwise a note and central differences for the whole check.
* ``directional``: per parameter, K random unit directions v: the central difference
  (L(θ + h v) − L(θ − h v)) / 2h, h = 10⁻⁴ (five-point, then smaller steps, where that
  disagrees) against ⟨∇L, v⟩ — about 2K loss evaluations per parameter, whatever its size.
  A direction mixes every entry: one typical entry off by 1% moves ⟨∇L, v⟩ by ~1%/√size
  (10⁻⁴ relative for a 100×100 weight), an unusually small one by less; central
  differences are the test that names a single wrong entry.
* ``taylor``: per parameter, K random unit directions v: the remainder
  r(h) = |L(θ + h v) − L(θ) − h ⟨∇L, v⟩| must fall like h² (order 2); a wrong gradient
  leaves a first-order term, r ~ h (order 1).  No step size to tune.

Relative error (DESIGN): |a − n| / max(|a|, |n|, 10⁻¹²).  An entry also agrees when
|a − n| is within the difference's own rounding error (its *resolution*, ~ 12 ε |L| / h):
an entry far smaller than its neighbours (|∂L/∂θ_j| ~ 10⁻⁸) has no meaningful relative
error at any step; it is then compared absolutely, counted in a note, and left out of the
table's maximum.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy as sp

from symgrad.cli import command
from symgrad.errors import SymgradError

__all__ = [
    "DEFAULT_TOL",
    "LOSS_TOL",
    "METHODS",
    "CheckReport",
    "Row",
    "check_module",
    "check_spec",
    "cmd_check",
]

METHODS = ("central", "complex", "directional", "taylor")
DEFAULT_TOL = {"central": 1e-6, "complex": 1e-12, "directional": 1e-6, "taylor": 1.8}
"""Max relative error per method; for taylor, the minimum observed order of the remainder."""

LOSS_TOL = 1e-10
"""Max relative difference of two evaluations of the same loss (module vs derivation)."""

EPS = float(np.finfo(np.float64).eps)
FLOOR = 1e-12  # the denominator floor of the relative error (DESIGN)
STEPS = (1e-3, 1e-4, 1e-5, 1e-6)  # central: the first one used unless it disagrees
DIRECTIONAL_STEPS = STEPS[1:]  # a step along v moves a whole layer's pre-activations
COMPLEX_STEP = 1e-30
ULPS = 8  # rounding error of one loss evaluation, in units of ε |L|
SAMPLES = 64  # rows of random data
TAYLOR_H0 = 0.1
TAYLOR_HALVINGS = 24
TAYLOR_TAIL = 3  # orders of the smallest resolved steps that decide
MAX_PARAMS = 50_000_000
MODULE_NAMES = ("INPUTS", "OUTPUTS", "PARAM_SHAPES", "loss", "loss_and_grad")


# ==========================================================================================
# The report
# ==========================================================================================


@dataclass(frozen=True)
class Row:
    """One line of the table: a parameter (or the loss value) and its verdict.

    ``error`` is the max relative error (for ``taylor``, the smallest observed order);
    ``worst`` names the entry (``[2, 3]``) or direction (``v3``) where it occurs;
    ``detail`` shows the values there when the row fails.
    """

    name: str
    shape: tuple[int, ...]
    error: float
    worst: str
    method: str
    ok: bool
    detail: str = ""
    below_resolution: int = 0  # entries compared absolutely (see the module docstring)
    smaller_steps: int = 0  # entries that needed a smaller step than the first (kinks)

    @property
    def error_text(self) -> str:
        if self.method == "taylor":
            return "—" if math.isnan(self.error) else f"order {self.error:.2f}"
        return "nan" if math.isnan(self.error) else f"{self.error:.1e}"


@dataclass
class CheckReport:
    """The outcome of a check: ``rows`` per parameter, ``ok``, ``text()`` for people."""

    target: str
    method: str  # the method used (central after a complex-step fallback)
    requested: str  # the method asked for
    tol: float
    seed: int
    samples: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def row(self, name: str, method: str | None = None) -> Row:
        for r in self.rows:
            if r.name == name and (method is None or r.method == method):
                return r
        raise KeyError(name)

    def text(self) -> str:
        tol = f"min order {self.tol:g}" if self.method == "taylor" else f"tol {self.tol:g}"
        lines = [
            f"symgrad check {self.target}: {_METHOD_TITLES[self.method]}, {tol}, "
            f"seed {self.seed}, N = {self.samples}, float64"
        ]
        lines += [f"note: {n}" for n in self.notes]
        header = ("parameter", "shape", "max rel. error", "worst entry", "method", "result")
        cells = [
            (r.name, _shape_text(r.shape), r.error_text, r.worst, r.method,
             "pass" if r.ok else "FAIL")
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
        for c in [header, *cells]:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        for r in self.rows:
            if r.detail:
                lines.append(f"  {r.detail}")
        for r in self.rows:
            one, many = ("direction", "directions") if r.method == "directional" else ("entry", "entries")
            if r.below_resolution:
                lines.append(
                    f"note: {r.name}: "
                    + (f"1 {one} is too small for a relative comparison; it agrees"
                       if r.below_resolution == 1 else
                       f"{r.below_resolution} {many} are too small for a relative comparison; "
                       "they agree")
                    + " within the reference's rounding error (not counted in the max)"
                )
            if r.smaller_steps:
                lines.append(
                    f"note: {r.name}: {r.smaller_steps} "
                    f"{one if r.smaller_steps == 1 else many} needed a smaller step than "
                    f"the first (a kink nearby)"
                )
        if self.ok:
            lines.append(f"ok: {len(self.rows)} of {len(self.rows)} checks passed")
        else:
            names = ", ".join(dict.fromkeys(r.name for r in self.failed))
            lines.append(f"FAILED: {names} ({len(self.failed)} of {len(self.rows)} checks)")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.text()


_METHOD_TITLES = {
    "central": "central differences",
    "complex": "complex step",
    "directional": "directional derivatives",
    "taylor": "Taylor remainder test",
}


def _shape_text(shape: tuple[int, ...]) -> str:
    return "()" if not shape else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _index_text(shape: tuple[int, ...], flat: int) -> str:
    return "[" + ", ".join(map(str, np.unravel_index(flat, shape))) + "]" if shape else "[]"


# ==========================================================================================
# The problem: a loss, its claimed gradient, a point and data
# ==========================================================================================


@dataclass
class Problem:
    """What every method needs: the module's ``loss`` as a function of the parameters, the
    gradient its ``loss_and_grad`` claims at ``params`` (for data X, Y), and for the complex
    step a loss that accepts complex parameters."""

    where: str
    params: dict[str, np.ndarray]
    X: np.ndarray
    Y: np.ndarray
    loss: Callable[[dict[str, np.ndarray]], float]
    grads: dict[str, Any]  # as loss_and_grad returned them
    complex_loss: Callable[[dict[str, np.ndarray]], complex] | None = None
    rows: list[Row] = field(default_factory=list)  # the loss-value rows
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return self.X.shape[0]


def _call(where: str, what: str, fn: Callable, *args):
    """Call a function of the untrusted module; what it raises is bad input (exit 2)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - anything the module raises
        raise SymgradError(where, f"{what} raised {_exception(e)}") from None


def _exception(e: BaseException) -> str:
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return type(e).__name__ + (f": {message}" if message else "")


def _scalar(where: str, what: str, value: Any) -> float:
    try:
        v = np.asarray(value)
        if v.size != 1 or not np.issubdtype(v.dtype, np.number):
            raise TypeError
        return float(v.reshape(()).real)
    except (TypeError, ValueError):
        raise SymgradError(where, f"{what} returned {_short(value)}, not a number") from None


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= 1


def _interface(module: ModuleType, where: str) -> tuple[int, int, dict[str, tuple[int, ...]]]:
    """INPUTS, OUTPUTS and PARAM_SHAPES of an untrusted module, validated."""
    missing = [name for name in MODULE_NAMES if not hasattr(module, name)]
    if missing:
        raise SymgradError(where, f"not a symgrad module: no {', '.join(missing)}")
    for name in ("loss", "loss_and_grad"):
        if not callable(getattr(module, name)):
            raise SymgradError(where, f"not a symgrad module: {name} is not a function")
    for name in ("INPUTS", "OUTPUTS"):
        if not _positive_int(getattr(module, name)):
            raise SymgradError(where, f"not a symgrad module: {name} must be a positive integer, "
                               f"not {_short(getattr(module, name))}")
    raw = module.PARAM_SHAPES
    if not (isinstance(raw, dict) and raw and all(
        isinstance(name, str) and isinstance(shape, tuple | list) and shape
        and all(_positive_int(n) for n in shape) for name, shape in raw.items()
    )):
        raise SymgradError(where, "not a symgrad module: PARAM_SHAPES must map parameter names "
                           "to shapes (tuples of positive integers)")
    shapes = {name: tuple(int(n) for n in shape) for name, shape in raw.items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_PARAMS or module.INPUTS * SAMPLES > MAX_PARAMS:
        raise SymgradError(where, f"too large to check ({total} parameters)")
    return int(module.INPUTS), int(module.OUTPUTS), shapes


def _initial(module: ModuleType, where: str, shapes: dict[str, tuple[int, ...]], seed: int,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """init_params(seed) if the module has it, else random weights; biases moved off zero
    (a generic point, not the symmetric start)."""
    params: dict[str, np.ndarray] = {}
    init = getattr(module, "init_params", None)
    if callable(init):
        raw = _call(where, "init_params", init, seed)
        if not isinstance(raw, dict):
            raise SymgradError(where, f"init_params returned {_short(raw)}, not a dict of arrays")
        for name, shape in shapes.items():
            if name not in raw:
                raise SymgradError(where, f"init_params returned no {name}, which PARAM_SHAPES "
                                   "lists")
            try:
                value = np.array(raw[name], dtype=np.float64)
            except (TypeError, ValueError):
                raise SymgradError(where, f"init_params returned {name} = {_short(raw[name])}, "
                                   "not an array") from None
            if value.shape != shape:
                raise SymgradError(where, f"init_params returned {name} of shape "
                                   f"{_shape_text(value.shape)}; PARAM_SHAPES says "
                                   f"{_shape_text(shape)}")
            params[name] = value
    for name, shape in shapes.items():
        if name not in params:
            scale = 1 / math.sqrt(shape[0]) if len(shape) > 1 else 0.5
            params[name] = scale * rng.standard_normal(shape)
        elif len(shape) == 1 or not np.any(params[name]):
            params[name] = params[name] + 0.1 * rng.standard_normal(shape)
    return params


def _targets(kind: str, n: int, outputs: int, rng: np.random.Generator) -> np.ndarray:
    """Y for a loss: one-hot rows (cross-entropy, and modules, whose loss is unknown),
    0/1 labels (binary cross-entropy) or real targets (regression)."""
    if kind == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, outputs)).astype(np.float64)
    if kind in ("cross_entropy", "one-hot"):
        return np.eye(outputs)[rng.integers(0, outputs, size=n)]
    return rng.standard_normal((n, outputs))


def _problem(module: ModuleType, where: str, seed: int, samples: int,
             targets: str = "one-hot") -> Problem:
    """Random data and parameters (seeded) and the module's claims there."""
    inputs, outputs, shapes = _interface(module, where)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, inputs))
    Y = _targets(targets, samples, outputs, rng)
    params = _initial(module, where, shapes, seed, rng)

    def copies(p: dict[str, np.ndarray]) -> tuple:
        # a module that writes into its arguments cannot disturb the check
        return {k: v.copy() for k, v in p.items()}, X.copy(), Y.copy()

    def loss(p: dict[str, np.ndarray]) -> float:
        return _scalar(where, "loss", _call(where, "loss", module.loss, *copies(p)))

    out = _call(where, "loss_and_grad", module.loss_and_grad, *copies(params))
    if not (isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[1], dict)):
        raise SymgradError(where, f"loss_and_grad returned {_short(out)}, not (loss, gradients)")
    value = _scalar(where, "loss_and_grad", out[0])
    problem = Problem(where, params, X, Y, loss, dict(out[1]))
    problem.rows.append(_value_row("loss", value, loss(params), "loss()",
                                   "loss_and_grad's loss", "loss()'s"))

    def complex_loss(p: dict[str, np.ndarray]) -> complex:
        value = np.asarray(_call(where, "loss", module.loss, *copies(p)))
        if value.size != 1 or not np.iscomplexobj(value):
            raise SymgradError(where, "loss returned a real number at complex parameters")
        return complex(value.reshape(()))

    problem.complex_loss = complex_loss
    return problem


def _value_row(name: str, a: float, n: float, method: str, a_name: str, n_name: str) -> Row:
    """Two evaluations of the loss value, which must agree to LOSS_TOL."""
    rel = _rel(a, n)
    ok = bool(rel <= LOSS_TOL)
    detail = "" if ok else f"{name}: {a_name} {a:.15g} vs {n_name} {n:.15g}"
    return Row(name, (), rel, "—", method, ok, detail)


# ==========================================================================================
# Loading targets
# ==========================================================================================


def _import(path: Path) -> ModuleType:
    """Import a module file (with its directory on sys.path, as ``python MODULE.py`` has)."""
    where = str(path)
    name = f"_symgrad_checked_{path.stem}_{uuid.uuid4().hex[:8]}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise SymgradError(where, "cannot import: not a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as importlib's recipe has it (dataclasses look it up)
        directory = str(path.parent.resolve())
        sys.path.insert(0, directory)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            if directory in sys.path:
                sys.path.remove(directory)
    except SymgradError:
        raise
    except SyntaxError as e:
        raise SymgradError(where, f"cannot import: SyntaxError: {e.msg} (line {e.lineno})") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - anything the module does on import
        raise SymgradError(where, f"cannot import: {_exception(e)}") from None
    return module


def _resolve(target: str | Path) -> tuple[str, Path]:
    path = Path(target)
    where = str(target)
    if path.is_dir():
        raise SymgradError(where, "is a directory; give a spec (.toml) or a module (.py)")
    if not path.exists():
        raise SymgradError(where, "no such file")
    if path.suffix == ".py":
        return "module", path
    if path.suffix == ".toml":
        return "spec", path
    raise SymgradError(where, "not a spec (.toml) or a module (.py)")


# ==========================================================================================
# The numbers: finite differences with their resolution
# ==========================================================================================


def _rel(a: float, n: float) -> float:
    """|a − n| / max(|a|, |n|, 10⁻¹²); nan when either is not finite."""
    if not (math.isfinite(a) and math.isfinite(n)):
        return math.nan
    return abs(a - n) / max(abs(a), abs(n), FLOOR)


def _agree(a: float, n: float, tol: float, resolution: float) -> tuple[bool, bool]:
    """(a and n agree, relatively or within n's resolution; the relative test decided)."""
    if not (math.isfinite(a) and math.isfinite(n)):
        return False, False
    diff = abs(a - n)
    if diff <= tol * max(abs(a), abs(n), FLOOR):
        return True, True
    return diff <= resolution, False


@dataclass
class _Entry:
    """One compared number: the reference n, the relative error against the claim, the
    verdict, whether the relative test decided it (not the resolution) and whether it
    needed a step below STEPS[0]."""

    n: float
    rel: float
    ok: bool
    resolved: bool
    retried: bool = False


def _differentiate(f: Callable[[float], float], a: float, tol: float, scale: float,
                   steps: tuple[float, ...] = STEPS, two_point: bool = False) -> _Entry:
    """f′(0) by central differences, against the claim a.

    At each step h (× scale) the five-point difference
    (8 (f(h) − f(−h)) − (f(2h) − f(−2h))) / 12h — with ``two_point``, first the cheaper
    (f(h) − f(−h)) / 2h and the five-point one only if that disagrees; if the estimates
    disagree, the next, smaller step (a kink within 2h).  Each estimate carries its
    rounding error ULPS ε max|f| Σ|coefficients|.  The first estimate that agrees decides;
    when none does, the closest one is reported (the reading most favourable to the claim).
    """
    best: _Entry | None = None
    for i, h in enumerate(steps):
        h *= scale
        fp1, fm1 = f(h), f(-h)
        for stencil in ("two", "five") if two_point else ("five",):
            if stencil == "two":
                n = (fp1 - fm1) / (2 * h)
                resolution = ULPS * EPS * max(abs(fp1), abs(fm1)) / h
            else:
                fp2, fm2 = f(2 * h), f(-2 * h)
                n = (8 * (fp1 - fm1) - (fp2 - fm2)) / (12 * h)
                resolution = ULPS * EPS * max(abs(fp1), abs(fm1), abs(fp2), abs(fm2)) * 1.5 / h
            ok, resolved = _agree(a, n, tol, resolution)
            entry = _Entry(n, _rel(a, n), ok, resolved, i > 0)
            if ok:
                return entry
            if best is None or not abs(a - best.n) <= abs(a - n):
                best = entry
    assert best is not None
    return best


def _entry_row(name: str, shape, a: np.ndarray, entries: list[_Entry], method: str,
               a_name: str, n_name: str, label: Callable[[int], str] | None = None) -> Row:
    """One row from per-entry results: the max relative error over the entries that were
    compared relatively (or failed), where it occurs, and the values there if it fails."""
    label = label or (lambda j: _index_text(shape, j))
    counted = [j for j, e in enumerate(entries) if e.resolved or not e.ok]
    worst = max(counted, key=lambda j: (math.isnan(entries[j].rel), entries[j].rel if
                                        not math.isnan(entries[j].rel) else 0.0), default=None)
    failing = [j for j, e in enumerate(entries) if not e.ok]
    detail = ""
    if failing:
        assert worst is not None
        unit = "directions" if method == "directional" else "entries"
        more = f" ({len(failing)} {unit} fail)" if len(failing) > 1 else ""
        where = label(worst)
        where = f"{name}{where}" if where.startswith("[") else f"{name} along {where}"
        detail = (f"{where}: {a_name} {a[worst]:.10g} vs {n_name} "
                  f"{entries[worst].n:.10g}{more}")
    return Row(
        name, shape, 0.0 if worst is None else entries[worst].rel,
        "—" if worst is None else label(worst), method, not failing, detail,
        below_resolution=sum(1 for e in entries if e.ok and not e.resolved),
        smaller_steps=sum(1 for e in entries if e.ok and e.retried),
    )


def _claimed(problem: Problem, name: str, shape: tuple[int, ...],
             method: str) -> tuple[np.ndarray | None, Row | None]:
    """The module's gradient for ``name`` as a flat float64 array, or a failing row."""
    if name not in problem.grads:
        return None, Row(name, shape, math.nan, "—", method, False,
                         f"{name}: loss_and_grad returned no gradient for it")
    try:
        g = np.asarray(problem.grads[name])
        if np.iscomplexobj(g):
            g = g.real
        g = np.asarray(g, dtype=np.float64)
    except (TypeError, ValueError):
        return None, Row(name, shape, math.nan, "—", method, False,
                         f"{name}: loss_and_grad returned {_short(problem.grads[name])}, "
                         "not an array")
    if g.shape != shape:
        return None, Row(name, shape, math.nan, "—", method, False,
                         f"{name}: loss_and_grad's gradient has the shape {_shape_text(g.shape)}, "
                         f"the parameter {_shape_text(shape)}")
    return g.reshape(-1), None


# ------------------------------------------------------------------------------------------
# The methods
# ------------------------------------------------------------------------------------------


def _central(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    rows = []
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "central")
        if bad:
            rows.append(bad)
            continue
        flat = theta.reshape(-1)
        entries = []
        for j in range(flat.size):
            x = float(flat[j])

            def f(d: float, flat=flat, j=j, x=x) -> float:
                flat[j] = x + d
                try:
                    return problem.loss(problem.params)
                finally:
                    flat[j] = x

            entries.append(_differentiate(f, float(a[j]), tol, max(1.0, abs(x))))
        rows.append(_entry_row(name, theta.shape, a, entries, "central",
                               "loss_and_grad", "finite differences"))
    return rows


def _complex(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    assert problem.complex_loss is not None
    cparams = {k: v.astype(np.complex128) for k, v in problem.params.items()}
    rows = []
    for name, theta in cparams.items():
        a, bad = _claimed(problem, name, theta.shape, "complex")
        if bad:
            rows.append(bad)
            continue
        flat = theta.reshape(-1)
        n = np.empty(flat.size)
        for j in range(flat.size):
            x = flat[j]
            flat[j] = x + 1j * COMPLEX_STEP
            try:
                n[j] = problem.complex_loss(cparams).imag / COMPLEX_STEP
            finally:
                flat[j] = x
        # Im L and the module's gradient are both sums with rounding ~ ε Σ|terms|;
        # the largest entry of the parameter's gradient stands for Σ|terms|.
        resolution = 64 * EPS * float(np.max(np.abs(a), initial=0.0))
        entries = []
        for j in range(flat.size):
            ok, resolved = _agree(float(a[j]), float(n[j]), tol, resolution)
            entries.append(_Entry(float(n[j]), _rel(float(a[j]), float(n[j])), ok, resolved))
        rows.append(_entry_row(name, theta.shape, a, entries, "complex",
                               "loss_and_grad", "complex step"))
    return rows


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v)


def _along(problem: Problem, name: str, v: np.ndarray) -> Callable[[float], float]:
    theta = problem.params[name]
    base = theta.copy()

    def f(t: float) -> float:
        params = dict(problem.params)
        params[name] = base + t * v
        return problem.loss(params)

    return f


def _directional(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    rows = []
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "directional")
        if bad:
            rows.append(bad)
            continue
        entries, claims = [], []
        for _ in range(directions):
            v = _unit(rng, theta.shape)
            claim = float(a @ v.reshape(-1))
            entries.append(_differentiate(_along(problem, name, v), claim, tol, 1.0,
                                          DIRECTIONAL_STEPS, two_point=True))
            claims.append(claim)
        rows.append(_entry_row(name, theta.shape, np.array(claims), entries, "directional",
                               "⟨loss_and_grad, v⟩", "finite differences",
                               label=lambda k: f"v{k + 1}"))
    return rows


def _taylor(problem: Problem, tol: float, rng, directions: int) -> list[Row]:
    L0 = problem.loss(problem.params)
    floor = 1e3 * ULPS * EPS * max(abs(L0), 1e-300)  # remainders below this are rounding
    rows = []
    for name, theta in problem.params.items():
        a, bad = _claimed(problem, name, theta.shape, "taylor")
        if bad:
            rows.append(bad)
            continue
        worst_order, worst_k, linear = math.inf, 0, 0
        trace = ""
        for k in range(directions):
            v = _unit(rng, theta.shape)
            claim = float(a @ v.reshape(-1))
            f = _along(problem, name, v)
            order, text = _observed_order(f, L0, claim, floor)
            if math.isnan(order):
                linear += 1
                continue
            if order < worst_order:
                worst_order, worst_k, trace = order, k, text
        if math.isinf(worst_order):  # linear along every direction
            worst_order = math.nan
        ok = math.isnan(worst_order) or worst_order >= tol
        rows.append(Row(name, theta.shape, worst_order, f"v{worst_k + 1}", "taylor", ok,
                        "" if ok else f"{name} along v{worst_k + 1}: {trace}"))
        if linear:
            problem.notes.append(
                f"{name}: along {linear} of {directions} directions the remainder is at "
                "rounding level for every step (the loss is linear there); nothing to fit"
            )
    return rows


def _observed_order(f: Callable[[float], float], L0: float, claim: float,
                    floor: float) -> tuple[float, str]:
    """The order p of r(h) = |f(h) − f(0) − h claim| ~ hᵖ over the smallest steps whose
    remainder is above rounding; nan when no remainder is."""
    hs, rs = [], []
    h = TAYLOR_H0
    below = 0
    for _ in range(TAYLOR_HALVINGS + 1):
        r = abs(f(h) - L0 - h * claim)  # nan or inf (a large step overflowing) never pairs
        hs.append(h)
        rs.append(r)
        below = below + 1 if r < floor else 0
        if below == 2:
            break
        h /= 2
    orders = [
        math.log2(rs[i] / rs[i + 1])
        for i in range(len(rs) - 1)
        if rs[i + 1] >= floor and rs[i] >= floor and math.isfinite(rs[i])
    ]
    if not orders:
        if all(r < floor for r in rs):
            return math.nan, ""
        return 0.0, "no two successive remainders above rounding and finite"
    tail = orders[-TAYLOR_TAIL:]
    order = float(np.median(tail))
    last = [i for i in range(len(rs) - 1) if rs[i + 1] >= floor][-1]
    text = (f"remainder {rs[last]:.3g} at h = {hs[last]:.3g}, {rs[last + 1]:.3g} at "
            f"h = {hs[last + 1]:.3g} (order {order:.2f}; a correct gradient gives 2)")
    return order, text


_METHODS = {"central": _central, "complex": _complex, "directional": _directional,
            "taylor": _taylor}


# ==========================================================================================
# The derivation, evaluated numerically (real and complex)
# ==========================================================================================


def _complex_sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _first_order(f, df):
    """Extend a real function to x + iy with tiny y (the complex step): f(x) + i y f′(x),
    exact to O(y²) — for functions numpy cannot take at complex arguments."""

    def g(z):
        z = np.asarray(z)
        if not np.iscomplexobj(z):
            return f(z)
        return f(z.real) + 1j * z.imag * df(z.real)

    return g


_real_erf = np.vectorize(math.erf, otypes=[float])
_COMPLEX_FUNCTIONS = {
    "sigmoid": _complex_sigmoid,
    "softplus": _first_order(lambda x: np.logaddexp(0.0, x), lambda x: _complex_sigmoid(x)),
    "erf": _first_order(_real_erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x)),
}


@lru_cache(maxsize=128)
def _complex_lambdified(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]):
    return sp.lambdify(symbols, expr, modules=[_COMPLEX_FUNCTIONS, "numpy"])


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; for complex operands as real products of the parts."""
    if not np.iscomplexobj(b):
        return a @ b if not np.iscomplexobj(a) else a.real @ b + 1j * (a.imag @ b)
    if not np.iscomplexobj(a):
        return a @ b.real + 1j * (a @ b.imag)
    return (a.real @ b.real - a.imag @ b.imag) + 1j * (a.real @ b.imag + a.imag @ b.real)


def _derivation_env(spec, params: dict[str, np.ndarray], X, Y) -> dict:
    from symgrad.ops import L1, L2, N

    env: dict[Any, Any] = {"X": X, "Y": Y, N: X.shape[0], L1: spec.l1, L2: spec.l2}
    for name, value in params.items():
        env[name] = value.reshape(1, -1) if value.ndim == 1 else value
    return env


def _derivation_loss(derivation, params, X, Y) -> float:
    """The loss by the derivation's forward equations, ``Node.numeric`` each."""
    env = _derivation_env(derivation.spec, params, X, Y)
    for eq in derivation.forward:
        env[eq.target.name] = eq.rhs.numeric(env)
    return float(np.asarray(env[derivation.graph.loss.name]).reshape(()))


def _derivation_complex_loss(derivation, X, Y) -> Callable[[dict[str, np.ndarray]], complex]:
    """The loss by the derivation's forward equations at complex parameters.

    Products, elementwise maps, softmax and the mean loss are evaluated here (σ, softplus
    and erf through complex-safe forms; softmax shifted by the real part of the row
    maximum; products as real products of the real and imaginary parts, which BLAS does
    faster than complex ones at these sizes); every other node by its own ``numeric``."""
    from symgrad.activations import X as X_SYM
    from symgrad.losses import YHAT
    from symgrad.losses import Y as Y_SYM
    from symgrad.ops import BiasAdd, Elementwise, MatMul, MeanLoss, Softmax

    def loss(params: dict[str, np.ndarray]) -> complex:
        env = _derivation_env(derivation.spec, params, X, Y)
        for eq in derivation.forward:
            rhs = eq.rhs
            if isinstance(rhs, MatMul):
                value = _matmul(rhs.a.numeric(env), rhs.b.numeric(env))
            elif isinstance(rhs, BiasAdd) and isinstance(rhs.a, MatMul):
                value = _matmul(rhs.a.a.numeric(env), rhs.a.b.numeric(env)) + rhs.b.numeric(env)
            elif isinstance(rhs, Elementwise):
                z = rhs.x.numeric(env)
                value = np.broadcast_to(_complex_lambdified(rhs.fn.expr, (X_SYM,))(z), z.shape)
            elif isinstance(rhs, Softmax):
                z = rhs.x.numeric(env)
                e = np.exp(z - z.real.max(axis=1, keepdims=True))
                value = e / e.sum(axis=1, keepdims=True)
            elif isinstance(rhs, MeanLoss):
                yh, y = rhs.yhat.numeric(env), rhs.y.numeric(env)
                per = _complex_lambdified(rhs.loss.expr, (YHAT, Y_SYM))(yh, y)
                value = np.array([[np.sum(np.broadcast_to(per, yh.shape)) / yh.shape[0]]])
            else:
                value = rhs.numeric(env)
            env[eq.target.name] = value
        return complex(np.asarray(env[derivation.graph.loss.name]).reshape(()))

    return loss


def _not_analytic(spec) -> str:
    """Why the complex step does not apply to ``spec`` ("" when it does)."""
    for l, layer in enumerate(spec.layers, 1):
        if not layer.fn.analytic:
            return f"{layer.fn.name} (layer {l}) is not analytic"
    if not spec.loss_fn.analytic:
        return f"the loss {spec.loss_fn.name} is not analytic"
    if spec.l1:
        return "the l1 penalty λ₁ Σ|W| is not analytic"
    return ""


# ==========================================================================================
# The API
# ==========================================================================================


def check_spec(spec, method: str = "central", tol: float | None = None, seed: int = 0,
               directions: int = 8, samples: int = SAMPLES) -> CheckReport:
    """Generate the module of ``spec`` (a :class:`~symgrad.spec.Spec` or a TOML path) in
    memory and check it as :func:`check_module` does; also compare its loss with the
    derivation's forward equations evaluated numerically (a ``loss`` row, method
    ``derivation``).  The complex step, where the spec is analytic, differentiates the
    derivation's equations at complex parameters."""
    from symgrad.codegen import generate_source, load_module
    from symgrad.derive import derive
    from symgrad.spec import load_spec

    start = time.perf_counter()
    _options(method, tol, seed, directions, samples)
    if isinstance(spec, str | Path):
        kind, path = _resolve(spec)
        if kind != "spec":
            raise SymgradError(str(spec), "not a spec (.toml); check_module checks modules")
        spec = load_spec(path)
    derivation = derive(spec)
    module = load_module(generate_source(derivation))
    kind = "custom" if spec.loss_expr is not None else spec.loss_fn.name
    problem = _problem(module, spec.source, seed, samples, targets=kind)
    reference = _derivation_loss(derivation, problem.params, problem.X, problem.Y)
    problem.rows.append(_value_row("loss", problem.loss(problem.params), reference, "derivation",
                                   "the module's loss", "the derivation's"))
    problem.complex_loss = None
    if method == "complex":
        reason = _not_analytic(spec)
        if reason:
            problem.notes.append(_fallback(reason, tol))
        else:
            problem.complex_loss = _derivation_complex_loss(derivation, problem.X, problem.Y)
    return _run(problem, method, tol, seed, directions, start)


def check_module(module_or_path: ModuleType | str | Path, method: str = "central",
                 tol: float | None = None, seed: int = 0, directions: int = 8,
                 samples: int = SAMPLES) -> CheckReport:
    """Check an untrusted module (a path or an imported module): its ``loss_and_grad``
    against differences of its own ``loss``.  Sizes come from INPUTS, OUTPUTS and
    PARAM_SHAPES, parameters from ``init_params(seed)`` when it has one; X is standard
    normal and Y one-hot rows (valid targets for every built-in loss)."""
    start = time.perf_counter()
    _options(method, tol, seed, directions, samples)
    if isinstance(module_or_path, ModuleType):
        module = module_or_path
        where = getattr(module, "__file__", None) or module.__name__
    else:
        kind, path = _resolve(module_or_path)
        if kind != "module":
            raise SymgradError(str(module_or_path), "not a module (.py); check_spec checks specs")
        module, where = _import(path), str(module_or_path)
    problem = _problem(module, where, seed, samples)
    if method == "complex":
        reason = _module_complex_reason(problem)
        if reason:
            problem.notes.append(_fallback(reason, tol))
            problem.complex_loss = None
        else:
            problem.notes.append("complex step through the module's own loss, which is assumed "
                                 "analytic (no relu, |·|, max)")
    else:
        problem.complex_loss = None
    return _run(problem, method, tol, seed, directions, start)


def _options(method: str, tol: float | None, seed: int, directions: int, samples: int) -> None:
    if method not in METHODS:
        raise SymgradError("check", f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if tol is not None and not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise SymgradError("check: --tol", f"must be a positive number, not {tol!r}")
    if not isinstance(seed, int) or seed < 0:
        raise SymgradError("check: --seed", f"must be a non-negative integer, not {seed!r}")
    if not isinstance(directions, int) or not 1 <= directions <= 10_000:
        raise SymgradError("check: --directions", f"must be between 1 and 10000, not {directions!r}")
    if not isinstance(samples, int) or not 1 <= samples <= 100_000:
        raise SymgradError("check: samples", f"must be between 1 and 100000, not {samples!r}")


def _fallback(reason: str, tol: float | None) -> str:
    note = f"complex step does not apply: {reason}; central differences are used for the whole check"
    if tol is not None:
        note += f" (with your tol {tol:g}; their default is {DEFAULT_TOL['central']:g})"
    return note


def _module_complex_reason(problem: Problem) -> str:
    """Why the module's loss cannot carry the complex step ("" when it can): it raises,
    or drops the imaginary part (a generated module returns ``float(L)``)."""
    assert problem.complex_loss is not None
    params = {k: v.astype(np.complex128) for k, v in problem.params.items()}
    params[next(iter(params))].reshape(-1)[0] += 1j * COMPLEX_STEP
    try:
        value = problem.complex_loss(params)
    except SymgradError as e:  # the module's loss may refuse complex input
        return f"the module's {e.what}"
    if not np.isfinite(value):
        return "the module's loss is not finite at complex parameters"
    return ""


def _run(problem: Problem, method: str, tol: float | None, seed: int, directions: int,
         start: float) -> CheckReport:
    used = "central" if method == "complex" and problem.complex_loss is None else method
    tol = DEFAULT_TOL[used] if tol is None else float(tol)
    rng = np.random.default_rng([seed, 1])  # directions: a stream apart from the data's
    rows = _METHODS[used](problem, tol, rng, directions)
    report = CheckReport(problem.where, used, method, tol, seed, problem.samples,
                         rows + problem.rows, list(problem.notes))
    report.seconds = time.perf_counter() - start
    return report


# ==========================================================================================
# The command
# ==========================================================================================


@command("check")
def cmd_check(args: argparse.Namespace) -> int:
    """symgrad check SPEC|MODULE.py: print the table; exit 0 all pass, 1 a failure."""
    kind, _ = _resolve(args.target)
    run = check_spec if kind == "spec" else check_module
    report = run(args.target, method=args.method, tol=args.tol, seed=args.seed,
                 directions=args.directions)
    sys.stdout.write(report.text())
    return 0 if report.ok else 1
