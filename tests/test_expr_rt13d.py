"""Issue 13, red team F12/F15/F16 and verify's transposed diagnosis by value.

- F12: logdet of a 20-fold product prints k (X + A)⁻ᵀ, and the generated grad is accurate
  (the textbook form, not a solve against the 20th power);
- F15: derive --steps lists each use of a stated fact as a step, proved with the fact;
- F16: verify without the fact says which flag makes your formula right; the Cookbook's
  symmetric-matrix derivative is named as the convention, not as a factor;
- transposed formulas (square and vector) diagnosed by value on a sample of table rows.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from symgrad.cli import main
from symgrad.exprmode import (
    derive_expr,
    generate_expr,
    numeric_env,
    parse_problem,
    shown,
    text,
)

P20 = "logdet(" + " @ ".join(["(X + A)"] * 20) + ")"


def test_logdet_of_a_twenty_fold_product_is_textbook_and_accurate(tmp_path):
    problem = parse_problem(P20, ["X=n,n", "A=n,n"], "X")
    d = derive_expr(problem)
    assert text(shown(d.gradients["X"]), problem) == "20 (A + X)⁻ᵀ"
    path = tmp_path / "p20.py"
    path.write_text(generate_expr(d, "p20"))
    spec = importlib.util.spec_from_file_location("p20", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    n = 4
    X, A = rng.normal(0, 3, (n, n)), rng.normal(0, 3, (n, n))
    g = mod.grad(X, A)
    g = g["X"] if isinstance(g, dict) else g
    exact = 20 * np.linalg.inv(X + A).T
    assert np.max(np.abs(g - exact)) <= 1e-8 * np.max(np.abs(exact))


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().out


def test_steps_list_the_use_of_an_assumption_proved(capsys):
    code, out = _run(["derive", "--expr", "-sum(Y * log(softmax(X @ W))) / N", "--shape", "X=N,d",
                      "--shape", "W=d,k", "--shape", "Y=N,k", "--wrt", "W",
                      "--assume", "rowsum(Y) = 1", "--steps", "--prove"], capsys)
    assert code == 0
    assert "∂f/∂W = Xᵀ (softmax(X W) − Y)/N" in out
    assert "∂f/∂W: assumed rowsum(Y) = 1: " in out and "proved at tiny sizes (1 firing)" in out
    assert "(none: the swept form" not in out
    assert "1 of 1 firings proved on the tiny instance (assumed rowsum(Y) = 1)" in out
    assert "np.exp(Z - np.max(Z, axis=1, keepdims=True))" in out  # the stable softmax
    code, out = _run(["derive", "--expr", "x.T @ A @ x", "--shape", "x=n,1", "--shape", "A=n,n",
                      "--wrt", "x", "--symmetric", "A", "--steps", "--prove"], capsys)
    assert code == 0 and "∂f/∂x = 2 A x" in out
    assert "∂f/∂x: assumed A = Aᵀ: " in out and "proved at tiny sizes" in out


CE = ["--expr", "-sum(Y * log(softmax(X @ W))) / N", "--shape", "X=N,d", "--shape", "W=d,k",
      "--shape", "Y=N,k", "--wrt", "W"]
QUAD = ["--expr", "x.T @ A @ x", "--shape", "x=n,1", "--shape", "A=n,n", "--wrt", "x"]


@pytest.mark.parametrize("argv, formula, hint", [
    (CE, "X.T @ (softmax(X @ W) - Y) / N",
     '  hint: your formula is right if rowsum(Y) = 1: add --assume "rowsum(Y) = 1"'),
    (QUAD, "2 * A @ x", "  hint: your formula is right if A is symmetric: add --symmetric A"),
])
def test_verify_says_which_assumption_makes_it_right(argv, formula, hint, capsys):
    code, out = _run(["verify", *argv, formula], capsys)
    assert code == 1 and hint in out.splitlines()
    code, out = _run(["verify", *argv, *hint.split("add ")[1].replace('"', "").split(" ", 1),
                      formula], capsys)
    assert code == 0, out


def test_no_hint_when_no_assumption_makes_it_right(capsys):
    code, out = _run(["verify", *QUAD, "3 * A @ x"], capsys)
    assert code == 1 and "hint:" not in out


def test_the_symmetric_convention_is_named_not_a_factor(capsys):
    code, out = _run(["verify", "--expr", "logdet(S)", "--shape", "S=n,n", "--symmetric", "S",
                      "--wrt", "S", "2*inv(S) - np.diag(np.diag(inv(S)))"], capsys)
    assert code == 1
    assert "diagnosis: yours is the symmetric-matrix derivative 2G − diag(diag(G))" in out
    assert "factor" not in out


# square gradients (yours = correctᵀ, same shape) and vectors (a row for a column)
TRANSPOSED = [
    (["--expr", "det(X)", "--shape", "X=n,n", "--wrt", "X"], "det(X) * inv(X)",
     "diagnosis: your formula is transposed (yours = correctᵀ)"),
    (["--expr", "trace(A @ X)", "--shape", "X=n,n", "--shape", "A=n,n", "--wrt", "X"], "A",
     "diagnosis: your formula is transposed (yours = correctᵀ)"),
    (["--expr", "trace(A @ inv(X))", "--shape", "X=n,n", "--shape", "A=n,n", "--wrt", "X"],
     "-(inv(X) @ A @ inv(X))", "diagnosis: your formula is transposed (yours = correctᵀ)"),
    (["--expr", "logdet(X @ X)", "--shape", "X=n,n", "--wrt", "X"], "2 * inv(X)",
     "diagnosis: your formula is transposed (yours = correctᵀ)"),
    (QUAD, "x.T @ (A + A.T)", "WRONG: your formula is transposed (it is 1×n; ∂f/∂x is n×1; "
     "yours = correctᵀ)"),
    (QUAD, "x.T @ A", "and transposed it still differs"),
    (["--expr", "x.T @ inv(A) @ x", "--shape", "x=n,1", "--shape", "A=n,n", "--wrt", "x"],
     "x.T @ (inv(A) + inv(A).T)", "yours = correctᵀ)"),
]


@pytest.mark.parametrize("argv, formula, needle", TRANSPOSED)
def test_transposed_is_diagnosed_by_value(argv, formula, needle, capsys):
    code, out = _run(["verify", *argv, formula], capsys)
    assert code == 1 and needle in out, out


def test_transposed_value_check_uses_the_values():
    """yoursᵀ is compared with the gradient at random instances (not only the shapes)."""
    problem = parse_problem("x.T @ A @ x", ["x=n,1", "A=n,n"], "x")
    env = numeric_env(problem, 0, 0)
    from symgrad.exprmode import verify_expr

    right = verify_expr(problem, "x", "x.T @ (A + A.T)").text()
    wrong = verify_expr(problem, "x", "x.T @ A").text()
    assert "yours = correctᵀ" in right and "still differs" in wrong
    assert env["A"].shape[0] == env["x"].shape[0]
