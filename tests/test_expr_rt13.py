"""Expression mode, issue 13's red-team findings F8, F10, F13.

- F8: a power of a large sum (or a product of powers) is derived in seconds of CPU time,
  never multiplied out (SymPy's multinomial loop cannot be interrupted by a deadline):
  the expansion's size is estimated first (:func:`symgrad.budget.expansion_terms`);
- F10: every op in :mod:`symgrad.ops` has a text and a LaTeX form (walked class by class),
  and the ridge-style ``tr((A + λI)⁻¹)`` generates a module whose check passes;
- F13: a product of scalars prints as a product (2λ w, 1/(m n)), never with ⊙.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import time
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from symgrad import budget, ops
from symgrad.activations import ACTIVATIONS
from symgrad.cli import main
from symgrad.exprmode import (
    ExprLatexPrinter,
    ExprTextPrinter,
    derive_expr,
    latex,
    numeric_env,
    parse_problem,
    prove,
    text,
    tidy,
    verify_expr,
)
from symgrad.losses import LOSSES
from symgrad.ops import lowered
from symgrad.ops.base import Node
from symgrad.printing import LatexPrinter, TextPrinter

SUM10 = " + ".join(f"X{i}" for i in range(10))
SHAPES10 = [f"X{i}=n,n" for i in range(10)]
PRINTED10 = " + ".join(f"X{i}".translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))
                       for i in range(10))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# F8: powers of large sums, products of powers
# --------------------------------------------------------------------------

POWERS = [
    (f"np.sum(({SUM10}) ** 64)", "X0", f"64 ({PRINTED10})^(63)"),
    ("np.sum(((X0 + X1 + X2) * (X3 + X4 + X5) * (X6 + X7 + X8)) ** 40)", "X0",
     "40 (X₃ + X₄ + X₅) ⊙ (X₆ + X₇ + X₈) ⊙ ((X₀ + X₁ + X₂) ⊙ (X₃ + X₄ + X₅) ⊙ (X₆ + X₇ + X₈))^(39)"),
    ("np.sum((X0 + X1 + X2 + X3 + X4) ** 64 * (X5 + X6 + X7 + X8 + X9) ** 64)", "X0",
     "64 (X₅ + X₆ + X₇ + X₈ + X₉)^(64) ⊙ (X₀ + X₁ + X₂ + X₃ + X₄)^(63)"),
    (f"np.sum(np.exp(({SUM10}) ** 8))", "X0", f"8 ({PRINTED10})⁷ ⊙ exp(({PRINTED10})⁸)"),
    (f"np.sum(np.where(X0 > 0, ({SUM10}) ** 64, 0))", "X0",
     f"(64 ({PRINTED10})^(63)) ⊙ [X₀ > 0]"),
]


@pytest.mark.parametrize("expr, wrt, printed", POWERS, ids=[f"power{i}" for i in range(len(POWERS))])
def test_power_of_a_large_sum_is_derived_fast_and_proved(expr, wrt, printed):
    """Without the estimate, the first row ran for minutes and past 7 GB (F8)."""
    start = time.process_time()
    problem = parse_problem(expr, SHAPES10, [wrt])
    d = derive_expr(problem)
    assert text(d.gradients[wrt], problem) == printed
    ok, lines = prove(d)
    assert time.process_time() - start < 8.0
    assert ok and lines[0].endswith("proved equal to the entrywise derivative (n=2)"), lines


def test_power_of_a_large_sum_matches_finite_differences_and_verifies(tmp_path, capsys):
    """The whole command: derive's one line, generate's module check, verify CORRECT."""
    start = time.process_time()
    shapes = [a for s in SHAPES10 for a in ("--shape", s)]
    expr = f"np.sum(({SUM10}) ** 64)"
    assert main(["derive", "--expr", expr, *shapes, "--wrt", "X0"]) == 0
    assert f"  ∂f/∂X₀ = 64 ({PRINTED10})^(63)\n" in capsys.readouterr().out
    path = tmp_path / "power64.py"
    assert main(["generate", "--expr", expr, *shapes, "--wrt", "X0", "-o", str(path)]) == 0
    module = _load(path)
    args = module.random_arguments(0)
    total = sum(args[f"X{i}"] for i in range(10))
    got = module.grad(**args)["X0"]
    assert np.allclose(got, 64 * total**63, rtol=1e-12, atol=0)
    # central differences where f is well conditioned: the entry with the largest |S_ij|
    # (f ≈ 10³⁰ is the sum of 9 entries spanning 30 orders: the module's own check, one
    # step for all entries, cannot resolve the small ones)
    i = np.unravel_index(np.argmax(np.abs(total)), total.shape)
    h = 1e-6 * abs(args["X0"][i]) + 1e-8
    up, down = {**args, "X0": args["X0"].copy()}, {**args, "X0": args["X0"].copy()}
    up["X0"][i] += h
    down["X0"][i] -= h
    numeric = (module.value(**up) - module.value(**down)) / (2 * h)
    assert abs(numeric - got[i]) <= 1e-6 * abs(got[i])
    problem = parse_problem(expr, SHAPES10, ["X0"])
    verdict = verify_expr(problem, "X0", f"64 * ({SUM10}) ** 63")
    assert verdict.ok
    assert time.process_time() - start < 10.0


def test_a_polynomial_body_too_large_to_expand_is_kept_and_derived():
    """(XY + X + Y + 1)⁶⁴ is a body of its own, not a sum of leaves: C(67, 3) terms."""
    start = time.process_time()
    problem = parse_problem("np.sum((X * Y + X + Y + 1) ** 64)", ["X=n,n", "Y=n,n"], ["X"])
    d = derive_expr(problem)
    assert text(d.gradients["X"], problem) == "64 ((X + Y + X ⊙ Y) + 1)^(63) ⊙ (Y + 1)"
    assert time.process_time() - start < 5.0
    # the values, at a point where the power is of moderate size
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.2, 0.2, (3, 3)), rng.uniform(-0.2, 0.2, (3, 3))
    env = {"X": x, "Y": y, **{s: 3 for s in problem.sizes()}}
    got = d.gradients["X"].numeric(env)
    assert np.allclose(got, 64 * (x * y + x + y + 1) ** 63 * (y + 1), rtol=1e-12)


def test_slow_bodies_share_the_clock_and_keep_the_simplified_gradient():
    """High powers of tanh and sin: SymPy's simplify of each body is slow; the bodies share
    half the simplification's clock, so the gradient is still simplified (the cotangent's
    1 gone), never dropped back to the sweep (``1 ⊙ … ⊙ 64 ⊙ …``, F13)."""
    s3 = "(X0 + X1 + X2)"
    problem = parse_problem(f"np.sum(np.tanh({s3}) ** 64 * np.sin({s3}) ** 64)",
                            ["X0=n,n", "X1=n,n", "X2=n,n"], ["X0"])
    start = time.process_time()
    d = derive_expr(problem)
    assert time.process_time() - start < 6.0
    printed = text(d.gradients["X0"], problem)
    assert not printed.startswith("1 ⊙") and "⊙ 64 ⊙" not in printed and " + 1 ⊙" not in printed
    env = numeric_env(problem, seed=2)
    t = env["X0"] + env["X1"] + env["X2"]
    closed = (64 * np.tanh(t) ** 63 * (1 - np.tanh(t) ** 2) * np.sin(t) ** 64
              + 64 * np.tanh(t) ** 64 * np.sin(t) ** 63 * np.cos(t))
    assert np.allclose(d.gradients["X0"].numeric(env), closed, rtol=1e-10, atol=1e-300)


def test_expansion_terms_is_the_multinomial_count():
    a = sp.symbols("a0:10", real=True)
    s10 = sp.Add(*a)
    assert budget.expansion_terms(s10**64, cap=10**12) == math.comb(73, 9)
    assert budget.expansion_terms(s10**64) == budget.EXPAND_TERMS + 1  # capped
    assert budget.expansion_terms((a[0] + a[1]) ** 3 * (a[2] + a[3]) ** 2) == 4 * 3
    assert budget.expansion_terms(1 / s10**2) == math.comb(11, 9)  # a denominator: expanded too
    assert budget.expansion_terms(sp.exp(s10**3)) == math.comb(12, 9)  # inside a function
    assert budget.too_large_to_expand(64 * s10**63)
    assert not budget.too_large_to_expand((a[0] + 1) ** 64)


def test_tidy_keeps_a_body_too_large_to_multiply_out():
    a = sp.symbols("a0:10", real=True)
    body = 64 * sp.Add(*a) ** 63
    start = time.process_time()
    assert tidy(body) == body
    assert time.process_time() - start < 1.0


# --------------------------------------------------------------------------
# F10: every op has a text and a LaTeX form
# --------------------------------------------------------------------------

n, m = sp.Symbol("n"), sp.Symbol("m")
X = ops.Sym("X", (n, m), "value")
A, B = ops.Sym("A", (n, n), "value"), ops.Sym("B", (m, m), "value")
x, b = ops.Sym("x", (n, 1), "value"), ops.Sym("b", (1, m), "value")
v = ops.Sym("v", (1, m), "value")
u = sp.Symbol("u")

INSTANCES = {  # class name → a small instance, and its text form in the network printer
    "Sym": (lambda: X, "X"),
    "Const": (lambda: ops.Const(sp.Integer(2), (n, m)), "2"),
    "Add": (lambda: ops.Add((X, ops.MatMul(A, X))), "X + A X"),
    "Hadamard": (lambda: ops.Hadamard(X, X), "X ⊙ X"),
    "Scale": (lambda: ops.Scale(sp.Integer(3), X), "3 X"),
    "Map": (lambda: ops.Map(u**2 + 1, ((u, X),), ""), "X² + 1"),
    "Elementwise": (lambda: ops.Elementwise(ACTIVATIONS["tanh"], X), "tanh(X)"),
    "LogSumExp": (lambda: ops.LogSumExp(X, 1), "logsumexp(X, rows)"),
    "Softmax": (lambda: ops.Softmax(X), "softmax(X)"),
    "Det": (lambda: ops.Det(A), "det(A)"),
    "Inverse": (lambda: ops.Inverse(A), "A⁻¹"),
    "LogDet": (lambda: ops.LogDet(A), "log det(A)"),
    "Solve": (lambda: ops.Solve(A, x, False), "A⁻¹ x"),
    "BiasAdd": (lambda: ops.BiasAdd(X, b), "X + b"),
    "ColSlice": (lambda: ops.ColSlice(X, sp.Integer(0), sp.Integer(1)), "X[:, 0:1]"),
    "Concat": (lambda: ops.Concat((X, X)), "[X X]"),
    "MatMul": (lambda: ops.MatMul(A, X), "A X"),
    "MatPow": (lambda: ops.MatPow(A, 3), "A³"),
    "Transpose": (lambda: ops.Transpose(X), "Xᵀ"),
    "MeanLoss": (lambda: ops.MeanLoss(LOSSES["mse"], X, X, ops.SCALAR), "(1/N) Σ [(X − X)²/2]"),
    "Augmented": (lambda: lowered.Augmented(X, X), "Xᵀ X"),
    "ColumnBias": (lambda: lowered.ColumnBias(ops.Transpose(X), ops.Transpose(b)), "Xᵀ + bᵀ 𝟏ᵀ"),
    "LogSumExpT": (lambda: lowered.LogSumExpT(X), "logsumexp(X, axis=0)"),
    "SoftmaxT": (lambda: lowered.SoftmaxT(X), "softmax(X, axis=0)"),
    "SumColumns": (lambda: lowered.SumColumns(X), "(X 𝟏)ᵀ"),
    "SumRows": (lambda: lowered.SumRows(X), "𝟏ᵀ X"),
    "Total": (lambda: lowered.Total(X), "Σ(X)"),
    "ImageRows": (lambda: lowered.ImageRows(X), "X"),  # a reshape: printed as its map
    "Dropout": (lambda: ops.Dropout(X, ops.Sym("M", (n, m), "mask"), 0.5), "X ⊙ M/(1 − 0.5)"),
    "InvStd": (lambda: ops.InvStd(v, 1e-5, (1, m)), "𝟏(v + ε)^(−½)"),
    "Standardize": (lambda: ops.Standardize(X, b, v, 1e-5, 0), "(X − 𝟏b) ⊙ 𝟏(v + ε)^(−½)"),
    "AbsSum": (lambda: ops.AbsSum(X), "Σ|X|"),
    "ArgMask": (lambda: ops.ArgMask(X, 0, "max"), "onehot(argmax(X, axis=0))"),
    "Broadcast": (lambda: ops.Broadcast(b, (n, m)), "𝟏b"),
    "ColSum": (lambda: ops.ColSum(X), "𝟏ᵀ X"),
    "Extremum": (lambda: ops.Extremum(X, 0, "max"), "max(X, axis=0)"),
    "Eye": (lambda: ops.Eye(n), "I"),
    "Norm": (lambda: ops.Norm(X, 2), "‖X‖₂"),
    "Ones": (lambda: ops.Ones((n, m)), "𝟏𝟏ᵀ"),
    "RowSum": (lambda: ops.RowSum(X), "rowsum(X)"),
    "SqNorm": (lambda: ops.SqNorm(X), "‖X‖²"),
    "SqNormHalf": (lambda: ops.SqNormHalf(X), "½‖X‖²"),
    "Sub": (lambda: ops.Sub(X, X), "X − X"),
    "Trace": (lambda: ops.Trace(A), "tr(A)"),
    "DiagMatrix": (lambda: ops.DiagMatrix(x), "diag(x)"),
    "DiagPart": (lambda: ops.DiagPart(A), "diag(A)"),
    "Kron": (lambda: ops.Kron(A, B), "A ⊗ B"),
    "KronFactor": (lambda: ops.KronFactor(ops.Kron(A, B), B, True), "[⟨(A ⊗ B)ᵢⱼ, B⟩]ᵢⱼ"),
}

FAMILIES = ["base", "elementwise", "linalg", "linear", "loss", "lowered", "normalization",
            "reductions", "structure"]


def _op_classes() -> set[str]:
    found = set()
    for family in FAMILIES:
        module = importlib.import_module(f"symgrad.ops.{family}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Node) and cls is not Node and cls.__module__ == module.__name__:
                found.add(name)
    return found


def test_every_op_class_is_walked():
    """A new op joins INSTANCES, so that its printed forms are tested below."""
    assert _op_classes() == set(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_every_op_prints_in_text_and_latex(name):
    make, expected = INSTANCES[name]
    node = make()
    assert type(node).__name__ == name
    assert TextPrinter()._print(node) == expected
    for printer in (LatexPrinter(), ExprTextPrinter(), ExprLatexPrinter()):
        out = printer._print(node)
        assert out and "Node" not in out and name not in out, (printer, out)


def test_identity_ones_trace_forms():
    assert [LatexPrinter()._print(x) for x in (ops.Eye(n), ops.Ones((n, m)), ops.Ones((n, 1)),
                                               ops.Ones((1, m)), ops.Trace(A))] == [
        "I", r"\mathbf{1}\mathbf{1}^{\top}", r"\mathbf{1}", r"\mathbf{1}^{\top}",
        r"\operatorname{tr}\left(A\right)"]
    assert TextPrinter()._print(ops.Ones((1, m))) == "𝟏ᵀ"
    assert ExprTextPrinter()._print(ops.Ones((n, m))) == "𝟏"  # expression mode's own form


RIDGE = "np.trace(inv(A + lam * np.eye(n)))"


def test_ridge_trace_of_inverse_generates_for_two_names(tmp_path, capsys):
    """F10: the module named Eye inside a temporary and had no text form for it (exit 3)."""
    path = tmp_path / "ridge.py"
    argv = ["--expr", RIDGE, "--shape", "A=n,n", "--shape", "lam=1,1", "--wrt", "lam,A"]
    assert main(["generate", *argv, "-o", str(path)]) == 0
    module = _load(path)
    for seed in (0, 1):
        errors = module.check(seed=seed)
        assert set(errors) == {"lam", "A"} and max(errors.values()) <= 1e-6, errors
    # against the textbook forms: ∂/∂λ = −tr((A + λI)⁻²), ∂/∂A = −((A + λI)⁻²)ᵀ
    rng = np.random.default_rng(3)
    a, lam = rng.normal(size=(4, 4)) + 4 * np.eye(4), np.array([[0.7]])
    inv = np.linalg.inv(a + lam[0, 0] * np.eye(4))
    grads = module.grad(A=a, lam=lam)
    assert np.allclose(grads["lam"], -np.trace(inv @ inv), rtol=1e-10)
    assert np.allclose(grads["A"], -(inv @ inv).T, rtol=1e-10)
    capsys.readouterr()
    assert main(["derive", *argv, "--prove"]) == 0
    out = capsys.readouterr().out
    assert "∂f/∂lam: proved equal to the entrywise derivative (n=2)" in out
    assert "∂f/∂A: proved equal to the entrywise derivative (n=2)" in out


# --------------------------------------------------------------------------
# F13: products of scalars print as products
# --------------------------------------------------------------------------

RIDGE_LS = ("norm(X @ w - y) ** 2 + lam * norm(w) ** 2",
            ["X=N,d", "w=d,1", "y=N,1", "lam=1,1"], "w")


def test_scalar_times_scalar_is_a_product():
    problem = parse_problem(RIDGE_LS[0], RIDGE_LS[1], [RIDGE_LS[2]])
    d = derive_expr(problem)
    g = d.gradients["w"]
    assert text(g, problem) == "2 Xᵀ (X w − y) + 2λ w"
    assert "odot" not in latex(g, problem)
    mean = parse_problem("np.mean(X)", ["X=n,m"], ["X"])
    dm = derive_expr(mean)
    assert text(dm.gradients["X"], mean) == "1/(m n)"
    assert latex(dm.gradients["X"], mean) == r"\frac{1}{m n}"
    # the values: 2Xᵀ(Xw − y) + 2λw, and 1/(mn) everywhere
    env = numeric_env(problem, seed=1)
    xs, ws, ys = env["X"], env["w"], env["y"]
    lam = next(v for k, v in env.items() if str(k) == "lam")  # a coefficient, under its symbol
    assert np.allclose(g.numeric(env), 2 * xs.T @ (xs @ ws - ys) + 2 * lam * ws, rtol=1e-12)
    me = numeric_env(mean, seed=1)
    assert np.allclose(dm.gradients["X"].numeric(me), 1 / me["X"].size, rtol=1e-12)


def test_verify_diagnosis_prints_the_scalar_product():
    problem = parse_problem(RIDGE_LS[0], RIDGE_LS[1], [RIDGE_LS[2]])
    verdict = verify_expr(problem, "w", "2 * X.T @ (X @ w - y)")
    assert not verdict.ok
    assert "  diagnosis: missing term + 2λ w" in verdict.lines


def test_elementwise_product_with_a_matrix_keeps_its_sign():
    """⊙ stays between matrices, a number is written before one: (2 X) ⊙ [X > Y] (F13)."""
    problem = parse_problem("np.sum(np.where(X > Y, X**2, Y))", ["X=n,m", "Y=n,m"], ["X"])
    assert text(derive_expr(problem).gradients["X"], problem) == "(2 X) ⊙ [X > Y]"
