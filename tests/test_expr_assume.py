"""Expression mode (issue 13): assumptions the user states and the numerics of generated
expression modules.

* ``--symmetric A``: the printed gradient uses A = Aᵀ (∂ xᵀAx = 2Ax, ∂ tr(XᵀAX) = 2AX),
  random instances are symmetric, the proof expands at a symmetric A, and a gradient with
  respect to A itself is the unconstrained one (the convention is printed).
* ``--assume "rowsum(Y) = 1"``: softmax cross-entropy gives Xᵀ(softmax(XW) − Y)/N, which
  verify accepts; rows of Y are drawn nonnegative and summing to 1.
* ``--positive x``: x is drawn positive (verify, check, the module's DOMAIN/POSITIVE).
* Generated modules: log(softmax(·)) lowered as Z − logsumexp(Z) (finite for logits over
  ±1000); value/grad refuse an argument of the wrong shape in one line.

Every claim is checked against finite differences or the scalar-expansion proof.
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
    input_domain,
    numeric_env,
    parse_problem,
    prove,
    text,
    verify_expr,
)

QUAD = ("x.T @ A @ x", ["x=n,1", "A=n,n"])
TRACE = ("trace(X.T @ A @ X)", ["X=n,k", "A=n,n"])
CE = ("-sum(Y * log(softmax(X @ W))) / N", ["X=N,d", "W=d,k", "Y=N,k"])
SYM = Assumptions(symmetric=("A",))
ROWS = Assumptions(rowsum=("Y",))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module(tmp_path: Path, d, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(generate_expr(d, name))
    return _load(path)


def _argv(command: str, expr: str, shapes: list[str], wrt: str, *extra: str) -> list[str]:
    argv = [command, "--expr", expr, "--wrt", wrt]
    for s in shapes:
        argv += ["--shape", s]
    return [*argv, *extra]


# --------------------------------------------------------------------------
# Printed forms, proved and checked against finite differences
# --------------------------------------------------------------------------


@pytest.mark.parametrize("expr,shapes,assume,wrt,printed,plain", [
    (*QUAD, SYM, "x", "2 A x", "(A + Aᵀ) x"),
    (*TRACE, SYM, "X", "2 A X", "(A + Aᵀ) X"),
    (*CE, ROWS, "W", "Xᵀ (softmax(X W) − Y)/N", None),
], ids=["quadratic-form", "trace-XtAX", "softmax-ce"])
def test_assumed_forms_are_printed_proved_and_fd_checked(expr, shapes, assume, wrt, printed,
                                                        plain, tmp_path):
    p = parse_problem(expr, shapes, wrt, assume)
    d = derive_expr(p)
    assert text(d.gradients[wrt], p) == printed
    ok, lines = prove(d)  # expanded at a point where the facts hold
    assert ok and all("proved equal" in line for line in lines), lines
    module = _module(tmp_path, d, f"m_{wrt.lower()}")
    errors = module.check()
    assert max(errors.values()) <= 1e-6, errors
    if plain is not None:  # without the assumption the form is the general one
        q = parse_problem(expr, shapes, wrt)
        assert text(derive_expr(q).gradients[wrt], q) == plain


def test_gradient_wrt_a_symmetric_matrix_is_the_unconstrained_one(capsys):
    """∂ xᵀAx/∂A = x xᵀ (each entry varied on its own, Cookbook §2.8), not 2xxᵀ − diag;
    the convention is stated in the output and the proof holds at a symmetric A."""
    p = parse_problem(*QUAD, "A", SYM)
    d = derive_expr(p)
    assert text(d.gradients["A"], p) == "x xᵀ"
    assert prove(d)[0]
    assert main(_argv("derive", *QUAD, "A", "--symmetric", "A")) == 0
    out = capsys.readouterr().out
    assert "  assuming A = Aᵀ (symmetric)\n" in out
    assert ("∂f/∂A is the unconstrained gradient: each entry of A varied on its own (the "
            "Matrix Cookbook §2.8), taken at a symmetric A") in out
    # the symmetric-structured alternative is refused: it is not the unconstrained gradient
    assert main(_argv("verify", *QUAD, "A", "--symmetric", "A",
                      "2 * x @ x.T - np.diag(np.diag(x @ x.T))")) in (1, 2)


# --------------------------------------------------------------------------
# verify accepts the textbook formula under the assumption, and only under it
# --------------------------------------------------------------------------


@pytest.mark.parametrize("expr,shapes,wrt,option,formula", [
    (*CE, "W", ["--assume", "rowsum(Y) = 1"], "X.T @ (softmax(X @ W) - Y) / N"),
    (*CE, "W", ["--assume", "sum(Y, axis=1) = 1"], "X.T @ (softmax(X @ W) - Y) / N"),
    (*QUAD, "x", ["--symmetric", "A"], "2 * A @ x"),
    (*QUAD, "x", ["--assume", "A = A.T"], "2 * A @ x"),
    (*TRACE, "X", ["--symmetric", "A"], "2 * A @ X"),
], ids=["ce-rowsum", "ce-sum-axis1", "quad-symmetric", "quad-assume", "trace-symmetric"])
def test_verify_accepts_textbook_formula_only_under_the_assumption(expr, shapes, wrt, option,
                                                                  formula, capsys):
    assert main(_argv("verify", expr, shapes, wrt, *option, formula)) == 0
    out = capsys.readouterr().out
    assert out.startswith("CORRECT") and "  assuming: " in out and "symbolic: proved" in out, out
    assert main(_argv("verify", expr, shapes, wrt, formula)) == 1  # Y, A drawn freely
    assert capsys.readouterr().out.startswith("WRONG")


def test_verify_still_finds_a_wrong_formula_under_the_assumption():
    p = parse_problem(*CE, "W", ROWS)
    v = verify_expr(p, "W", "X.T @ (Y - softmax(X @ W)) / N")
    assert not v.ok and "diagnosis: sign" in v.text()
    q = parse_problem(*QUAD, "x", SYM)
    v = verify_expr(q, "x", "A @ x")
    assert not v.ok and "factor (yours = 0.5 × correct)" in v.text()


# --------------------------------------------------------------------------
# Random instances satisfy the facts (verify's draws and the module's)
# --------------------------------------------------------------------------


def test_random_instances_satisfy_the_facts(tmp_path):
    assume = Assumptions(symmetric=("A",), rowsum=("Y",), positive=("x",))
    p = parse_problem("sum(Y @ A) + sum(log(x))", ["Y=N,n", "A=n,n", "x=n,1"], "A,x", assume)
    for k in range(3):
        for draw in ("real", "positive", "negative"):
            env = numeric_env(p, seed=1, k=k, draw=draw)
            assert np.array_equal(env["A"], env["A"].T)
            assert np.all(env["Y"] >= 0) and np.allclose(env["Y"].sum(axis=1), 1)
            assert np.all(env["x"] > 0)
    assert np.any(numeric_env(p, seed=1, draw="real")["A"] < 0)  # A itself is not positive
    module = _module(tmp_path, derive_expr(p), "facts")
    assert (module.SYMMETRIC, module.ROWSUM_ONE, module.POSITIVE) == (["A"], ["Y"], ["x"])
    for seed in range(3):
        args = module.random_arguments(seed)
        assert np.array_equal(args["A"], args["A"].T)
        assert np.allclose(args["Y"].sum(axis=1), 1) and np.all(args["Y"] >= 0)
        assert np.all(args["x"] > 0)
    assert max(module.check().values()) <= 1e-6


# --------------------------------------------------------------------------
# --positive: the user's control of the domain
# --------------------------------------------------------------------------


def test_positive_sets_the_domain_of_verify_and_the_module(tmp_path, capsys):
    expr, shapes = "sum(y * log(x)) + sum(sqrt(x))", ["x=n,1", "y=n,1"]
    formula = "y / x + 1 / (2 * sqrt(x))"
    p = parse_problem(expr, shapes, "x", Assumptions(positive=("x",)))
    assert input_domain(p) == "real"  # y is drawn real, x positive: the user's word
    env = numeric_env(p, seed=0)
    assert np.all(env["x"] > 0) and np.any(env["y"] < 0)
    assert verify_expr(p, "x", formula).ok
    module = _module(tmp_path, derive_expr(p), "pos")
    assert (module.DOMAIN, module.POSITIVE) == ("real", ["x"])
    args = module.random_arguments(0)
    assert np.all(args["x"] > 0) and np.any(args["y"] < 0)
    assert max(module.check().values()) <= 1e-6
    assert main(_argv("verify", expr, shapes, "x", "--positive", "x", formula)) == 0
    assert "assuming: x > 0 (entrywise)" in capsys.readouterr().out
    everything = parse_problem(expr, shapes, "x", Assumptions(positive=("x", "y")))
    assert input_domain(everything) == "positive"


# --------------------------------------------------------------------------
# Bad input: one line, exit 2, the supported forms listed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("option,needles", [
    (["--assume", "colsum(Y) = 1"], ["--assume colsum(Y) = 1: ", "supported: rowsum(NAME) = 1"]),
    (["--assume", "rowsum(Y) = 2"], ["not a fact symgrad can use", "NAME = NAME.T; NAME > 0"]),
    (["--assume", "__import__('os')"], ["string literals", "supported: rowsum(NAME) = 1"]),
    (["--assume", "Y == 1"], ["'=='", "supported: "]),
    (["--assume", "rowsum(Y) = 1 = 1"], ["one '=' per fact"]),
    (["--assume", "rowsum(Z) = 1"], ["'Z' has no shape; add --shape Z=ROWS,COLS"]),
    (["--symmetric", "X"], ["--symmetric X: a symmetric matrix is square, and X is N×d"]),
    (["--positive", "q"], ["--positive q: 'q' has no shape"]),
])
def test_bad_assumptions_exit_2_with_one_line(option, needles, capsys):
    assert main(_argv("derive", *CE, "W", *option)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symgrad: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_assumptions_without_expr_are_refused(tmp_path, capsys):
    assert main(["derive", str(tmp_path / "net.toml"), "--symmetric", "A"]) == 2
    assert "--symmetric, --assume and --positive go with --expr" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Numerics of generated modules: stable log-softmax, shape checks
# --------------------------------------------------------------------------


def _stable_ce(X, W, Y):
    Z = X @ W
    top = Z.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(Z - top).sum(axis=1, keepdims=True))
    S = np.exp(Z - lse)
    return -np.sum(Y * (Z - lse)) / len(X), X.T @ (S * Y.sum(axis=1, keepdims=True) - Y) / len(X)


@pytest.mark.parametrize("assume", [None, ROWS], ids=["free-Y", "rowsum-Y"])
def test_softmax_cross_entropy_is_finite_for_logits_over_1000(assume, tmp_path):
    d = derive_expr(parse_problem(*CE, "W", assume))
    module = _module(tmp_path, d, "ce")
    assert module.DOMAIN == "real"  # log softmax is Z − logsumexp(Z): defined everywhere
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 3))
    W = rng.standard_normal((3, 4))
    W *= 1000 / np.abs(X @ W).max()  # logits spread over ±1000
    Y = np.eye(4)[rng.integers(0, 4, 8)]
    value, grads = module.value_and_grad(X, W, Y)
    want_value, want_grad = _stable_ce(X, W, Y)
    assert np.isfinite(value) and np.all(np.isfinite(grads["W"]))
    assert np.isclose(value, want_value, rtol=1e-12)
    assert np.allclose(grads["W"], want_grad, rtol=1e-10, atol=1e-12)
    assert max(module.check().values()) <= 1e-6  # and right at ordinary logits


def test_log_softmax_alone_is_lowered_stably(tmp_path):
    d = derive_expr(parse_problem("sum(Y * log(softmax(Z)))", ["Z=n,k", "Y=n,k"], "Z"))
    module = _module(tmp_path, d, "ls")
    Z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 999.0, 1000.0]])
    Y = np.ones_like(Z)
    top = Z.max(axis=1, keepdims=True)
    lse = top + np.log(np.exp(Z - top).sum(axis=1, keepdims=True))
    assert np.isclose(module.value(Z, Y), np.sum(Z - lse), rtol=1e-12)
    assert np.all(np.isfinite(module.grad(Z, Y)["Z"]))
    assert max(module.check().values()) <= 1e-6


def test_generated_functions_check_argument_shapes(tmp_path):
    d = derive_expr(parse_problem("sum((X @ w - y)**2) / 2 + lam * sum(w**2)",
                                  ["X=N,d", "w=d,1", "y=N,1", "lam=1,1"], "w"))
    module = _module(tmp_path, d, "ls")
    rng = np.random.default_rng(0)
    X, w, y = rng.standard_normal((5, 3)), rng.standard_normal((3, 1)), rng.standard_normal((5, 1))
    good = module.value(X, w, y, 0.1)
    assert np.isclose(good, 0.5 * np.sum((X @ w - y) ** 2) + 0.1 * np.sum(w**2))
    assert module.grad(X, w, y, np.array([[0.1]]))["w"].shape == (3, 1)
    bad = [
        ((X, w[:, 0], y, 0.1), "value: w has shape (3,), expected (d, 1) = (3, 1)"),
        ((X, w, y[:4], 0.1), "value: y has shape (4, 1), expected (N, 1) = (5, 1)"),
        ((X, w, y[:, 0], 0.1), "value: y has shape (5,), expected (N, 1) = (5, 1)"),
        ((X.T, w, y, 0.1), "value: X has shape (3, 5), expected (N, d) = (5, 3) (transposed?)"),
        ((X, w, y, np.ones(2)), "value: lam has shape (2,), expected a scalar (1, 1)"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError) as e:
            module.value(*args)
        assert str(e.value) == message
    with pytest.raises(ValueError, match=r"^grad: w has shape \(3,\), expected \(d, 1\)"):
        module.grad(X, w[:, 0], y, 0.1)
    assert max(module.check().values()) <= 1e-6


def test_every_format_states_the_assumptions(capsys):
    argv = _argv("derive", *CE, "W", "--assume", "rowsum(Y) = 1", "--positive", "X")
    assert main([*argv, "--format", "latex"]) == 0
    assert (r"&\text{assuming } Y \mathbf{1} = \mathbf{1},\ Y \ge 0,\quad X > 0 \\"
            in capsys.readouterr().out)
    assert main([*argv, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "assuming rowsum(Y) = 𝟏, Y ≥ 0 (rows one-hot or probabilities); X > 0 (entrywise)" in out
    # graph draws the expression as written: the options are not offered there
    assert main(["graph", "--expr", QUAD[0], "--shape", "x=n,1", "--shape", "A=n,n",
                 "--wrt", "x", "--symmetric", "A"]) == 2
    assert "unrecognized argument --symmetric" in capsys.readouterr().err
