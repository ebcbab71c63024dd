"""Issue-13 red-team findings F1, F2, F4–F7, F18: invertible instance sizes shared by
verify and the generated module, confirmed diagnoses, stable column softmax and log σ.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from symgrad.cli import main
from symgrad.exprmode import (
    Assumptions,
    derive_expr,
    generate_expr,
    instance_sizes,
    module_context,
    parse_problem,
    verify_expr,
)


def _module(tmp_path: Path, expr: str, shapes: list[str], wrt: str, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(generate_expr(derive_expr(parse_problem(expr, shapes, wrt)), name))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GRAM = [("det(X.T @ X)", "2*np.linalg.det(X.T@X) * X @ np.linalg.inv(X.T @ X)"),
        ("logdet(X.T @ X)", "2 * X @ np.linalg.inv(X.T @ X)")]


@pytest.mark.parametrize(("expr", "formula"), GRAM)
def test_gram_determinant_verified_with_a_rectangular_x(expr, formula, capsys):
    """F1: XᵀX with X n×m is drawn with n > m (full rank), so the Cookbook identity is
    CORRECT (exit 0, proved), never an internal error on a singular instance."""
    problem = parse_problem(expr, ["X=n,m"], "X")
    for k in range(3):
        sizes = {str(s): v for s, v in instance_sizes(problem, k).items()}
        assert sizes["n"] > sizes["m"]
    assert main(["verify", "--expr", expr, "--shape", "X=n,m", "--wrt", "X", formula]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CORRECT")
    assert "instance 1 (n=4 m=3)" in out and "proved equal" in out


@pytest.mark.parametrize("expr", [e for e, _ in GRAM])
def test_gram_module_check_passes_at_its_check_sizes(expr, tmp_path):
    """F2: the module's CHECK_SIZES are verify's first instance, XᵀX is invertible there,
    and its own check (central differences) passes."""
    problem = parse_problem(expr, ["X=n,m"], "X")
    assert module_context(derive_expr(problem))["sizes"] == {"n": 4, "m": 3}
    m = _module(tmp_path, expr, ["X=n,m"], "X", "gram")
    args = m.random_arguments(0)
    assert np.linalg.matrix_rank(args["X"].T @ args["X"]) == 3
    assert np.isfinite(m.value(**args))
    assert max(m.check(0).values()) < 1e-6


def _verdict(expr, shapes, wrt, formula, symmetric=()):
    problem = parse_problem(expr, shapes, wrt, Assumptions(symmetric=tuple(symmetric))
                            if symmetric else None)
    return verify_expr(problem, wrt, formula)


def _diagnosis(v) -> list[str]:
    return [line for line in v.lines if "diagnosis" in line]


TRACES = "np.trace(A @ X) + np.trace(X.T @ X)"
SQUARE = ["X=n,n", "A=n,n"]


def test_no_factor_diagnosis_unless_it_reproduces_your_values():
    """F4: a transposed term (yours = A + 2X, correct Aᵀ + 2X) is WRONG without the false
    "yours = 1 × correct"; nor is the symmetric-convention logdet gradient called 2 × correct
    (its diagonal agrees); a real factor is still named."""
    v = _verdict(TRACES, SQUARE, "X", "A + 2*X")
    assert not v.ok and _diagnosis(v) == []
    v = _verdict("logdet(S)", ["S=n,n"], "S",
                 "2*np.linalg.inv(S) - np.diag(np.diag(np.linalg.inv(S)))", symmetric=["S"])
    assert not v.ok and not any("factor" in line for line in _diagnosis(v))
    v = _verdict(TRACES, SQUARE, "X", "3 * A.T + 6 * X")
    assert _diagnosis(v) == ["  diagnosis: off by a constant factor (yours = 3 × correct)"]
    v = _verdict(TRACES, SQUARE, "X", "-(A.T + 2 * X)")
    assert _diagnosis(v) == ["  diagnosis: sign (your formula is the negative of the gradient)"]


@pytest.mark.parametrize(("expr", "shapes", "formula"), [
    ("det(X)", ["X=n,n"], "np.linalg.det(X) * np.linalg.inv(X)"),
    ("np.trace(A @ X)", SQUARE, "A"),
    ("np.trace(A @ inv(X))", SQUARE, "-(np.linalg.inv(X) @ A @ np.linalg.inv(X))"),
])
def test_square_transposed_formula_diagnosed(expr, shapes, formula):
    """F5: X⁻¹ for X⁻ᵀ (and the like), where the gradient is square."""
    v = _verdict(expr, shapes, "X", formula)
    assert not v.ok
    assert _diagnosis(v) == ["  diagnosis: your formula is transposed (yours = correctᵀ)"]


def test_symmetric_matrix_is_not_called_transposed():
    """A wrong formula whose transpose is not the gradient gets no transposed diagnosis."""
    v = _verdict(TRACES, SQUARE, "X", "A.T + 3 * X")
    assert not any("transposed" in line for line in v.lines)


def test_extra_term_keeps_its_sign():
    """F6: yours − correct = −S⁻¹(X − mu)ᵀ(X − mu)S⁻¹/2: the extra term is printed with its
    minus (the user forgot the /2, they did not add a positive term)."""
    v = _verdict("N * logdet(S) / 2 + trace(inv(S) @ (X - mu).T @ (X - mu)) / 2",
                 ["X=N,n", "mu=1,n", "S=n,n"], "S",
                 "N * np.linalg.inv(S) / 2 - np.linalg.inv(S) @ (X - mu).T @ (X - mu) "
                 "@ np.linalg.inv(S)", symmetric=["S"])
    assert _diagnosis(v) == ["  diagnosis: an extra term − S⁻¹ (X − mu)ᵀ (X − mu) S⁻¹/2"]
    v = _verdict(TRACES, SQUARE, "X", "A.T + 2 * X + A.T")
    assert _diagnosis(v) == ["  diagnosis: an extra term + Aᵀ"]
    v = _verdict(TRACES, SQUARE, "X", "2 * X")
    assert _diagnosis(v) == ["  diagnosis: missing term + Aᵀ"]


def _logaddexp_rows(z: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(z, axis=0, keepdims=True)


def test_column_softmax_cross_entropy_finite_at_large_logits(tmp_path):
    """F7: softmax(Z, axis=0) inside a log is lowered Z − logsumexp down the columns: value
    and gradient finite at logits ±1000 and equal to the stable reference."""
    m = _module(tmp_path, "-np.sum(Y * np.log(softmax(Z, axis=0)))", ["Z=N,k", "Y=N,k"], "Z",
                "ce_col")
    rng = np.random.default_rng(0)
    z = rng.uniform(-1000, 1000, (6, 4))
    y = np.eye(4)[rng.integers(0, 4, 6)]
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        f = m.value(z, y)
        g = m.grad(z, y)["Z"]
    log_p = z - _logaddexp_rows(z)
    assert f == pytest.approx(-np.sum(y * log_p), rel=1e-12)
    assert np.allclose(g, y.sum(axis=0, keepdims=True) * np.exp(log_p) - y, atol=1e-12)
    assert max(m.check(0).values()) < 1e-6


def test_log_sigmoid_cross_entropy_value_finite_at_large_logits(tmp_path):
    """F18: log σ(z) and log(1 − σ(z)) are lowered −softplus(∓z)."""
    m = _module(tmp_path, "-np.sum(y * np.log(sigmoid(z)) + (1 - y) * np.log(1 - sigmoid(z)))",
                ["z=N,1", "y=N,1"], "z", "bce")
    rng = np.random.default_rng(0)
    z = rng.uniform(-1000, 1000, (6, 1))
    y = rng.integers(0, 2, (6, 1)).astype(float)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        f = m.value(z, y)
        g = m.grad(z, y)["z"]
    ref = np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))
    assert f == pytest.approx(ref, rel=1e-12)
    assert np.allclose(g, 1 / (1 + np.exp(-np.clip(z, -700, 700))) - y, atol=1e-12)
    assert max(m.check(0).values()) < 1e-6
