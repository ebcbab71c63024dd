"""The derivation engine: formulas, printing, invariance to sizes, golden outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.activations import ACTIVATIONS, A, X, expand_named
from symgrad.derive import derive
from symgrad.ops import L1, L2, N
from symgrad.printing import TextScalarPrinter, text
from symgrad.spec import Layer, Spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden")

# name: (textbook f′(z), f′ in terms of a = f(z) or None) — exactly as printed
TEXTBOOK = {
    "identity": ("1", "1"),
    "relu": ("[z > 0]", "[a > 0]"),
    "leaky_relu": ("[z > 0] + 0.01 [z ≤ 0]", "[a > 0] + 0.01 [a ≤ 0]"),
    "elu": ("[z > 0] + exp(z) [z ≤ 0]", "[a > 0] + (a + 1) [a ≤ 0]"),
    "tanh": ("1 − tanh(z)²", "1 − a²"),
    "sigmoid": ("σ(z)·(1 − σ(z))", "a·(1 − a)"),
    "softplus": ("σ(z)", "1 − exp(−a)"),
    "softsign": ("1/(|z| + 1)²", "(1 − |a|)²"),
    "sin": ("cos(z)", None),
    "silu": ("σ(z)·(z·(1 − σ(z)) + 1)", None),
}


def _show(expr, var, name):
    return None if expr is None else TextScalarPrinter({var: name}, elementwise=False)._print(expr)


@pytest.mark.parametrize("name", sorted(TEXTBOOK))
def test_textbook_derivatives(name):
    act = ACTIVATIONS[name]
    assert (_show(act.derivative, X, "z"), _show(act.output_derivative, A, "a")) == TEXTBOOK[name]


@pytest.mark.parametrize("name", [n for n, a in ACTIVATIONS.items() if a.expr is not None])
def test_printed_derivative_is_the_raw_derivative(name):
    """SymPy proves the printed (textbook) form equal to diff of the raw expression,
    and the output form equal at 40 points on both sides of every break."""
    act = ACTIVATIONS[name]
    raw = sp.diff(expand_named(act.expr), X)
    diff = sp.piecewise_fold(expand_named(act.derivative) - raw)
    pieces = diff.args if isinstance(diff, sp.Piecewise) else [(diff, True)]
    for value, _ in pieces:
        assert value == 0 or sp.simplify(value) == 0 or all(
            abs(value.evalf(30, subs={X: v})) < 1e-25 for v in np.linspace(-3, 3, 13)
        )
    if act.output_derivative is not None:
        for v in np.linspace(-3.1, 3.1, 40):
            a = act.expr.evalf(30, subs={X: v})
            lhs = raw.evalf(30, subs={X: v})
            rhs = act.output_derivative.evalf(30, subs={A: a})
            assert abs(lhs - rhs) < 1e-15 * max(1, abs(lhs))  # SELU constants: 17 digits


def two_layer(**kw) -> Spec:
    return Spec("net", 4, (Layer(3, "tanh"), Layer(2, "softmax")), loss="cross_entropy", **kw)


def test_backward_formulas_of_the_classic_net():
    d = derive(two_layer())
    got = {e.target.name: text(e.rhs) for e in d.backward}
    assert got == {
        "dZ2": "(Ŷ − Y)/N",
        "dW2": "A₁ᵀ δ₂",
        "db2": "𝟏ᵀ δ₂",
        "dZ1": "(δ₂ W₂ᵀ) ⊙ (1 − A₁²)",
        "dW1": "Xᵀ δ₁",
        "db1": "𝟏ᵀ δ₁",
    }
    assert d.fusions == ["softmax∘cross-entropy"]


def test_penalties_fan_out_into_the_weight_gradient():
    d = derive(two_layer(l1=0.1, l2=0.01))
    assert text(d.gradients["W1"]) == "Xᵀ δ₁ + λ₂ W₁ + λ₁ sign(W₁)"
    assert text(d.gradients["b1"]) == "𝟏ᵀ δ₁"  # biases are not penalised


def test_fusions_are_used_only_where_they_simplify():
    bce = Spec("m", 3, (Layer(4, "relu"), Layer(2, "sigmoid")), loss="binary_cross_entropy")
    assert text(derive(bce).gradients["W2"]) == "A₁ᵀ δ₂"
    assert text(next(e.rhs for e in derive(bce).backward if e.target.name == "dZ2")) == "(Ŷ − Y)/N"
    mse = Spec("r", 3, (Layer(4, "tanh"), Layer(1, "identity")), loss="mse")
    assert text(next(e.rhs for e in derive(mse).backward if e.target.name == "dZ2")) == "(Ŷ − Y)/N"
    tanh_mse = Spec("t", 3, (Layer(4, "relu"), Layer(2, "tanh")), loss="mse")
    d = derive(tanh_mse)
    assert d.fusions == []
    assert text(next(e.rhs for e in d.backward if e.target.name == "dZ2")) == "((Ŷ − Y)/N) ⊙ (1 − Ŷ²)"


def test_generic_softmax_vjp_before_another_loss():
    spec = Spec("s", 3, (Layer(4, "tanh"), Layer(3, "softmax")), loss="mse")
    d = derive(spec)
    rows = {e.target.name: text(e.rhs) for e in d.backward}
    assert rows["dYhat"] == "(Ŷ − Y)/N"
    assert rows["dZ2"] == "Ŷ ⊙ (∂L/∂Ŷ − rowsum(∂L/∂Ŷ ⊙ Ŷ))"


def test_derivation_does_not_depend_on_sizes():
    """Matrix level: the same formulas, the same work, for any widths."""
    small = derive(two_layer(l2=0.1)).text(steps=True)
    wide = derive(two_layer(l2=0.1).with_sizes((4000, 3000, 500))).text(steps=True)
    header = lambda s: s.split("\n", 1)[1]  # noqa: E731  (first line names the sizes)
    assert header(small) == header(wide)


def test_formulas_evaluate_like_finite_differences():
    """Numeric sanity for the IR itself (the generated code is tested elsewhere)."""
    spec = Spec("n", 3, (Layer(4, "sigmoid"), Layer(3, "softmax")), loss="cross_entropy", l2=0.3)
    d = derive(spec)
    rng = np.random.default_rng(0)
    env = {"X": rng.normal(size=(5, 3)), "Y": np.eye(3)[rng.integers(0, 3, 5)], N: 5, L2: 0.3, L1: 0}
    for name, shape in spec.param_shapes().items():
        env[name] = rng.normal(size=shape if len(shape) == 2 else (1, shape[0]))

    def run(env):
        env = dict(env)
        for eq in d.forward:
            env[eq.target.name] = eq.rhs.numeric(env)
        return env

    base = run(env)
    for eq in d.backward:
        base[eq.target.name] = eq.rhs.numeric(base)
    for p in ("W1", "b1", "W2"):
        g = base["d" + p]
        for idx in [(0, 0), (0, g.shape[1] - 1)]:
            plus, minus = dict(env), dict(env)
            plus[p] = env[p].copy()
            minus[p] = env[p].copy()
            plus[p][idx] += 1e-6
            minus[p][idx] -= 1e-6
            fd = (run(plus)["L"][0, 0] - run(minus)["L"][0, 0]) / 2e-6
            assert abs(fd - g[idx]) < 1e-7 * max(1, abs(fd))


# --------------------------------------------------------------------------
# Golden outputs of `symgrad derive` on the two-layer digits example
# --------------------------------------------------------------------------

GOLDEN_CASES = {
    "digits.txt": lambda d: d.text(),
    "digits_steps.txt": lambda d: d.text(steps=True),
    "digits.tex": lambda d: d.latex(),
    "digits.md": lambda d: d.markdown(),
    "digits_penalised.txt": lambda d: derive(
        Spec("digits_mlp", 64, (Layer(32, "tanh"), Layer(10, "softmax")), loss="cross_entropy",
             l1=1e-5, l2=1e-4)).text(),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_derivation_outputs(name):
    d = derive(load_spec(ROOT / "examples" / "digits.toml"))
    out = GOLDEN_CASES[name](d)
    path = GOLDEN / name
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")


def test_jupyter_rendering():
    d = derive(two_layer())
    assert d._repr_latex_().startswith("$$\\begin{aligned}")
    assert "\\delta_{1}" in d._repr_latex_()
    assert d._repr_markdown_() == d.markdown()


# --------------------------------------------------------------------------
# Losses affine in ŷ: ℓ′ is a constant, the cotangent still an N×k matrix
# --------------------------------------------------------------------------


def _affine_spec(loss_expr: str, output: str = "identity") -> Spec:
    return Spec("affine", 3, (Layer(4, "tanh"), Layer(2, output)), loss=None, loss_expr=loss_expr)


def _dz2(spec: Spec) -> str:
    return next(text(e.rhs) for e in derive(spec).backward if e.target.name == "dZ2")


@pytest.mark.parametrize("loss_expr,printed", [
    ("yhat", "𝟏𝟏ᵀ/N"),
    ("yhat - y", "𝟏𝟏ᵀ/N"),
    ("2*yhat + 3", "2 𝟏𝟏ᵀ/N"),
    ("3*yhat - y**2", "3 𝟏𝟏ᵀ/N"),
    ("-yhat/4", "-𝟏𝟏ᵀ/(4·N)"),
    ("yhat*y", "Y/N"),
])
def test_loss_linear_in_yhat_gives_a_matrix_cotangent(loss_expr, printed):
    assert _dz2(_affine_spec(loss_expr)) == printed
    latex = derive(_affine_spec(loss_expr)).latex()
    assert ("\\mathbf{1}\\mathbf{1}^{\\top}" in latex) == ("𝟏𝟏ᵀ" in printed)


def test_loss_constant_in_yhat_is_refused():
    from symgrad.errors import SymgradError

    with pytest.raises(SymgradError, match="the loss does not depend on yhat"):
        _affine_spec("y**2 + 1").loss_fn  # noqa: B018


@settings(max_examples=6, deadline=None)
@given(
    a=st.sampled_from(["1", "2", "-0.5", "3/4"]),
    rest=st.sampled_from(["", " - y", " + 3", " + y**2 - 1", " * y"]),
    output=st.sampled_from(["identity", "tanh", "sigmoid"]),
)
def test_affine_losses_generate_modules_with_the_right_gradient(a, rest, output):
    """The class: ℓ = a·ŷ (+ terms in y, constants; or a·ŷ·y) through derive and the
    generated module, whose gradient must match central differences of its own loss."""
    from symgrad.codegen import generate_source, load_module

    spec = _affine_spec(f"{a}*yhat{rest}", output)
    d = derive(spec)
    m = load_module(generate_source(d))
    rng = np.random.default_rng(0)
    params = m.init_params(seed=1)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    _, grads = m.loss_and_grad(params, X, Y)
    h = 1e-6
    for name, theta in params.items():
        assert grads[name].shape == theta.shape
        flat = theta.reshape(-1)
        for i in range(flat.size):
            v = flat[i]
            flat[i] = v + h
            up = m.loss(params, X, Y)
            flat[i] = v - h
            down = m.loss(params, X, Y)
            flat[i] = v
            fd = (up - down) / (2 * h)
            assert abs(grads[name].reshape(-1)[i] - fd) < 1e-6 * max(1.0, abs(fd)), (name, i)
