"""Issue 15's grid: every built-in activation × every built-in loss, the Hessian-vector
product against the scalar-expansion proof (SymPy's ∂²L/∂τ∂ε of L(θ₀ + εV + τ) on a 2-2-2
net, N = 2, every entry of H V), and the Gauss–Newton product positive semi-definite on
random directions (numerically, as the derivation's equations evaluate it).

The pairs are those of tests/test_second_network.py's central differences: each activation
as the hidden layer's under each loss's own output (identity, softmax for cross-entropy,
sigmoid for binary cross-entropy, tanh for the custom loss), and each as the output layer's
under a tanh hidden layer where the loss takes any output. The full proof grid is make test-slow's
(about 330 s of SymPy for mse, mae, huber, binary cross-entropy and the custom loss at N = 2;
cross-entropy's fifteen at N = 1, 685 s at N = 2, in tests/test_second_proofs_ce.py: a file
to itself, so that make test-slow's workers share the grid); a representative subset (a kink of the loss, of an
activation, the fusions, the custom loss, a Piecewise activation) runs in make test.
Kinks (|·| of mae and softsign, huber's and relu's Piecewise, the l1 penalty) are expanded
on the branch they take at the random point, exact near it: the products' almost-everywhere
second derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from test_second_network import ACTIVATIONS, LOSSES, evaluate, instance, tiny

from symgrad.derive import derive
from symgrad.second import gnvp, hvp, prove


def pairs(loss: str) -> list[tuple[str, str]]:
    """(hidden, output) activations for loss, as the central-difference grid takes them."""
    out = []
    for act in ACTIVATIONS:
        for hidden, last in ((act, LOSSES[loss]), ("tanh", act)):
            if loss in ("cross_entropy", "binary_cross_entropy") and last != LOSSES[loss]:
                continue  # their targets need probabilities: softmax / sigmoid outputs
            if (hidden, last) not in out:
                out.append((hidden, last))
    return out


def proved(hidden: str, loss: str, out: str, l1: float = 0.0, seed: int = 0,
           batch: int = 2) -> None:
    d = derive(tiny(hidden, loss, out, l1=l1, l2=0.1, layers=(2,)))
    proof = prove(hvp(d), seed=seed, width=2, batch=batch)
    assert proof.ok and proof.entries == 12, (hidden, loss, out, proof.text())


FAST = [("relu", "mse", "identity"), ("softsign", "huber", "identity"),
        ("tanh", "mae", "softmax"), ("softplus", "cross_entropy", "softmax"),
        ("elu", "binary_cross_entropy", "sigmoid"),
        ("tanh", "(yhat - y)**4 / 4 + (yhat - y)**2", "tanh")]


@pytest.mark.parametrize("hidden,loss,out", FAST)
def test_hvp_equals_the_scalar_expansion_on_a_sample_of_pairs(hidden, loss, out):
    # with l1 at seed 0 a weight of the point is 0, l1's kink (a Tie): seed 1
    proved(hidden, loss, out, *((0.01, 1) if loss == "mae" else ()))


@pytest.mark.slow
@pytest.mark.parametrize("loss", [loss for loss in LOSSES if loss != "cross_entropy"])
def test_hvp_equals_the_scalar_expansion_for_every_activation(loss):
    for hidden, out in pairs(loss):
        proved(hidden, loss, out)


def test_the_grid_covers_every_activation_and_loss():
    from symgrad.activations import ACTIVATIONS as BUILT_IN
    from symgrad.losses import LOSSES as BUILT_IN_LOSSES

    assert set(ACTIVATIONS) == set(BUILT_IN)
    assert set(LOSSES) - {"(yhat - y)**4 / 4 + (yhat - y)**2"} == set(BUILT_IN_LOSSES)
    assert sum(len(pairs(loss)) for loss in LOSSES) == 4 * 29 + 2 * 15


@pytest.mark.parametrize("loss", list(LOSSES))
def test_gnvp_is_positive_semidefinite_for_every_activation(loss):
    """⟨V, G V⟩ ≥ λ₂‖V_W‖² on random directions and points, for every pair (mae: H_ℓ = 0)."""
    for hidden, out in pairs(loss):
        so = gnvp(derive(tiny(hidden, loss, out, l2=0.05)))
        for seed in range(2):
            X, Y, params, V = instance(so.derivation, seed)
            GV = evaluate(so, X, Y, params, V)
            vgv = sum(float(np.sum(V[k] * GV[k])) for k in V)
            penalty = sum(float(np.sum(v * v)) for k, v in V.items() if k.startswith("W"))
            # Jᵀ H_ℓ J ⪰ 0, plus the l2 penalty's λ₂ I on the weights
            assert vgv >= 0.05 * penalty * (1 - 1e-9), (hidden, loss, out, seed, vgv)
