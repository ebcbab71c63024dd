"""Second order for expressions (issue 15, part 1): ``--expr … --hessian``.

The Hessian is the engine's second reverse sweep over ⟨∇f, V⟩ (symgrad.hessian): its
printed form (∇²f where x is a vector, the map V ↦ ∇²f[V] for a matrix x) is asserted
exactly; the generated ``hessian``/``hvp`` against central differences of the generated
``grad``, hvp against hessian @ v, the symmetry of the Hessian; the proof against the
scalar expansion's second derivatives; refusals in one line.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad import exprmode as em
from symgrad import hessian as hs
from symgrad.cli import main

ROOT = Path(__file__).resolve().parents[1]

LOGISTIC = "sum(log(1 + exp(X @ w)) - y * (X @ w))"
XWY = ["X=N,d", "w=d,1", "y=N,1"]

# (expression, shapes, wrt, the printed ∇²f (None: a matrix variable), the printed H[V])
CASES = [
    ("w.T @ A @ w", ["A=n,n", "w=n,1"], "w", "A + Aᵀ", "(A + Aᵀ) v"),
    ("sum((X @ w - y)**2)", XWY, "w", "2 Xᵀ X", "2 Xᵀ X v"),
    (LOGISTIC, XWY, "w", "Xᵀ diag(σ(X w) ⊙ σ(−(X w))) X", "Xᵀ ((X v) ⊙ σ(X w) ⊙ σ(−(X w)))"),
    ("sum((X @ w - y)**2) + lam * sum(w**2)", [*XWY, "lam=1,1"], "w", "2 Xᵀ X + 2λ I",
     "2 Xᵀ X v + 2λ v"),
    ("trace(X.T @ A @ X)", ["X=n,m", "A=n,n"], "X", None, "(A + Aᵀ) V"),
    ("trace(A @ X @ B)", ["X=n,m", "A=m,n", "B=m,m"], "X", None, "0"),
    ("sum((A @ x - b)**2)", ["A=m,n", "x=n,1", "b=m,1"], "x", "2 Aᵀ A", "2 Aᵀ A v"),
    ("(x.T @ A @ x) / (x.T @ x)", ["A=n,n", "x=n,1"], "x",  # the Rayleigh quotient
     "2 (2 ((xᵀ A x)/(xᵀ x)) x xᵀ − (A + Aᵀ) x xᵀ)/(xᵀ x)² + (A + Aᵀ − 2 f I)/(xᵀ x) − 2 x "
     "((A + Aᵀ) x − 2 ((xᵀ A x)/(xᵀ x)) x)ᵀ/(xᵀ x)²",
     "((A + Aᵀ) v − 2 f v)/(xᵀ x) + 4 (𝟏ᵀ ((v ⊙ x)/(xᵀ x)) ((xᵀ A x)/(xᵀ x)²)) x − 2 (𝟏ᵀ "
     "((v ⊙ x)/(xᵀ x)) 1/(xᵀ x)) (A + Aᵀ) x − 2 (𝟏ᵀ (v ⊙ ((A + Aᵀ) x − 2 f x)) 1/(xᵀ x)²) x"),
    ("logsumexp(x)", ["x=n,1"], "x",
     "diag(exp(x − logsumexp(x))) − exp(x − logsumexp(x)) exp(x − logsumexp(x))ᵀ",
     "exp(x − logsumexp(x)) ⊙ (v − 𝟏ᵀ (v ⊙ exp(x − logsumexp(x))))"),
    ("-log(det(X))", ["X=n,n"], "X", None, "X⁻ᵀ Vᵀ X⁻ᵀ"),
    ("sum(softplus(x))", ["x=n,1"], "x", "diag(σ(x) ⊙ σ(−x))", "v ⊙ σ(x) ⊙ σ(−x)"),
    ("sum(sigmoid(x))", ["x=n,1"], "x", "diag((exp(x) ⊙ (1 − exp(x)))/(exp(x) + 1)³)",
     "v ⊙ (exp(x) ⊙ (1 − exp(x)))/(exp(x) + 1)³"),
    ("norm(x)", ["x=n,1"], "x", "I/‖x‖ − x xᵀ/‖x‖³", "v/‖x‖ − (𝟏ᵀ (v ⊙ x) 1/‖x‖³) x"),
    ("trace(X @ X @ X)", ["X=n,n"], "X", None, "3 (Vᵀ Xᵀ + Xᵀ Vᵀ)"),
    ("sum(w**3)", ["w=n,1"], "w", "6 diag(w)", "6 v ⊙ w"),
    ("sum(exp(t * x))", ["t=1,1", "x=n,1"], "t", "𝟏ᵀ (x ⊙ x ⊙ exp(t x))",
     "𝟏ᵀ (x ⊙ x ⊙ exp(t x)) v"),  # a scalar t: H v = M v
    ("sum((X @ w - y)**2)", ["X=n,1", "w=1,1", "y=n,1"], "w", "2 Xᵀ X", "2 Xᵀ X v"),
    ("sum((w @ X - y)**2)", ["X=1,n", "w=1,1", "y=1,n"], "w", "2 X Xᵀ", "2 X Xᵀ v"),
    ("sum((x * a)**2)", ["x=1,1", "a=n,1"], "x", "2 aᵀ a", "2 aᵀ a v"),
    ("sum((X @ B - C)**2)", ["X=m,n", "B=n,k", "C=m,k"], "X", None, "2 V B Bᵀ"),
    ("trace(inv(X))", ["X=n,n"], "X", None, "X⁻ᵀ (V X⁻¹ + X⁻¹ V)ᵀ X⁻ᵀ"),
    ("sum(log(1 + exp(-y * (X @ w))))", XWY, "w",
     "−Xᵀ diag(y ⊙ y ⊙ (σ(y ⊙ (X w))² − σ(y ⊙ (X w)))) X",
     "−Xᵀ (y ⊙ y ⊙ (X v) ⊙ (σ(y ⊙ (X w))² − σ(y ⊙ (X w))))"),
    ("sum(tanh(W @ x))", ["W=m,n", "x=n,1"], "x", "Wᵀ diag(2 tanh(W x)³ − 2 tanh(W x)) W",
     "Wᵀ ((W v) ⊙ (2 tanh(W x)³ − 2 tanh(W x)))"),
]
IDS = [c[0] for c in CASES]
SLOW_PROOFS = {LOGISTIC, "sum(log(1 + exp(-y * (X @ w))))", "sum(tanh(W @ x))",
               "(x.T @ A @ x) / (x.T @ x)"}  # 1-4 s each: proved by the CLI test below or left out


@functools.cache
def derived(i: int) -> hs.HessianDerivation:
    text, shapes, wrt, *_ = CASES[i]
    return hs.derive_hessian(em.parse_problem(text, shapes, wrt))


@functools.cache
def module(i: int) -> types.ModuleType:
    m = types.ModuleType(f"hess{i}")
    exec(compile(hs.generate_hessian(derived(i), f"hess{i}"), f"hess{i}.py", "exec"), m.__dict__)
    return m


def _printed(hd: hs.HessianDerivation) -> tuple[str | None, str]:
    lines = [line.strip().split("   (")[0] for line in hd.text().splitlines()
             if line.startswith("  ∇²f")]
    matrix = next((line.removeprefix("∇²f = ") for line in lines if line.startswith("∇²f = ")), None)
    hv = next(line.split(" = ", 1)[1] for line in lines if not line.startswith("∇²f = "))
    return matrix, hv


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_printed_form(i: int) -> None:
    assert _printed(derived(i)) == (CASES[i][3], CASES[i][4])


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c[0] not in SLOW_PROOFS],
                         ids=[c[0] for c in CASES if c[0] not in SLOW_PROOFS])
def test_proved_by_scalar_expansion(i: int) -> None:
    ok, lines = hs.prove_hessian(derived(i))
    assert ok
    lines = [line for line in lines if not line.startswith("rewrite rules:")]  # not asked
    assert all("proved equal to the entrywise second derivatives" in line for line in lines), lines
    assert len(lines) == (1 if CASES[i][3] is None else 2)


def _fd_hvp(m, args: dict, wrt: str, v: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central differences of the generated grad along v."""
    up = {**args, wrt: args[wrt] + eps * v}
    down = {**args, wrt: args[wrt] - eps * v}
    return (m.grad(**up)[wrt] - m.grad(**down)[wrt]) / (2 * eps)


def _close(a, b, tol: float = 1e-6) -> bool:
    return float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_generated_hvp_and_hessian_against_differences_of_grad(i: int) -> None:
    m, wrt = module(i), CASES[i][2]
    args = m.random_arguments(1)
    x = np.asarray(args[wrt], float)
    rng = np.random.default_rng(i)
    u, v = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    hv = m.hvp(**args, **{derived(i).direction.name: v})
    assert hv.shape == x.shape and hv.dtype == np.float64
    assert _close(hv, _fd_hvp(m, args, wrt, v))
    assert m.check_hvp(seed=1) <= 1e-6  # the module's own check
    hu = m.hvp(**args, **{derived(i).direction.name: u})
    assert np.isclose(np.sum(u * hv), np.sum(v * hu), rtol=1e-9, atol=1e-9)  # symmetric
    if CASES[i][3] is None:
        assert not hasattr(m, "hessian")
        return
    h = m.hessian(**args)
    n = x.size
    assert h.shape == (n, n)
    columns = [_fd_hvp(m, args, wrt, np.eye(n)[:, [j]].reshape(x.shape)).reshape(n)
               for j in range(n)]
    assert _close(h, np.array(columns).T)
    assert _close(h, h.T, 1e-12)
    assert _close(h @ v.reshape(n), hv.reshape(n), 1e-10)


@settings(max_examples=12, deadline=None)
@given(i=st.sampled_from([2, 8, 12, 15]), seed=st.integers(0, 2**31 - 1))
def test_hvp_is_the_hessian_times_v_and_linear(i: int, seed: int) -> None:
    m, wrt, name = module(i), CASES[i][2], derived(i).direction.name
    args = m.random_arguments(seed % 1000)
    rng = np.random.default_rng(seed)
    v, u = rng.standard_normal((2, *np.shape(args[wrt])))
    a, b = rng.standard_normal(2)
    h = m.hessian(**args)
    hv = m.hvp(**args, **{name: v})
    assert _close(hv.reshape(-1), h @ v.reshape(-1), 1e-10)
    combo = m.hvp(**args, **{name: a * u + b * v})
    assert _close(combo, a * m.hvp(**args, **{name: u}) + b * hv, 1e-10)


def test_hvp_refuses_a_direction_of_another_shape() -> None:
    m = module(0)
    args = m.random_arguments(0)
    with pytest.raises(ValueError, match=r"^hvp: v has shape \(3,\), expected \(\d+, 1\) "
                                         r"\(the shape of w\)$"):
        m.hvp(**args, v=np.ones(3))


def test_cli_derive_text_steps_and_proof(capsys) -> None:
    rc = main(["derive", "--expr", "sum((A @ x - b)**2)", "--shape", "A=m,n", "--shape", "x=n,1",
               "--shape", "b=m,1", "--wrt", "x", "--hessian", "--prove", "--steps"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "  ∇²f = 2 Aᵀ A   (n×n)\n      numpy: 2 * (A.T @ A)\n" in out
    assert "  ∇²f v = 2 Aᵀ A v   (the Hessian-vector product, v of x's shape (n×1))\n" in out
    assert "Second sweep: ∂/∂x ⟨∂f/∂x, v⟩, before simplification\n" in out
    assert ("Rewrite rules that fired (simplification of the second sweep and of ∇²f)\n"
            "  product-normal-form: A (B C) = (A B) C and A A ⋯ A = Aᵏ: one form for a product, "
            "so equal terms merge — proved at tiny sizes (1 firing)\n") in out
    assert out.endswith(
        "Proof by scalar expansion on a tiny instance\n"
        "  ∇²f: proved equal to the entrywise second derivatives (m=2, n=3)\n"
        "  ∇²f v: proved equal to the entrywise second derivatives (m=2, n=3)\n"
        "  rewrite rules: 1 of 1 firings proved on the tiny instance (product-normal-form)\n")


def test_cli_derive_latex_and_markdown(capsys) -> None:
    base = ["derive", "--expr", "trace(X.T @ A @ X)", "--shape", "X=n,m", "--shape", "A=n,n",
            "--wrt", "X", "--hessian"]
    assert main([*base, "--format", "latex"]) == 0
    assert capsys.readouterr().out == (
        "\\begin{aligned}\n"
        "f &= \\operatorname{tr}\\left(X^{\\top} A X\\right) \\\\\n"
        "\\frac{\\partial f}{\\partial X} &= \\left(A + A^{\\top}\\right) X \\\\\n"
        "\\nabla^2 f\\,[V] &= \\left(A + A^{\\top}\\right) V \\\\\n"
        "\\end{aligned}\n")
    assert main([*base, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Hessian of an expression\n")
    assert "$$\\nabla^2 f\\,[V] = \\left(A + A^{\\top}\\right) V$$ (for V of X's shape (n×m))\n" in out


@pytest.mark.parametrize("argv, message", [
    (["--expr", "x.T @ A @ y", "--shape", "x=n,1", "--shape", "y=n,1", "--shape", "A=n,n",
      "--wrt", "x,y"],
     "symgrad: error: --hessian: one --wrt name at a time (the Hessian in several variables is "
     "a block matrix; ask for each: --wrt x)"),
    (["--expr", "sum(relu(x))", "--shape", "x=n,1", "--wrt", "x"],
     "symgrad: error: --hessian: f is not twice differentiable where the pieces of relu "
     "meet (relu, abs, max/min: the second derivative is 0 almost everywhere and undefined at "
     "the kink); symgrad refuses rather than print 0"),
    (["--expr", "sum(abs(x))", "--shape", "x=n,1", "--wrt", "x"],
     "symgrad: error: --hessian: f is not twice differentiable where the pieces of abs "
     "meet (relu, abs, max/min: the second derivative is 0 almost everywhere and undefined at "
     "the kink); symgrad refuses rather than print 0"),
    (["--expr", "sum(huber(x))", "--shape", "x=n,1", "--wrt", "x"], None),
    (["--expr", "norm(x, 1)", "--shape", "x=n,1", "--wrt", "x"], None),
    (["--expr", "sum(maximum(x, 0)**2)", "--shape", "x=n,1", "--wrt", "x"], None),
    (["--expr", "max(x)", "--shape", "x=n,1", "--wrt", "x"],
     "symgrad: error: --hessian: f is not twice differentiable where the pieces of max/min "
     "meet (relu, abs, max/min: the second derivative is 0 almost everywhere and undefined at "
     "the kink); symgrad refuses rather than print 0"),
    (["examples/digits.toml"],
     "symgrad: error: derive --hessian: goes with --expr (for a network: --hvp, the "
     "Hessian-vector product)"),
])
def test_refusals_are_one_line(argv, message, capsys) -> None:
    assert main(["derive", *argv, "--hessian"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err
    if message is None:
        assert err.startswith("symgrad: error: --hessian: f is not twice differentiable where ")
    else:
        assert err == message


def test_budget_overrun_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(hs, "HESSIAN_SECONDS", 1e-4)
    assert main(["derive", "--expr", LOGISTIC, "--shape", "X=N,d", "--shape", "w=d,1",
                 "--shape", "y=N,1", "--wrt", "w", "--hessian"]) == 2
    assert capsys.readouterr().err == ("symgrad: error: --hessian: too large to derive the "
                                       "second derivative in 0.0001 s (of CPU time)\n")


def test_generate_writes_ruff_clean_reproducible_module(tmp_path, capsys) -> None:
    out = tmp_path / "logreg_h.py"
    argv = ["generate", "--expr", LOGISTIC + " + lam * sum(w**2)", "--shape", "X=N,d",
            "--shape", "w=d,1", "--shape", "y=N,1", "--shape", "lam=1,1", "--wrt", "w",
            "--hessian", "-o", str(out)]
    assert main(argv) == 0
    first = out.read_text()
    assert "    ∇²f = Xᵀ diag(σ(X w) ⊙ σ(−(X w))) X + 2λ I\n" in first
    assert "    # ∇²f v = Xᵀ ((X v) ⊙ σ(X w) ⊙ σ(−(X w))) + 2λ v\n" in first
    assert "def hvp(X, w, y, lam, v):\n" in first and "def hessian(X, w, y, lam):\n" in first
    assert main(argv) == 0
    assert out.read_text() == first
    assert "is up to date" in capsys.readouterr().err
    ruff = subprocess.run([str(ROOT / ".venv/bin/ruff"), "check", "--no-cache", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert ruff.returncode == 0, ruff.stdout
    proc = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert re.fullmatch(r"w: max relative error \d\.\de-\d\d ok\n"
                        r"hvp \(w\): max relative error \d\.\de-\d\d ok\n", proc.stdout), proc.stdout


def test_without_hessian_the_expression_module_is_unchanged() -> None:
    p = em.parse_problem("w.T @ A @ w", ["A=n,n", "w=n,1"], "w")
    source = em.generate_expr(em.derive_expr(p))
    assert "def hvp" not in source and "∇²f" not in source
    assert hs.generate_hessian(derived(0)).startswith(source.split("\n\n\n")[0].split("    ∂f/∂w")[0])


# closure: every op a first-order rule builds has a rule of its own, so the second sweep runs
# over the whole expression vocabulary (Kronecker products, diag, det, solve, softmax, the
# axis reductions, norms); each proved, and its generated hvp against differences of grad
CLOSURE = [
    ("sum(kron(X, X))", ["X=2,2"], "X", True),
    ("sum(diag(x) @ A @ diag(x))", ["x=n,1", "A=n,n"], "x", True),
    ("det(X)", ["X=n,n"], "X", True),
    ("sum(solve(A, x)**2)", ["A=n,n", "x=n,1"], "x", True),
    ("sum(logsumexp(Z, axis=1))", ["Z=N,k"], "Z", True),
    ("sum(mean(X, axis=0)**2)", ["X=N,d"], "X", True),
    ("sum(sqrt(x.T @ x + 1))", ["x=n,1"], "x", True),
    ("sum(log(softmax(X @ W)) * Y)", ["X=N,d", "W=d,k", "Y=N,k"], "W", False),  # 10 s to prove
]


@pytest.mark.parametrize("text, shapes, wrt, prove", CLOSURE, ids=[c[0] for c in CLOSURE])
def test_second_sweep_closes_over_the_vocabulary(text, shapes, wrt, prove) -> None:
    hd = hs.derive_hessian(em.parse_problem(text, shapes, wrt))
    if prove:
        ok, lines = hs.prove_hessian(hd)
        lines = [line for line in lines if not line.startswith("rewrite rules:")]  # not asked
        assert ok and lines and all("proved equal" in line for line in lines), lines
    m = types.ModuleType("closure")
    exec(compile(hs.generate_hessian(hd, "closure"), "closure.py", "exec"), m.__dict__)
    args = m.random_arguments(2)
    v = np.random.default_rng(3).standard_normal(np.shape(args[wrt]))
    assert _close(m.hvp(**args, **{hd.direction.name: v}), _fd_hvp(m, args, wrt, v))


def test_symmetric_assumption_is_used_and_proved() -> None:
    p = em.parse_problem("w.T @ A @ w", ["A=n,n", "w=n,1"], "w", em.Assumptions.parse(["A"]))
    hd = hs.derive_hessian(p)
    assert _printed(hd) == ("2 A", "2 A v")
    ok, lines = hs.prove_hessian(hd)
    assert ok and lines[:2] == ["∇²f: proved equal to the entrywise second derivatives (n=2)",
                                "∇²f v: proved equal to the entrywise second derivatives (n=2)"]
