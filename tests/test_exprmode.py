"""Expression mode (issue 7): a table of textbook expressions.

For each row: the printed gradient is the closed form a person writes; that closed form
(typed in numpy syntax) is proved equal to the derived gradient *and* to SymPy's
entrywise derivative of the explicitly expanded expression on a tiny instance; the
generated module matches central finite differences in float64.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.exprmode import (
    build,
    derive_expr,
    expand,
    explicit_env,
    generate_expr,
    is_zero,
    parse_problem,
    prove,
    text,
    verify_expr,
)

XW = ["X=N,d", "w=d,1", "y=N,1"]
NET = ["X=N,d", "W1=d,h", "b1=1,h", "W2=h,k", "b2=1,k", "Y=N,k"]
NET_EXPR = "sum((tanh(X @ W1 + b1) @ W2 + b2 - Y)**2) / (2 * N)"

# id, EXPR, shapes, {wrt: (printed gradient, closed form in numpy syntax)}
TABLE = [
    ("logistic", "sum(log(1 + exp(-y * (X @ w)))) / N", XW,
     {"w": ("−Xᵀ (y ⊙ σ(−y ⊙ (X w)))/N", "-X.T @ (y * sigmoid(-y * (X @ w))) / N")}),
    ("least-squares", "norm(X @ w - y)**2 / 2", XW,
     {"w": ("Xᵀ (X w − y)", "X.T @ (X @ w - y)")}),
    ("ridge", "norm(X @ w - y)**2 / 2 + lam * norm(w)**2 / 2", [*XW, "lam=1,1"],
     {"w": ("Xᵀ (X w − y) + λ w", "X.T @ (X @ w - y) + lam * w")}),
    ("trace-WtAW", "trace(W.T @ A @ W)", ["W=n,k", "A=n,n"],
     {"W": ("(A + Aᵀ) W", "(A + A.T) @ W")}),
    ("quadratic-form", "x.T @ A @ x", ["x=n,1", "A=n,n"],
     {"x": ("(A + Aᵀ) x", "(A + A.T) @ x")}),
    ("softmax-regression", "sum(logsumexp(X @ W, axis=1)) / N - sum(Y * (X @ W)) / N",
     ["X=N,d", "W=d,k", "Y=N,k"],
     {"W": ("Xᵀ (softmax(X W) − Y)/N", "X.T @ (exp(X @ W) / sum(exp(X @ W), axis=1, keepdims=True) - Y) / N")}),
    ("gaussian-nll-mean",
     "sum((X - mu)**2) / (2 * sigma**2) + N * d * log(2 * pi * sigma**2) / 2",
     ["X=N,d", "mu=1,d", "sigma=1,1"],
     {"mu": ("𝟏ᵀ (mu − X)/σ²", "sum(mu - X, axis=0, keepdims=True) / sigma**2")}),
    ("huber", "sum(huber(X @ w - y)) / N", XW,
     {"w": ("Xᵀ ((X w − y) ⊙ [|X w − y| ≤ 1] + sign(X w − y) ⊙ [|X w − y| > 1])/N",
            "X.T @ where(abs(X @ w - y) <= 1, X @ w - y, sign(X @ w - y)) / N")}),
    ("huber-where", "sum(where(abs(X @ w - y) <= 1, (X @ w - y)**2 / 2, abs(X @ w - y) - 1/2)) / N",
     XW, {"w": ("Xᵀ ((X w − y) ⊙ [|X w − y| ≤ 1] + sign(X w − y) ⊙ [|X w − y| > 1])/N",
                "X.T @ where(abs(X @ w - y) <= 1, X @ w - y, sign(X @ w - y)) / N")}),
    ("two-layer-net", NET_EXPR, NET, {
        "W1": ("Xᵀ (((tanh(X W₁ + b₁) W₂ + b₂ − Y) W₂ᵀ) ⊙ (1 − tanh(X W₁ + b₁)²))/N",
               "X.T @ (((tanh(X @ W1 + b1) @ W2 + b2 - Y) @ W2.T) * (1 - tanh(X @ W1 + b1)**2)) / N"),
        "b1": ("𝟏ᵀ (((tanh(X W₁ + b₁) W₂ + b₂ − Y) W₂ᵀ) ⊙ (1 − tanh(X W₁ + b₁)²))/N",
               "sum(((tanh(X @ W1 + b1) @ W2 + b2 - Y) @ W2.T) * (1 - tanh(X @ W1 + b1)**2), axis=0, keepdims=True) / N"),
        "W2": ("tanh(X W₁ + b₁)ᵀ (tanh(X W₁ + b₁) W₂ + b₂ − Y)/N",
               "tanh(X @ W1 + b1).T @ (tanh(X @ W1 + b1) @ W2 + b2 - Y) / N"),
        "b2": ("𝟏ᵀ (tanh(X W₁ + b₁) W₂ + b₂ − Y)/N",
               "sum(tanh(X @ W1 + b1) @ W2 + b2 - Y, axis=0, keepdims=True) / N"),
    }),
    ("poisson", "sum(exp(X @ w) - y * (X @ w)) / N", XW,
     {"w": ("Xᵀ (exp(X w) − y)/N", "X.T @ (exp(X @ w) - y) / N")}),
    ("trace-AX", "trace(A @ X)", ["A=n,m", "X=m,n"], {"X": ("Aᵀ", "A.T")}),
    ("logsumexp-total", "logsumexp(x)", ["x=n,1"],
     {"x": ("exp(x − logsumexp(x))", "exp(x) / sum(exp(x))")}),
    ("matrix-factorization", "norm(R - U @ V.T)**2 / 2", ["R=m,n", "U=m,k", "V=n,k"],
     {"U": ("(U Vᵀ − R) V", "(U @ V.T - R) @ V"), "V": ("(V Uᵀ − Rᵀ) U", "(V @ U.T - R.T) @ U")}),
    ("tanh-sum", "sum(tanh(X @ w))", XW, {"w": ("Xᵀ (1 − tanh(X w)²)", "X.T @ (1 - tanh(X @ w)**2)")}),
    ("mean-squared", "mean((X @ w - y)**2)", XW, {"w": ("2 Xᵀ (X w − y)/N", "2 * X.T @ (X @ w - y) / N")}),
    ("bilinear", "u.T @ A @ v", ["u=m,1", "A=m,n", "v=n,1"], {"A": ("u vᵀ", "u @ v.T")}),
    ("frobenius-norm", "norm(W)", ["W=m,n"], {"W": ("W/‖W‖", "W / sqrt(sum(W**2))")}),
    ("cross-entropy", "-sum(y * log(sigmoid(X @ w)) + (1 - y) * log(1 - sigmoid(X @ w))) / N", XW,
     {"w": ("Xᵀ (σ(X w) − y)/N", "X.T @ (sigmoid(X @ w) - y) / N")}),
]
IDS = [row[0] for row in TABLE]


@pytest.fixture(scope="module")
def derived():
    cache = {}

    def get(row):
        key = row[0]
        if key not in cache:
            problem = parse_problem(row[1], row[2], list(row[3]))
            cache[key] = (problem, derive_expr(problem))
        return cache[key]

    return get


def _zero(e: sp.Expr, rng: random.Random) -> bool:
    return is_zero(e, rng.randint(0, 10**6)) is True


def test_table_has_fifteen_textbook_expressions():
    assert len(TABLE) >= 15


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_printed_gradient_is_the_textbook_form(row, derived):
    problem, d = derived(row)
    for wrt, (printed, _) in row[3].items():
        assert text(d.gradients[wrt], problem) == printed


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_closed_form_proved_on_a_tiny_instance(row, derived):
    """derived = closed form = SymPy's entrywise derivative of the expanded expression."""
    problem, d = derived(row)
    env = explicit_env(problem)
    f = expand(problem.root.explicit(env))[0, 0]
    rng = random.Random(0)
    for wrt, (_, closed) in row[3].items():
        mine = expand(d.gradients[wrt].explicit(env))
        reference = expand(build(closed, problem.space, where="closed form", scalar=False).explicit(env))
        entries = env[wrt]
        assert mine.shape == reference.shape == entries.shape
        for i in range(entries.rows):
            for j in range(entries.cols):
                assert _zero(mine[i, j] - reference[i, j], rng), (wrt, i, j)
                assert _zero(mine[i, j] - sp.diff(f, entries[i, j]), rng), (wrt, i, j)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_generated_module_matches_finite_differences(row, derived, tmp_path):
    problem, d = derived(row)
    path = tmp_path / f"m_{row[0].replace('-', '_')}.py"
    path.write_text(generate_expr(d, path.stem))
    module = _load(path)
    for seed in (0, 1):
        errors = module.check(seed=seed)
        assert set(errors) == set(row[3])
        assert max(errors.values()) <= 1e-6, errors
    value, grads = module.value_and_grad(**module.random_arguments(0))
    assert np.isfinite(value) and set(grads) == set(row[3])


def test_generated_module_is_deterministic_and_numpy_only(derived):
    problem, d = derived(TABLE[0])
    source = generate_expr(d, "lr")
    assert source == generate_expr(derive_expr(parse_problem(TABLE[0][1], TABLE[0][2], "w")), "lr")
    imports = [line for line in source.splitlines() if line.startswith(("import", "from"))]
    assert imports == ["import numpy as np"]
    assert "# ∂f/∂w = −Xᵀ (y ⊙ σ(−y ⊙ (X w)))/N" in source


def test_two_layer_expression_matches_the_network_spec(tmp_path):
    """The net written as one expression and as a spec give the same gradients."""
    from symgrad.codegen import generate_source
    from symgrad.spec import spec_from_dict

    spec = spec_from_dict({
        "network": {"name": "net_as_spec", "inputs": 4},
        "layer": [{"units": 5, "activation": "tanh"}, {"units": 3, "activation": "identity"}],
        "loss": {"kind": "mse"},
    })
    net_path = tmp_path / "net_as_spec.py"
    net_path.write_text(generate_source(spec))
    net = _load(net_path)
    problem = parse_problem(NET_EXPR, NET, "W1,b1,W2,b2")
    expr_path = tmp_path / "net_as_expr.py"
    expr_path.write_text(generate_expr(derive_expr(problem), "net_as_expr"))
    mod = _load(expr_path)

    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    params = {"W1": rng.standard_normal((4, 5)), "b1": rng.standard_normal(5),
              "W2": rng.standard_normal((5, 3)), "b2": rng.standard_normal(3)}
    loss, grads = net.loss_and_grad({k: v.copy() for k, v in params.items()}, X, Y)
    args = {**params, "b1": params["b1"][None, :], "b2": params["b2"][None, :], "X": X, "Y": Y}
    value, mine = mod.value_and_grad(**args)
    assert value == pytest.approx(loss, rel=1e-12)
    for name in params:
        np.testing.assert_allclose(mine[name].reshape(grads[name].shape), grads[name], rtol=1e-10)


# --------------------------------------------------------------------------
# Bad expressions: exit 2, one line naming the sub-expression and the shapes
# --------------------------------------------------------------------------

BAD = [
    ("sum(X @ y)", XW, "w", ["X @ y", "N×d", "N×1"]),
    ("X @ w - y", XW, "w", ["not a scalar", "N×1", "sum("]),
    ("sum(X @ v)", XW, "w", ["unknown name 'v'", "--shape v="]),
    ("sum(frobnicate(X @ w))", XW, "w", ["unknown function 'frobnicate'", "frobnicate(X @ w)"]),
    ("sum(sigmod(X @ w))", XW, "w", ["did you mean 'sigmoid'", "sigmod(X @ w)"]),
    ("sum(X * w)", XW, "w", ["X * w", "N×d", "d×1"]),
    ("trace(X)", XW, "w", ["trace", "N×d"]),
]


@pytest.mark.parametrize("expr,shapes,wrt,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_expression_exits_2_with_one_line(expr, shapes, wrt, needles, capsys):
    argv = ["derive", "--expr", expr, "--wrt", wrt]
    for s in shapes:
        argv += ["--shape", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symgrad: error: expr: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_bad_shapes_and_wrt():
    with pytest.raises(SymgradError, match="--shape"):
        parse_problem("sum(X)", ["X=N"], "X") and parse_problem("sum(X)", ["X"], "X")
    with pytest.raises(SymgradError, match="--wrt"):
        parse_problem("sum(X)", ["X=N,d"], "w")
    with pytest.raises(SymgradError, match="does not depend"):
        parse_problem("sum(X)", ["X=N,d", "w=d,1"], "w")


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

LR = ["--expr", TABLE[0][1], "--shape", "X=N,d", "--shape", "w=d,1", "--shape", "y=N,1",
      "--wrt", "w"]


def test_cli_derive_formats(capsys):
    assert main(["derive", *LR]) == 0
    out = capsys.readouterr().out
    assert "∂f/∂w = −Xᵀ (y ⊙ σ(−y ⊙ (X w)))/N" in out
    assert main(["derive", *LR, "--format", "latex"]) == 0
    assert r"\frac{\partial f}{\partial w}" in capsys.readouterr().out
    assert main(["derive", *LR, "--format", "markdown", "--steps"]) == 0
    out = capsys.readouterr().out
    assert "$$" in out and "Scalar derivatives" in out


def test_cli_derive_prove(capsys):
    assert main(["derive", *LR, "--prove"]) == 0
    assert "∂f/∂w: proved equal to the entrywise derivative" in capsys.readouterr().out


@pytest.mark.parametrize("row", TABLE[:6], ids=IDS[:6])
def test_prove_api(row, derived):
    ok, lines = prove(derived(row)[1])
    assert ok and all("proved" in line for line in lines)


def test_cli_generate_then_check(tmp_path, capsys):
    out = tmp_path / "lr.py"
    assert main(["generate", *LR, "-o", str(out)]) == 0
    assert out.exists()
    assert main(["generate", *LR, "-o", str(out)]) == 0  # ours: overwritten
    assert main(["check", str(out)]) == 0
    assert "pass" in capsys.readouterr().out
    mine = tmp_path / "mine.py"
    mine.write_text("x = 1\n")
    assert main(["generate", *LR, "-o", str(mine)]) == 2


def test_cli_verify_matrix_mode(capsys):
    right = "-X.T @ (y * sigmoid(-y * (X @ w))) / N"
    assert main(["verify", *LR, right]) == 0
    assert "CORRECT" in capsys.readouterr().out
    assert main(["verify", *LR, "X.T @ (y * sigmoid(-y * (X @ w))) / N"]) == 1
    out = capsys.readouterr().out
    assert "WRONG" in out and "sign" in out and "correct:" in out
    assert main(["verify", *LR, "-(y * sigmoid(-y * (X @ w))).T @ X / N"]) == 1
    assert "transposed" in capsys.readouterr().out


@pytest.mark.parametrize("formula,needle", [
    ("X.T @ (X @ w - y)", "missing term + λ w"),
    ("X.T @ (X @ w - y) / N + lam * w / N", "off by a factor 1/N"),
    ("2 * (X.T @ (X @ w - y) + lam * w)", "off by a constant factor"),
    ("X.T @ (X @ w - y) + 2 * lam * w", None),
])
def test_verify_diagnoses(formula, needle):
    problem = parse_problem("norm(X @ w - y)**2 / 2 + lam * norm(w)**2 / 2", [*XW, "lam=1,1"], "w")
    verdict = verify_expr(problem, "w", formula)
    assert not verdict.ok
    assert "correct: X.T @ (X @ w - y) + lam * w" in verdict.text()
    if needle:
        assert needle in verdict.text()


def test_verify_scalar_mode_still_works(capsys):
    assert main(["verify", "--expr", "x**2", "--wrt", "x", "2*x"]) == 0


def test_verify_expr_api():
    problem = parse_problem("trace(W.T @ A @ W)", ["W=n,k", "A=n,n"], "W")
    assert verify_expr(problem, "W", "(A + A.T) @ W").ok
    assert not verify_expr(problem, "W", "2 * A @ W").ok


def test_spec_mode_unchanged(capsys):
    assert main(["derive"]) == 2
    assert "SPEC or --expr" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("expr,shapes,wrt", [
    ("sum(mean(X @ W, axis=0)**2)", ["X=5,3", "W=3,2"], "W"),
    ("sum((X @ W) * (sum(X, axis=1, keepdims=True) @ v))", ["X=N,d", "W=d,k", "v=1,k"], "W,v"),
    ("norm(X @ w - y)**2 / 2 + lam * w.T @ w / 2", [*XW, "lam=1,1"], "w,lam"),
    ("-sum(Y * log(softmax(X @ W))) / N", ["X=N,d", "W=d,k", "Y=N,k"], "W"),
    ("sum(relu(X @ w) + 0.5 * softplus(X @ w)**2)", XW, "w"),
    ("sum(X @ w @ w.T)", XW, "w"),
    ("sum(X @ w) ** 2", XW, "w"),
    ("sum(maximum(X @ w, y))", XW, "w"),
    ("sum(gelu(X @ w)) + sum(mish(X @ w)) + sum(selu(X @ w))", XW, "w"),
])
def test_more_expressions_match_finite_differences(expr, shapes, wrt, tmp_path):
    """Broadcasts inside products, a scalar differentiated, softmax inside an expression."""
    d = derive_expr(parse_problem(expr, shapes, wrt))
    path = tmp_path / "more.py"
    path.write_text(generate_expr(d, "more"))
    errors = _load(path).check()
    assert max(errors.values()) <= 1e-6, errors


def test_generated_modules_are_lint_clean(derived, tmp_path):
    import shutil
    import subprocess

    beside = Path(sys.executable).with_name("ruff")  # the project's environment
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    assert ruff is not None, "ruff is a dev dependency (pip install -e '.[dev]')"
    for row in TABLE:
        problem, d = derived(row)
        (tmp_path / f"g_{row[0].replace('-', '_')}.py").write_text(generate_expr(d, "g"))
    result = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--line-length", "100",
         "--select", "E,F,W,B,UP", "--ignore", "E501", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout
