"""Expression mode's linear algebra (issue 13): inv, det, logdet (and log(det(·))), solve.

For each Matrix Cookbook §2.1–2.2 identity, matrixcalculus.org example and Gaussian
likelihood below: the printed gradient is the textbook form; that form (typed in numpy
syntax) is proved equal to the derived gradient and to SymPy's entrywise derivative of the
expanded expression on a tiny instance; the generated module matches central differences,
is ruff-clean and never multiplies by an explicit inverse (it solves).
"""

from __future__ import annotations

import importlib.util
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from symgrad.cli import main
from symgrad.exprmode import (
    build,
    derive_expr,
    expand,
    generate_expr,
    gradient_code,
    is_zero,
    latex,
    numeric_env,
    parse_problem,
    proof_env,
    shown,
    text,
    verify_expr,
)
from symgrad.ops import Det, Inverse, LogDet, Solve, Sym
from symgrad.ops.linalg import invertible_names, with_solves

NLL = "0.5 * logdet(S) + 0.5 * trace(X @ inv(S) @ X.T) / N"

# id, EXPR, shapes (the inverted matrix's size first: 2 in the proof), {wrt: (printed, closed form)}
TABLE = [
    ("logdet", "logdet(S)", ["S=n,n"], {"S": ("S⁻ᵀ", "inv(S).T")}),
    ("log-det-inverse", "log(det(inv(X)))", ["X=n,n"], {"X": ("−X⁻ᵀ", "-inv(X).T")}),
    ("det", "det(X)", ["X=n,n"], {"X": ("det(X) X⁻ᵀ", "det(X) * inv(X).T")}),
    ("det-squared", "det(X)**2", ["X=n,n"], {"X": ("2 det(X)² X⁻ᵀ", "2 * det(X)**2 * inv(X).T")}),
    ("det-AXB", "det(A @ X @ B)", ["X=n,n", "A=n,n", "B=n,n"],
     {"X": ("det(A X B) X⁻ᵀ", "det(A @ X @ B) * inv(X).T")}),
    ("trace-A-Xinv-B", "trace(A @ inv(X) @ B)", ["X=n,n", "A=m,n", "B=n,m"],
     {"X": ("−X⁻ᵀ Aᵀ Bᵀ X⁻ᵀ", "-inv(X).T @ A.T @ B.T @ inv(X).T")}),
    ("quadratic-inverse", "a.T @ inv(X) @ b", ["X=n,n", "a=n,1", "b=n,1"],
     {"X": ("−X⁻ᵀ a bᵀ X⁻ᵀ", "-inv(X).T @ a @ b.T @ inv(X).T")}),
    ("logdet-XtX", "logdet(X.T @ X)", ["X=N,n"], {"X": ("2 X (Xᵀ X)⁻¹", "2 * X @ inv(X.T @ X)")}),
    ("gaussian-nll", NLL, ["S=n,n", "X=N,n"],
     {"S": ("S⁻ᵀ/2 − S⁻ᵀ Xᵀ X S⁻ᵀ/(2·N)", "inv(S).T / 2 - inv(S).T @ X.T @ X @ inv(S).T / (2 * N)")}),
    ("solve-quadratic", "x.T @ solve(A, x)", ["A=n,n", "x=n,1"],
     {"A": ("−A⁻ᵀ x xᵀ A⁻ᵀ", "-solve(A.T, x) @ solve(A, x).T"),
      "x": ("(A⁻ᵀ + A⁻¹) x", "solve(A.T, x) + solve(A, x)")}),
    ("numpy-spelling", "np.log(np.linalg.det(A))", ["A=n,n"], {"A": ("A⁻ᵀ", "np.linalg.inv(A).T")}),
]
IDS = [row[0] for row in TABLE]


@pytest.fixture(scope="module")
def derived():
    cache = {}

    def get(row):
        if row[0] not in cache:
            problem = parse_problem(row[1], row[2], list(row[3]))
            cache[row[0]] = (problem, derive_expr(problem))
        return cache[row[0]]

    return get


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_printed_gradient_is_the_textbook_form(row, derived):
    problem, d = derived(row)
    for wrt, (printed, _) in row[3].items():
        assert text(shown(d.gradients[wrt]), problem) == printed


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_textbook_form_proved_on_a_tiny_instance(row, derived):
    """derived = textbook form = SymPy's entrywise derivative of the expanded expression."""
    problem, d = derived(row)
    env = proof_env(problem)
    f = expand(problem.root.explicit(env))[0, 0]
    assert not f.has(sp.nan, sp.zoo)
    rng = random.Random(0)
    for wrt, (_, closed) in row[3].items():
        mine = expand(d.gradients[wrt].explicit(env))
        reference = expand(build(closed, problem.space, where="closed form", scalar=False).explicit(env))
        entries = env[wrt]
        assert mine.shape == reference.shape == entries.shape
        for i in range(entries.rows):
            for j in range(entries.cols):
                assert is_zero(mine[i, j] - reference[i, j], rng.randint(0, 10**6)) is True
                assert is_zero(mine[i, j] - sp.diff(f, entries[i, j]), rng.randint(0, 10**6)) is True


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_generated_module_checks_solves_and_is_ruff_clean(row, derived, tmp_path):
    problem, d = derived(row)
    path = tmp_path / f"m_{row[0].replace('-', '_')}.py"
    source = generate_expr(d, path.stem)
    path.write_text(source)
    # an inverse only where it is the value itself, never an inverse times a matrix
    assert not re.search(r"np\.linalg\.inv\((?:[^()]|\([^()]*\))*\) @|@ np\.linalg\.inv", source)
    module = _load(path)
    for seed in (0, 1):
        errors = module.check(seed=seed)
        assert set(errors) == set(row[3]) and max(errors.values()) <= 1e-6, errors
    args = module.random_arguments(0)
    value, grads = module.value_and_grad(**args)
    assert np.isfinite(value)
    for name in getattr(module, "INVERTIBLE", []):
        assert np.linalg.det(args[name]) > 0 and np.linalg.cond(args[name]) < 10
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "-q", str(path)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_numpy_lowering_solves_instead_of_inverting(derived):
    problem, d = derived(TABLE[8])  # the Gaussian NLL
    line = gradient_code(d.gradients["S"], "S")
    assert line == ("np.linalg.inv(S.T) / 2 - np.linalg.solve(S, X.T @ np.linalg.solve(S.T, X.T).T).T"
                    " / (2 * N)")
    source = generate_expr(d, "nll")
    assert "np.linalg.solve(S, X.T)" in source  # the value: X S⁻¹ Xᵀ = X solve(S, Xᵀ)
    assert "def logdet(a):" in source and "np.linalg.slogdet(a)[1]" in source
    S, B = Sym("S", (3, 3)), Sym("B", (3, 2))
    from symgrad.ops import MatMul

    assert with_solves(MatMul(Inverse(S), B)) == Solve(S, B)
    assert with_solves(MatMul(B.__class__("C", (2, 3)), Inverse(S))) == Solve(S, Sym("C", (2, 3)), right=True)


def test_latex_forms(derived):
    problem, d = derived(TABLE[2])
    assert latex(d.gradients["X"], problem) == r"\det\left(X\right) X^{-\top}"
    problem, d = derived(TABLE[7])
    assert latex(d.gradients["X"], problem) == r"2 X \left(X^{\top} X\right)^{-1}"
    S = Sym("S", (2, 2))
    assert latex(LogDet(S)) == r"\log\det\left(S\right)" and text(LogDet(S)) == "log det(S)"
    assert text(Det(S)) == "det(S)" and text(Solve(S, S, right=True)) == "S S⁻¹"


def test_printed_numpy_line_verifies_and_a_wrong_one_is_caught(derived):
    problem, d = derived(TABLE[8])
    right = verify_expr(problem, "S", "np.linalg.inv(S).T / 2 - np.linalg.solve(S.T, X.T @ X) "
                        "@ np.linalg.inv(S).T / (2 * N)")
    assert right.ok, right.text()
    wrong = verify_expr(problem, "S", "-np.linalg.inv(S).T / 2 + np.linalg.solve(S.T, X.T @ X) "
                        "@ np.linalg.inv(S).T / (2 * N)")
    assert not wrong.ok and "sign" in wrong.text()
    transposed = verify_expr(*derived(TABLE[0])[:1], "S", "inv(S)")
    assert not transposed.ok and "correct: np.linalg.inv(S.T)" in transposed.text()


def test_random_instances_are_invertible_with_positive_determinant():
    problem = parse_problem("logdet(S) + sum(w)", ["S=n,n", "w=n,1"], "S,w")
    assert invertible_names(problem.root) == {"S"}
    for draw in ("real", "positive", "negative"):
        for k in range(3):
            env = numeric_env(problem, seed=0, k=k, draw=draw)
            assert np.linalg.det(env["S"]) > 0 and np.linalg.cond(env["S"]) < 10
            assert not np.allclose(env["S"], env["S"].T)  # a transposed formula still fails
    wide = parse_problem("logdet(X.T @ X)", ["X=N,n"], "X")
    assert invertible_names(wide.root) == set()  # XᵀX is invertible for a tall X as drawn


def test_cli_derive_and_prove(capsys):
    argv = ["derive", "--expr", NLL, "--shape", "S=n,n", "--shape", "X=N,n", "--wrt", "S", "--prove"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "∂f/∂S = S⁻ᵀ/2 − S⁻ᵀ Xᵀ X S⁻ᵀ/(2·N)" in out
    assert "∂f/∂S: proved equal to the entrywise derivative (n=2, N=3)" in out
    assert main(["derive", "--expr", "logdet(S)", "--shape", "S=n,n", "--wrt", "S"]) == 0
    assert "∂f/∂S = S⁻ᵀ\n      numpy: np.linalg.inv(S.T)\n" in capsys.readouterr().out


BAD = [
    ("logdet(X)", ["X=N,d"], ["logdet needs a square matrix", "N×d"]),
    ("sum(inv(X @ X.T) @ w)", ["X=N,d", "w=d,1"], ["inv(X @ X.T)", "cannot multiply N×N by d×1"]),
    ("sum(solve(A, b))", ["A=n,n", "b=m,1"], ["solve(A, B) needs as many rows", "n×n", "m×1"]),
    ("np.linalg.slogdet(A)", ["A=n,n"], ["slogdet returns a pair", "logdet(A)"]),
    ("det(np.inv(A))", ["A=n,n"], ["np.linalg.inv"]),
    ("det(A, A)", ["A=n,n"], ["'det' takes 1 array argument"]),
    ("det(2)", ["A=n,n"], ["needs 2-D arrays"]),
]


@pytest.mark.parametrize("expr,shapes,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2(expr, shapes, needles, capsys):
    argv = ["derive", "--expr", expr, "--wrt", shapes[0].split("=")[0]]
    for s in shapes:
        argv += ["--shape", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symgrad: error: expr: "), err
    for needle in needles:
        assert needle in err, (needle, err)
