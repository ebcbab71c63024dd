"""Second order of networks (issue 15): the Hessian-vector product by the R-operator and
the Gauss–Newton product, derived (symgrad.second), printed (derive --hvp/--gnvp),
generated (hvp/gnvp of the module) and checked (check --hvp).

Evidence: every activation × loss on a tiny net against central differences of the
gradient (float64), the scalar expansion differentiated twice by SymPy, the Gauss–Newton
product positive semi-definite (hypothesis) and equal to H V where H = G, the printed forms
of the digits network (golden files), the generated functions in float32 and float64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad.check import _derivation_env, check_products
from symgrad.cli import main
from symgrad.codegen import generate_source, load_module
from symgrad.derive import derive
from symgrad.second import gnvp, hvp, prove
from symgrad.spec import spec_from_dict

GOLDEN = Path(__file__).parent / "golden" / "second"
ROOT = Path(__file__).parent.parent

ACTIVATIONS = ["identity", "relu", "leaky_relu", "elu", "selu", "tanh", "sigmoid", "softplus",
               "softsign", "silu", "gelu", "gelu_tanh", "mish", "sin", "softmax"]
# loss → the output layer's activation (the fused pairs after softmax and sigmoid)
LOSSES = {"mse": "identity", "mae": "identity", "huber": "identity",
          "cross_entropy": "softmax", "binary_cross_entropy": "sigmoid",
          "(yhat - y)**4 / 4 + (yhat - y)**2": "tanh"}


def tiny(hidden: str, loss: str, out: str, l1: float = 0.0, l2: float = 0.0, layers=(3,)):
    spec = {"network": {"name": "tiny", "inputs": 3},
            "layer": [*({"units": u, "activation": hidden} for u in layers),
                      {"units": 2, "activation": out}],
            "loss": {"kind": loss} if loss in LOSSES and "(" not in loss else {"expr": loss}}
    if l1 or l2:
        spec["regularization"] = {"l1": l1, "l2": l2}
    return spec_from_dict(spec, source="tiny.toml")


def instance(d, seed: int, n: int = 5):
    rng = np.random.default_rng(seed)
    spec = d.spec
    X = rng.standard_normal((n, spec.inputs))
    if spec.loss_fn.name == "cross_entropy":
        Y = np.eye(spec.outputs)[rng.integers(0, spec.outputs, n)]
    else:
        Y = rng.uniform(0.1, 0.9, (n, spec.outputs))
    params = {k: 0.7 * rng.standard_normal(s) for k, s in spec.param_shapes().items()}
    V = {k: rng.standard_normal(s) for k, s in spec.param_shapes().items()}
    return X, Y, params, V


def row(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1) if a.ndim == 1 else a


def evaluate(so, X, Y, params, V) -> dict[str, np.ndarray]:
    """The product's equations evaluated with numpy (each op's ``numeric``)."""
    d = so.derivation
    env = _derivation_env(d, params, X, Y)
    for p, v in zip(d.graph.params, so.directions, strict=True):
        env[v.name] = row(V[p.name])
    for eq in [*d.forward, *so.tangents, *so.backward, *so.adjoints]:
        env[eq.target.name] = eq.rhs.numeric(env)
    return {p: (env[n] if n else np.zeros_like(row(params[p]))).reshape(params[p].shape)
            for p, n in so.results.items()}


def gradient(d, X, Y, params) -> dict[str, np.ndarray]:
    env = _derivation_env(d, params, X, Y)
    for eq in [*d.forward, *d.backward]:
        env[eq.target.name] = eq.rhs.numeric(env)
    return {p: np.asarray(g.numeric(env)).reshape(params[p].shape)
            for p, g in d.gradients.items()}


def central(d, X, Y, params, V, t: float = 1e-5) -> dict[str, np.ndarray]:
    plus = gradient(d, X, Y, {k: v + t * V[k] for k, v in params.items()})
    minus = gradient(d, X, Y, {k: v - t * V[k] for k, v in params.items()})
    return {k: (plus[k] - minus[k]) / (2 * t) for k in params}


def rel(a: dict, b: dict) -> float:
    scale = max(max(np.max(np.abs(v)) for v in a.values()),
                max(np.max(np.abs(v)) for v in b.values()), 1e-12)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a) / scale


# --------------------------------------------------------------------------
# H V against central differences of the gradient: every activation × every loss
# --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(LOSSES))
def test_hvp_every_activation_against_differences(loss):
    for act in ACTIVATIONS:
        for hidden, out in ((act, LOSSES[loss]), ("tanh", act)):
            if loss in ("cross_entropy", "binary_cross_entropy") and out != LOSSES[loss]:
                continue  # their targets need probabilities: softmax / sigmoid outputs
            if out == "gelu_tanh" and out != hidden:
                continue  # as an output its fusion attempt costs seconds; hidden, it is here
            d = derive(tiny(hidden, loss, out, l1=0.01 if loss == "mae" else 0.0, l2=0.1))
            X, Y, params, V = instance(d, seed=len(act))
            err = rel(evaluate(hvp(d), X, Y, params, V), central(d, X, Y, params, V))
            assert err <= 1e-6, (hidden, out, loss, err)


def test_hvp_dag_with_add_dropout_and_concat_against_differences():
    spec = spec_from_dict({
        "network": {"name": "dag", "inputs": 3},
        "layer": [{"units": 4, "activation": "tanh"},
                  {"units": 4, "activation": "sigmoid"},
                  {"type": "add", "inputs": ["A1", "A2"]},
                  {"type": "dropout", "p": 0.25},
                  {"type": "concat", "inputs": ["A4", "A1"]},
                  {"units": 2, "activation": "softmax"}],
        "loss": {"kind": "cross_entropy"}}, source="dag.toml")
    d = derive(spec)
    X, Y, params, V = instance(d, seed=3)
    assert rel(evaluate(hvp(d), X, Y, params, V), central(d, X, Y, params, V)) <= 1e-6


# --------------------------------------------------------------------------
# H V against the scalar expansion (SymPy differentiates L twice at tiny sizes)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,loss,out", [("tanh", "mse", "sigmoid"),
                                             ("softplus", "cross_entropy", "softmax")])
def test_hvp_equals_the_scalar_expansion(hidden, loss, out):
    d = derive(tiny(hidden, loss, out, l2=0.1, layers=(1,)))
    proof = prove(hvp(d), width=2, batch=1)
    assert proof.ok and proof.entries > 0, proof.text()


def test_the_scalar_expansion_catches_a_wrong_adjoint():
    from dataclasses import replace

    from symgrad.ops import Scale

    so = hvp(derive(tiny("tanh", "mse", "identity", layers=(1,))))
    wrong = [replace(e, rhs=Scale(sp.Integer(2), e.rhs)) if e.target.name == "dZ1_dot" else e
             for e in so.adjoints]
    assert not prove(replace(so, adjoints=wrong), width=1).ok


# --------------------------------------------------------------------------
# G V: positive semi-definite, symmetric, H V where H = G
# --------------------------------------------------------------------------

CONVEX = [("relu", "mse", "identity"), ("tanh", "cross_entropy", "softmax"),
          ("elu", "binary_cross_entropy", "sigmoid"), ("sin", "huber", "identity"),
          ("gelu", "mse", "tanh")]
_DERIVED = {case: derive(tiny(*case, l2=0.05)) for case in CONVEX}
_GN = {case: gnvp(d) for case, d in _DERIVED.items()}


@settings(max_examples=15, deadline=None)
@given(case=st.sampled_from(CONVEX), seed=st.integers(0, 2**16))
def test_gnvp_is_positive_semidefinite_and_symmetric(case, seed):
    so = _GN[case]
    X, Y, params, V = instance(so.derivation, seed)
    U = instance(so.derivation, seed + 1)[3]
    GV, GU = evaluate(so, X, Y, params, V), evaluate(so, X, Y, params, U)
    vgv = sum(float(np.sum(V[k] * GV[k])) for k in V)
    assert vgv >= -1e-12
    ugv, vgu = (sum(float(np.sum(a[k] * b[k])) for k in V) for a, b in ((U, GV), (V, GU)))
    assert abs(ugv - vgu) <= 1e-10 * max(1.0, abs(ugv))


@pytest.mark.parametrize("case", CONVEX)
def test_gnvp_is_the_hessian_where_the_loss_is_flat_in_the_output(case):
    """At Y = Ŷ (∂ℓ/∂Ŷ = 0, or ∂ℓ/∂Z_L = 0 after a fusion) the Hessian is G."""
    so = _GN[case]
    d = so.derivation
    X, _, params, V = instance(d, 7)
    env = _derivation_env(d, params, X, np.zeros((len(X), d.spec.outputs)))
    for eq in d.forward[:-1]:
        env[eq.target.name] = eq.rhs.numeric(env)
    Y = env["Yhat"]
    assert rel(evaluate(so, X, Y, params, V), central(d, X, Y, params, V)) <= 1e-6
    H = evaluate(hvp(d), X, *instance(d, 7)[1:3], V)
    G = evaluate(so, X, *instance(d, 7)[1:3], V)
    assert rel(H, G) > 1e-3  # elsewhere they differ: the test can tell them apart


def test_gnvp_equals_hvp_for_a_linear_network_with_mse():
    spec = spec_from_dict({"network": {"name": "linear", "inputs": 3},
                           "layer": [{"units": 2, "activation": "identity"}],
                           "loss": {"kind": "mse"}, "regularization": {"l2": 0.3}},
                          source="linear.toml")
    d = derive(spec)
    X, Y, params, V = instance(d, 11)
    H, G = evaluate(hvp(d), X, Y, params, V), evaluate(gnvp(d), X, Y, params, V)
    assert rel(H, G) <= 1e-14
    assert rel(H, central(d, X, Y, params, V)) <= 1e-6


# --------------------------------------------------------------------------
# Printed forms (golden) and refusals
# --------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["hvp", "gnvp"])
def test_digits_printed_exactly(flag, capsys):
    assert main(["derive", str(ROOT / "examples" / "digits.toml"), f"--{flag}"]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"digits_{flag}.txt").read_text(encoding="utf-8")


def test_hessian_of_each_loss_printed():
    lines = {case: _GN[case].hessian for case in CONVEX}
    assert lines[("tanh", "cross_entropy", "softmax")] == (
        "H_ℓ = (diag(ŷ) − ŷŷᵀ)/N per sample (softmax∘cross-entropy, in Z₂)")
    assert lines[("relu", "mse", "identity")] == "H_ℓ = I/N (identity∘mse, in Z₂)"
    assert lines[("elu", "binary_cross_entropy", "sigmoid")] == (
        "H_ℓ = diag(ŷ ⊙ (1 − ŷ))/N (sigmoid∘binary_cross_entropy, elementwise, in Z₂)")
    assert lines[("gelu", "mse", "tanh")] == "H_ℓ = I/N (the loss mse, in Ŷ)"
    assert gnvp(tiny("tanh", "huber", "identity")).hessian == (
        "H_ℓ = diag([|y − ŷ| ≤ 1])/N (identity∘huber, elementwise, in Z₂)")
    assert gnvp(tiny("tanh", "mae", "identity")).hessian == (
        "H_ℓ = 0 (ℓ″ = 0 almost everywhere: identity∘mae is piecewise linear, in Z₂)")
    assert gnvp(tiny("tanh", "(yhat - y)**4 / 4 + (yhat - y)**2", "tanh")).hessian == (
        "H_ℓ = diag(3·(y − ŷ)² + 2)/N (ℓ″ of the loss custom, elementwise, in Ŷ)")


def test_the_derivation_does_not_depend_on_the_widths():
    def printed(widths):
        layers = [{"units": n, "activation": "tanh"} for n in widths[1:-1]]
        spec = spec_from_dict({"network": {"name": "wide", "inputs": widths[0]},
                               "layer": [*layers, {"units": widths[-1], "activation": "softmax"}],
                               "loss": {"kind": "cross_entropy"}}, source="wide.toml")
        d = derive(spec)
        return [so.text().split("\n", 1)[1] for so in (hvp(d), gnvp(d))]

    assert printed((3, 2, 2)) == printed((784, 256, 10))


# --------------------------------------------------------------------------
# The generated hvp and gnvp, and check --hvp
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_generated_products_match_the_derivation(dtype):
    d = derive(tiny("tanh", "cross_entropy", "softmax", l1=0.01, l2=0.1))
    module = load_module(generate_source(d, products=True))
    assert "hvp" in module.__all__ and "gnvp" in module.__all__
    X, Y, params, V = instance(d, 5)
    for fn, so in ((module.hvp, hvp(d)), (module.gnvp, gnvp(d))):
        got = fn({k: v.astype(dtype) for k, v in params.items()}, X, Y, V)
        assert set(got) == set(params)
        assert all(got[k].dtype == dtype and got[k].shape == params[k].shape for k in got)
        ref = evaluate(so, X, Y, params, V)
        assert rel({k: got[k].astype(np.float64) for k in got}, ref) <= (
            1e-12 if dtype == np.float64 else 1e-5)


def test_modules_without_products_are_unchanged():
    source = generate_source(ROOT / "examples" / "digits.toml")
    assert source == (ROOT / "generated" / "digits_mlp.py").read_text(encoding="utf-8")
    assert "def hvp" not in source


def test_check_hvp_passes_and_catches_a_wrong_product(tmp_path):
    report = check_products(ROOT / "examples" / "regression.toml")
    assert report.ok and len(report.rows) == 8, report.text()
    source = generate_source(ROOT / "examples" / "regression.toml", products=True)
    bad = source.replace("dZ1_dot = (", "dZ1_dot = 2 * (", 1)
    assert bad != source
    path = tmp_path / "regression_mlp.py"
    path.write_text(bad, encoding="utf-8")
    broken = check_products(path)
    assert not broken.ok
    assert [r[1] for r in broken.rows if not r[4]] == ["W1", "b1"]


def test_hessian_line_in_latex():
    lines = {case: next(line for line in _GN[case].latex().splitlines() if "H_\\ell\\) =" in line)
             for case in (("tanh", "cross_entropy", "softmax"), ("relu", "mse", "identity"))}
    assert lines[("tanh", "cross_entropy", "softmax")] == (
        r"\noindent \(H_\ell\) = \(\bigl(\operatorname{diag}(\hat{y}) - \hat{y}\hat{y}^\top\bigr)/N\)"
        r" per sample (softmax\(\circ\)cross-entropy, in \(Z_{2}\))")
    assert lines[("relu", "mse", "identity")] == (
        r"\noindent \(H_\ell\) = \(I/N\) (identity\(\circ\)mse, in \(Z_{2}\))")
    latex = gnvp(tiny("tanh", "(yhat - y)**4 / 4 + (yhat - y)**2", "tanh")).latex()
    custom = next(line for line in latex.splitlines() if "H_\\ell\\) =" in line)
    assert custom == (r"\noindent \(H_\ell\) = \(\operatorname{diag}(3 (y - \hat{y})^{2} + 2)/N\) "
                      r"(\(\ell''\) of the loss custom, elementwise, in \(\hat{Y}\))")


def test_batchnorm_variance_tangent_in_textbook_form():
    text = hvp(derive(str(ROOT / "examples" / "digits_bn_dropout.toml"))).text()
    assert "  σ̇₂² = (1/N) 𝟏ᵀ(2 (A₁ − 𝟏μ₂) ⊙ (Ȧ₁ − 𝟏μ̇₂))\n" in text
