"""Generated expression modules and their inputs (issue 13, red-team F9 and F17).

* F9: grad() refuses, in one line naming the argument and the fact, data that break an
  assumption its gradient was derived under (rows of Y summing to 1, A symmetric, x > 0):
  there the gradient is wrong (checked against central differences of value, which stays
  the expression as written and is right everywhere).
* F17: the argument blamed for a shape mismatch is the one without which the others agree
  (a transposed X, not the W after it); Python lists are read as np.asarray reads them;
  a square argument binds ``n, _ = X.shape`` (never ``n, n``); the docstring does not
  contradict the header's "edit freely".
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from symgrad.exprmode import Assumptions, derive_expr, generate_expr, parse_problem

CE = ("-sum(Y * log(softmax(X @ W))) / N", ["X=N,d", "W=d,k", "Y=N,k"], "W")
QUAD = ("x.T @ A @ x", ["x=n,1", "A=n,n"], "x")
LOGS = ("sum(log(x)) + sum(x**2)", ["x=n,1"], "x")


def _module(tmp_path: Path, spec, assume: Assumptions, name: str):
    expr, shapes, wrt = spec
    path = tmp_path / f"{name}.py"
    path.write_text(generate_expr(derive_expr(parse_problem(expr, shapes, wrt, assume)), name))
    module_spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(str(tmp_path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, path


def _fd(value, args, name, eps=1e-6):
    x = np.array(args[name], dtype=float)
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        out[i] = (value(**{**args, name: up}) - value(**{**args, name: down})) / (2 * eps)
    return out


def _refused(fn, args, message):
    with pytest.raises(ValueError) as e:
        fn(**args)
    assert str(e.value) == message


def test_rowsum_assumption_is_checked(tmp_path):
    m, _ = _module(tmp_path, CE, Assumptions(rowsum=("Y",)), "ce")
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((6, 3)), rng.standard_normal((3, 4))
    Y = np.eye(4)[rng.integers(0, 4, 6)]
    good = {"X": X, "W": W, "Y": Y}
    assert np.allclose(m.grad(**good)["W"], _fd(m.value, good, "W"), atol=1e-8)
    Y[3] = 0  # a padded row: the textbook gradient is wrong there
    bad = {"X": X, "W": W, "Y": Y}
    z = X @ W
    soft = np.exp(z - z.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    textbook = X.T @ (soft - Y) / 6  # what the assumed gradient computes
    assert not np.allclose(textbook, _fd(m.value, bad, "W"), atol=1e-3)
    _refused(m.grad, bad, "grad: the rows of Y must sum to 1 (assumed by --assume "
                          "'rowsum(Y) = 1'); row 3 sums to 0")
    assert np.isfinite(m.value(**bad))  # value is the expression as written: no assumption


def test_symmetric_and_positive_assumptions_are_checked(tmp_path):
    m, _ = _module(tmp_path, QUAD, Assumptions(symmetric=("A",)), "quad")
    x = np.array([[1.0], [2.0], [-1.0]])
    A = np.array([[2.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.5, 0.0, 1.0]])
    assert np.allclose(m.grad(x, A)["x"], _fd(m.value, {"x": x, "A": A}, "x"), atol=1e-7)
    assert m.grad(x, A + 1e-12 * np.triu(A))["x"].shape == (3, 1)  # within 1e-9 relative
    B = A.copy()
    B[0, 2] = 4.0
    assert not np.allclose(2 * B @ x, _fd(m.value, {"x": x, "A": B}, "x"), atol=1e-3)
    _refused(m.grad, {"x": x, "A": B},
             "grad: A must be symmetric (assumed by --symmetric A); A[0, 2] = 4 but A[2, 0] = 0.5")
    p, _ = _module(tmp_path, LOGS, Assumptions(positive=("x",)), "logs")
    assert p.grad([[1.0], [2.0]])["x"].shape == (2, 1)
    _refused(p.grad, {"x": np.array([[1.0], [-2.5]])},
             "grad: x must be positive (assumed by --positive x); x[1, 0] = -2.5")


def test_transposed_argument_is_blamed_and_lists_are_arrays(tmp_path):
    m, _ = _module(tmp_path, CE, Assumptions(rowsum=("Y",)), "ce")
    rng = np.random.default_rng(1)
    X, W = rng.standard_normal((6, 3)), rng.standard_normal((3, 4))
    Y = np.eye(4)[rng.integers(0, 4, 6)]
    _refused(m.value, {"X": X.T, "W": W, "Y": Y},
             "value: X has shape (3, 6), expected (N, d) = (6, 3) (transposed?)")
    _refused(m.grad, {"X": X, "W": W.T, "Y": Y},
             "grad: W has shape (4, 3), expected (d, k) = (3, 4) (transposed?)")
    _refused(m.value, {"X": X, "W": W, "Y": Y[:5]},
             "value: Y has shape (5, 4), expected (N, k) = (6, 4)")
    _refused(m.grad, {"X": X + 0j, "W": W, "Y": Y},
             "grad: X is complex; f is a real function (give real arrays)")
    _refused(m.value, {"X": X[:0], "W": W, "Y": Y[:0]},
             "value: X has shape (0, 3), an empty array")
    lists = {"X": X.tolist(), "W": W.tolist(), "Y": Y.tolist()}
    assert m.value(**lists) == m.value(X, W, Y)
    assert np.array_equal(m.grad(**lists)["W"], m.grad(X, W, Y)["W"])


def test_square_binding_header_and_ruff(tmp_path):
    m, path = _module(tmp_path, ("sum(X @ X @ A)", ["X=n,n", "A=n,n"], "X"), Assumptions(), "sq")
    body = path.read_text()
    assert "    n, _ = X.shape\n" in body and "n, n =" not in body
    assert "do not edit" not in body
    assert np.allclose(m.grad([[1, 2], [3, 4]], np.eye(2))["X"], [[7, 11], [9, 13]])
    again = tmp_path / "again"
    again.mkdir()
    assert _module(again, ("sum(X @ X @ A)", ["X=n,n", "A=n,n"], "X"), Assumptions(),
                   "sq")[1].read_text() == body
    ruff = Path(sys.executable).with_name("ruff")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([str(ruff), "check", "--config", str(root / "pyproject.toml"),
                           str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_a_singular_matrix_is_a_one_line_value_error(tmp_path):
    m, path = _module(tmp_path, ("trace(inv(X) @ A)", ["X=n,n", "A=n,n"], "X"), Assumptions(),
                      "inv")
    args = {"X": np.ones((3, 3)), "A": np.eye(3)}
    _refused(m.grad, args, "grad: a matrix f inverts is singular at these arguments "
                           "(Singular matrix)")
    _refused(m.value, args, "value: a matrix f inverts is singular at these arguments "
                            "(Singular matrix)")
    assert m.grad.__name__ == "grad" and max(m.check().values()) <= 1e-6
    ruff = Path(sys.executable).with_name("ruff")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([str(ruff), "check", "--config", str(root / "pyproject.toml"), str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
