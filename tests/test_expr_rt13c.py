"""Issue 13's red team, round 3 (F3, F11, F13, F14): exact printed forms and numpy lines,
each gradient proved at tiny sizes and checked against finite differences.

* F3: kron's gradient in matrix form where one exists (tr(A ⊗ B) → tr(B) I, ‖A ⊗ B‖² →
  2‖B‖² A, vector and 1×1 factors as products), never an mn×mn identity in the code;
* F11: the numpy spellings symgrad prints read back (matrix_power, the one-hot of an
  arg-max, einsum over a Kronecker cotangent's blocks, np.amax, X.max(axis=0)); bad
  spellings refused in one line;
* F13: ⊙ only between two matrix-valued factors ((2 X) ⊙ [X > Y], 2λ X ⊙ Y, tr(A ⊗ B) tr(B)),
  one minus sign (−2 (X⁻ᵀ)³), the name I refused;
* F14: no explicit inverse where a solve serves (solves against 𝟏, powers of an inverse,
  a product with a sum of inverses).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from test_cookbook_table import _finite_differences, _zero

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.exprmode import (
    derive_expr,
    expand,
    explicit_env,
    gradient_code,
    latex,
    parse_problem,
    shown,
    text,
)

SQ2 = ["A=n,n", "B=m,m"]

# expr, shapes, wrt, printed, numpy line (~: a part of it)
CASES = [
    ("np.trace(kron(A, B))", SQ2, "A", "tr(B) I", "np.eye(n) * np.trace(B)"),
    ("np.trace(kron(A, B))", SQ2, "B", "tr(A) I", "np.eye(m) * np.trace(A)"),
    ("np.sum(kron(A, B) ** 2)", SQ2, "A", "2 ‖B‖² A", "2 * (A * np.sum(B**2))"),
    ("np.sum(kron(A, B) ** 2)", SQ2, "B", "2 ‖A‖² B", "2 * (B * np.sum(A**2))"),
    ("np.sum(kron(A, B))", SQ2, "A", "𝟏 (𝟏ᵀ rowsum(B)) 𝟏ᵀ",
     "np.sum(B, keepdims=True) * np.ones_like(A)"),
    ("np.trace(kron(A, B)) ** 2", SQ2, "A", "2 (tr(A ⊗ B) tr(B)) I",
     "2 * (np.eye(n) * (np.trace(np.kron(A, B)) * np.trace(B)))"),
    ("np.trace(kron(A, B)) + np.sum(C * kron(A, B))", ["A=2,2", "B=3,3", "C=6,6"], "A",
     "tr(B) I + [⟨Cᵢⱼ, B⟩]ᵢⱼ",
     'np.eye(2) * np.trace(B) + np.einsum("ipjq,pq->ij", C.reshape(2, 3, 2, 3), B)'),
    ("np.trace(kron(x, y.T))", ["x=n,1", "y=n,1"], "x", "y", "y"),
    ("np.sum(kron(x.T, y) ** 2)", ["x=n,1", "y=m,1"], "y", "2 ‖x‖² y",
     "2 * (y * np.sum(x**2))"),
    ("np.sum(kron(s, B) * C)", ["s=1,1", "B=n,m", "C=n,m"], "s", "𝟏ᵀ rowsum(B ⊙ C)",
     "np.sum(B * C, keepdims=True)"),
    # F14: solves, never an explicit inverse where one serves
    ("np.sum(np.linalg.solve(X, b))", ["X=n,n", "b=n,1"], "X", None,
     "~np.linalg.solve(X.T, np.ones((n, 1)))"),
    ("np.sum(inv(X))", ["X=n,n"], "X", None,
     "-(np.linalg.solve(X.T, np.ones((n, 1))) @ np.linalg.solve(X, np.ones((n, 1))).T)"),
    ("logdet(A + X.T @ X)", ["X=n,m", "A=m,m"], "X", None,
     "np.linalg.solve((X.T @ X + A).T, X.T).T + np.linalg.solve((X.T @ X + A.T).T, X.T).T"),
    ("np.trace(inv(X))", ["X=n,n"], "X", None, "-np.linalg.solve(X.T, np.linalg.inv(X.T))"),
    # F13: ⊙ only between matrices; one minus sign
    ("np.sum(np.where(X > Y, X**2, Y))", ["X=n,m", "Y=n,m"], "X", "(2 X) ⊙ [X > Y]",
     "np.where(X > Y, 2 * X, 0.0)"),
    ("np.sum(lam * X**2 * Y)", ["X=n,m", "Y=n,m", "lam=1,1"], "X", "2λ X ⊙ Y", None),
    ("np.sum(np.where(X > 0, 3 * X**2, 2))", ["X=n,m"], "X", "6 (X ⊙ [X > 0])", None),
    ("np.trace(inv(X) @ inv(X))", ["X=n,n"], "X", "−2 (X⁻ᵀ)³", None),
]
IDS = [f"{c[0]}|{c[2]}" for c in CASES]
_DERIVED: dict = {}


def derived(expr, shapes, wrt):
    key = (expr, tuple(shapes), wrt)
    if key not in _DERIVED:
        problem = parse_problem(expr, shapes, [wrt])
        _DERIVED[key] = (problem, derive_expr(problem))
    return _DERIVED[key]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_printed_form_and_numpy_line(case):
    expr, shapes, wrt, printed, code = case
    problem, d = derived(expr, shapes, wrt)
    g = d.gradients[wrt]
    if printed is not None:
        assert text(shown(g), problem) == printed
    line = gradient_code(g, wrt)
    if code is not None:
        assert code[1:] in line if code.startswith("~") else line == code
    assert "np.eye(m * n)" not in line and "np.eye(n * m)" not in line and "np.eye(6)" not in line
    if "inv" in expr or "solve" in expr:
        assert line.count("np.linalg.inv") <= 1 and "matrix_power" not in line


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_proved_at_tiny_sizes_and_against_finite_differences(case):
    expr, shapes, wrt, _, _ = case
    problem, d = derived(expr, shapes, wrt)
    env = explicit_env(problem, {s: 2 for s in problem.sizes()})
    f = expand(problem.root.explicit(env))[0, 0]
    mine = expand(d.gradients[wrt].explicit(env))
    for (i, j), x in np.ndenumerate(np.array(env[wrt].tolist(), dtype=object)):
        assert _zero(mine[i, j] - sp.diff(f, x)), (i, j)
    _finite_differences(problem, d, wrt)


def test_latex_puts_odot_between_a_matrix_and_its_bracket():
    problem = parse_problem("np.sum(np.where(X > 0, X, 0))", ["X=n,m"], ["X"])
    assert latex(problem.root, problem) == (
        r"\mathbf{1}^{\top} \operatorname{rowsum}\left(X \odot \left[X > 0\right]\right)")


def test_the_name_I_is_refused(capsys):
    argv = ["derive", "--expr", "np.trace(I @ X)", "--shape", "X=n,n", "--shape", "I=n,n",
            "--wrt", "X"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "symgrad: error: --shape I=n,n: 'I' is the identity matrix in the printed gradients, "
        "so an array named I would read as the identity; choose another name (e.g. M)\n")


READ_BACK = [  # the red team's three commands, and numpy's other spellings of max
    ("np.trace(X @ X @ X)", ["X=n,n"], "X", "3 * np.linalg.matrix_power(X.T, 2)"),
    ("np.sum(np.max(X, axis=0))", ["X=n,m"], "X",
     "np.where(np.arange(n)[:, None] == np.argmax(X, axis=0), 1.0, 0.0)"),
    ("np.sum(X.min(axis=1))", ["X=n,m"], "X",
     "np.where(np.arange(m) == np.argmin(X, axis=1, keepdims=True), 1.0, 0.0)"),
    ("np.amax(X)", ["X=n,m"], "X",
     "np.where(np.arange(m * n).reshape(n, m) == np.argmax(X), 1.0, 0.0)"),
    ("np.sum(C * kron(A, B))", ["A=2,3", "B=2,2", "C=4,6"], "B",
     'np.einsum("ipjq,ij->pq", C.reshape(2, 2, 3, 2), A)'),
    ("np.trace(np.linalg.matrix_power(X, 3))", ["X=n,n"], "X",
     "3 * np.linalg.matrix_power(X.T, 2)"),
]


@pytest.mark.parametrize("case", READ_BACK, ids=[c[0] for c in READ_BACK])
def test_symgrads_numpy_spellings_read_back(case, capsys):
    expr, shapes, wrt, formula = case
    argv = ["verify", "--expr", expr, *[a for s in shapes for a in ("--shape", s)],
            "--wrt", wrt, formula]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"CORRECT: ∂f/∂{wrt} = {formula}\n")


REFUSED = [
    ('np.einsum("ii->i", X)', "formula: np.einsum('ii->i', X): einsum is read in the two block "
     'forms of a Kronecker gradient, np.einsum("ipjq,pq->ij", G.reshape(m, p, n, q), B) and '
     'np.einsum("ipjq,ij->pq", G.reshape(m, p, n, q), A)'),
    ('np.einsum("__import__(os)", X)', "formula: einsum's first argument must be its "
     'subscripts, e.g. "ipjq,pq->ij" (letters, commas and one ->)'),
    ('np.einsum("' + "ab," * 12 + 'a->a", X)', "formula: einsum's first argument must be its "
     'subscripts, e.g. "ipjq,pq->ij" (letters, commas and one ->)'),
    ("X * (X == 1)", "formula: X == 1: '==' is read only in the one-hot form of an arg-max, "
     "np.where(np.arange(n)[:, None] == np.argmax(X, axis=0), 1.0, 0.0); elsewhere use <, <=, "
     "> or >="),
    ("np.where(np.arange(n)[:, None] == np.argmax(X, axis=1), 1.0, 0.0)",
     "formula: np.where(np.arange(n)[:, None] == np.argmax(X, axis=1), 1...: '==' is read "
     "only in the one-hot form of an arg-max, np.where(np.arange(n)[:, None] == "
     "np.argmax(X, axis=0), 1.0, 0.0)"),
    ("X.reshape(4, 4)", "formula: X.reshape(4, 4): reshape is read only inside the forms "
     "symgrad prints (np.arange in a one-hot, .reshape as einsum's operand)"),
    ("np.linalg.matrix_power(X, 65)", "formula: np.linalg.matrix_power(X, 65): matrix_power "
     "takes a square matrix and a whole number 0 … 64"),
    ("X[:, None]", "formula: indexing (subscripts) is not allowed"),
    ("X.shape", "formula: attribute access is not allowed"),
]


@pytest.mark.parametrize(("formula", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_numpy_spellings_are_one_line(formula, message, capsys):
    argv = ["verify", "--expr", "np.sum(X * X)", "--shape", "X=n,n", "--wrt", "X", formula]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"symgrad: error: {message}\n"


def test_network_verify_still_refuses_the_expression_spellings():
    from symgrad.expr import validate

    for bad in ("dZ1.reshape(1)", "X.max(axis=0)", "x == 1", 'np.einsum("ij->i", X)'):
        with pytest.raises(SymgradError):
            validate(bad, where="formula", allow_matrix=True, indexing=True)


def test_generated_modules_solve_and_pass_ruff(tmp_path):
    paths = []
    for k, (expr, shapes) in enumerate([("np.trace(kron(A, B))", SQ2),
                                        ("logdet(A + X.T @ X)", ["X=n,m", "A=m,m"])]):
        out = tmp_path / f"m{k}.py"
        argv = ["generate", "--expr", expr, *[a for s in shapes for a in ("--shape", s)],
                "--wrt", shapes[0][0], "-o", str(out)]
        assert main(argv) == 0
        source = out.read_text(encoding="utf-8")
        assert "np.eye(m * n)" not in source and "np.linalg.inv" not in source
        paths.append(str(out))
    assert "log det(A) and log(det(A)) are evaluated as log |det A|" in source
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", *paths],
                          capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    for p in paths:
        run = subprocess.run([sys.executable, p], capture_output=True, text=True)
        assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout + run.stderr
