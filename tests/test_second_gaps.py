"""Second order of networks, the gaps of issue 15 closed: batchnorm, layernorm and dropout
in --hvp/--gnvp and in the generated hvp/gnvp (training mode: batch statistics, the masks
of loss_and_grad for the same seed), derive --gnvp --prove, generate --hvp offering the
second-order optimizers, verify's second-order questions.

Evidence: H V against central differences of the gradient (float64), the scalar expansion
differentiated by SymPy, G V positive semi-definite, exact printed lines and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_second_network import central, evaluate, instance, rel

from symgrad.codegen import generate_source, load_module
from symgrad.derive import derive
from symgrad.second import gnvp, hvp
from symgrad.spec import spec_from_dict

ROOT = Path(__file__).parent.parent


def normalized(kind: str, dropout: bool = False, loss: str = "cross_entropy"):
    """3 → 4 tanh → {kind} softplus [→ dropout 0.3] → 2 softmax (or identity for mse)."""
    layers = [{"units": 4, "activation": "tanh"}, {"type": kind, "activation": "softplus"}]
    if dropout:
        layers.append({"type": "dropout", "p": 0.3})
    out = "softmax" if loss == "cross_entropy" else "identity"
    return spec_from_dict({"network": {"name": "normed", "inputs": 3},
                           "layer": [*layers, {"units": 2, "activation": out}],
                           "loss": {"kind": loss}, "regularization": {"l2": 0.1}},
                          source="normed.toml")


# --------------------------------------------------------------------------
# 1. batchnorm and layernorm: the tangents of X̂, μ, σ² and of 𝟏(σ² + ε)^(−½)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_hvp_of_normalized_nets_against_differences(kind, loss):
    d = derive(normalized(kind, dropout=True, loss=loss))
    for seed in (3, 4):
        X, Y, params, V = instance(d, seed=seed)
        assert rel(evaluate(hvp(d), X, Y, params, V), central(d, X, Y, params, V)) <= 1e-6


@pytest.mark.parametrize("kind", ["batchnorm", "layernorm"])
def test_gnvp_of_normalized_nets_is_positive_semidefinite(kind):
    d = derive(normalized(kind))
    so = gnvp(d)
    for seed in range(4):
        X, Y, params, V = instance(d, seed=seed)
        GV = evaluate(so, X, Y, params, V)
        assert sum(float(np.sum(V[k] * GV[k])) for k in V) > 0


def test_standardize_tangent_printed():
    text = hvp(derive(normalized("batchnorm"))).text()
    dot = "\u0307"  # the combining dot of Ȧ, X̂̇, μ̇, σ̇
    assert (f"  X̂{dot}₂ = (A{dot}₁ − 𝟏μ{dot}₂) ⊙ 𝟏(σ₂² + ε)^(−½) − (X̂₂ ⊙ 𝟏σ{dot}₂² ⊙ "
            f"𝟏(σ₂² + ε)^(−1))/2\n") in text
    assert f"𝟏(σ₂² + ε)^(−3/2) ⊙ 𝟏σ{dot}₂²" in text  # R{δ₁}: the tangent of the rule's factor


def test_generated_products_of_batchnorm_and_dropout_in_training_mode():
    """hvp/gnvp(seed=s) are the curvature of loss_and_grad(seed=s): its masks, its batch
    statistics; another seed, another mask, another product."""
    module = load_module(generate_source(ROOT / "examples" / "digits_bn_dropout.toml",
                                         products=True))
    rng = np.random.default_rng(0)
    params = module.init_params(seed=1)
    X, Y = rng.standard_normal((7, 64)), np.eye(10)[rng.integers(0, 10, 7)]
    V = {k: rng.standard_normal(s) for k, s in module.PARAM_SHAPES.items()}
    t = 1e-5

    def moved(c):
        return {k: v + c * V[k] if k in V else v for k, v in params.items()}

    products = {}
    for seed in (0, 3):
        H = module.hvp(params, X, Y, V, seed=seed)
        plus = module.loss_and_grad(moved(t), X, Y, seed=seed)[1]
        minus = module.loss_and_grad(moved(-t), X, Y, seed=seed)[1]
        assert rel(H, {k: (plus[k] - minus[k]) / (2 * t) for k in H}) <= 1e-6
        G = module.gnvp(params, X, Y, V, seed=seed)
        assert sum(float(np.sum(V[k] * G[k])) for k in V) > 0
        products[seed] = H
    assert rel(products[0], products[3]) > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        module.hvp(params, X[:1], Y[:1], V)
